"""Training a detector (rws_hub.detect.training): it learns, and a longer run resumes from the
cached samples and the last checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from rws_hub.detect.model import detector_classes, load_detector
from rws_hub.detect.training import DetectorTrainConfig, train_detector

CLASSES = detector_classes()


def test_training_learns_and_resumes(backbone, tiny_cifar: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    cfg = DetectorTrainConfig(
        data=str(tiny_cifar), images=400, heldout=200, epochs=2, hidden=32, chunk=200, seed=0
    )
    det, config = train_detector(backbone, tmp_path / "d", cfg, log=logs.append)
    assert (tmp_path / "d" / "detector.safetensors").is_file()
    assert any("train: samples 400/400" in line for line in logs)
    # running longer resumes: cached samples, last epoch's checkpoint
    logs.clear()
    cfg.epochs = 30
    det, config = train_detector(backbone, tmp_path / "d", cfg, log=logs.append)
    assert not any("samples" in line for line in logs)
    assert "resumed at epoch 2" in logs
    acc = config["accuracy"]
    assert set(acc) - {"heldout_samples", "severities", "mean"} <= set(CLASSES)
    assert acc["mean"] > 1.5 / 20  # learns something beyond chance on 200 held-out samples
    loaded, _ = load_detector(tmp_path / "d")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.probabilities(x), det.probabilities(x))
