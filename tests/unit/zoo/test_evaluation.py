"""Evaluation: accuracy, reports, and patched evaluation that leaves the model unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rws_hub.datasets.arrays import load_images
from rws_hub.zoo.evaluation import OWN, EvalReport, accuracy, evaluate


class ConstantClass(nn.Module):
    """Predicts one class whatever the image (a bias-only linear layer)."""

    def __init__(self, cls: int) -> None:
        super().__init__()
        self.head = nn.Linear(1, 10)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.bias[cls] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((1, 2, 3))[:, None])


def test_accuracy_counts_exactly(tiny_cifar: Path) -> None:
    data = load_images(tiny_cifar, "test")
    expected = 100.0 * float((data.y == 3).sum()) / len(data)
    assert accuracy(ConstantClass(3), data, batch_size=50) == pytest.approx(expected)


def test_report_round_trip_and_markdown() -> None:
    rep = EvalReport(
        clean={"none": 90.0, "own": 88.5},
        corrupted={
            "fog": {5: {"none": 40.0, "own": 70.0}},
            "snow": {5: {"none": 50.0, "own": 60.0}},
        },
        images=100,
    )
    again = EvalReport.from_json(rep.to_json())
    assert again.corrupted == rep.corrupted and again.clean == rep.clean
    assert rep.mean_ra("own") == pytest.approx(65.0)
    md = rep.to_markdown()
    assert "| fog | 5 | 40.00 | 70.00 |" in md and "| clean | – | 90.00 | 88.50 |" in md


def test_patched_evaluation_restores_the_model(tiny_cifar: Path) -> None:
    sig_mod = pytest.importorskip("rws_hub.core.signature")
    pytest.importorskip("rws_hub.datasets.corruptions")
    from rws_hub.archs import create_model

    torch.manual_seed(0)
    model = create_model("vgg16_cifar", width=0.125).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = "features.0.weight"
    sig = sig_mod.Signature(name="gaussian_noise", tensors={w: torch.randn_like(before[w])})
    data = load_images(tiny_cifar, "test")
    rep = evaluate(
        model,
        data,
        corruptions=["gaussian_noise"],
        mixes={"none": None, OWN: OWN},
        signatures={"gaussian_noise": sig},
        progress=False,
    )
    assert set(rep.corrupted["gaussian_noise"][5]) == {"none", OWN}
    assert "gaussian_noise" in rep.meta["own_clean"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the corrupted test set is the same on every call (seeded)
    again = evaluate(model, data, corruptions=["gaussian_noise"], clean=False, progress=False)
    assert (
        again.corrupted["gaussian_noise"][5]["none"] == rep.corrupted["gaussian_noise"][5]["none"]
    )
