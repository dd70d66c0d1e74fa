"""The architecture registry: duplicates refused, a toy architecture registered from a test
module works with create_model, model_from_config and the model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rws_hub.archs import (
    Normalize,
    choose_units,
    create_model,
    list_models,
    model_from_config,
    recommended_units,
    register_model,
    unregister_model,
)
from rws_hub.archs.vgg import VGGCifar
from rws_hub.core.extraction import extract
from rws_hub.core.patching import patch
from rws_hub.datasets import get_dataset
from rws_hub.io.folder import ModelFolder, save_model_folder

TOY = "toy_convnet_for_tests"


class ToyNet(nn.Module):
    def __init__(self, num_classes: int, width: float, mean, std) -> None:
        super().__init__()
        c = max(1, round(8 * width))
        self.normalize = Normalize(mean, std)
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.normalize(x)).mean((2, 3)))


def toy(num_classes: int = 10, width: float = 1.0, mean=(0.0,) * 3, std=(1.0,) * 3) -> nn.Module:
    return ToyNet(num_classes, width, mean, std)


@pytest.fixture
def toy_arch():
    register_model(TOY)(toy)
    yield TOY
    unregister_model(TOY)


def test_builtins_registered() -> None:
    assert {"vgg16_cifar", "vgg16_bn_cifar"} <= set(list_models())


def test_duplicate_name_refused(toy_arch: str) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model(toy_arch)(toy)
    with pytest.raises(ValueError, match="already registered"):
        register_model("vgg16_cifar")(toy)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="vgg16_cifar"):
        create_model("no_such_net")


def test_toy_architecture(toy_arch: str, tmp_path: Path) -> None:
    spec = get_dataset("cifar10")
    m = create_model(toy_arch, num_classes=4, width=0.5, mean=spec.mean, std=spec.std)
    assert isinstance(m, ToyNet) and m.head.out_features == 4
    config = {"architecture": toy_arch, "classes": list("abcd"), "width": 0.5}
    config |= {"mean": list(spec.mean), "std": list(spec.std)}
    built = model_from_config(config)
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in m.state_dict().items()
    }
    assert torch.equal(built.normalize.mean, m.normalize.mean)
    # extract, patch and the model folder work with it
    torch.manual_seed(0)
    pre = create_model(toy_arch, num_classes=4)
    clean = create_model(toy_arch, num_classes=4)
    robust = create_model(toy_arch, num_classes=4)
    sig = extract(pre, clean, robust, name="fog", layers=1, architecture=toy_arch)
    x = torch.rand(2, 3, 8, 8)
    with patch(clean, {sig: 1.0}):
        patched = clean(x)
    root = save_model_folder(
        tmp_path / "toy",
        model=clean,
        config={"architecture": toy_arch, "classes": list("abcd")},
        signatures=[sig],
        pretrained=pre,
    )
    folder = ModelFolder.load(root)
    assert folder.config["mean"] == [0.0, 0.0, 0.0]  # the model's own normalisation
    with patch(folder.model, {"fog": 1.0}):
        assert torch.equal(folder.model(x), patched)


def test_vgg_normalisation_comes_from_the_caller() -> None:
    plain = create_model("vgg16_cifar", width=0.125)
    assert torch.equal(plain.normalize.mean.flatten(), torch.zeros(3))
    spec = get_dataset("cifar10")
    m = create_model("vgg16_cifar", width=0.125, mean=spec.mean, std=spec.std)
    assert torch.equal(m.normalize.std.flatten(), torch.tensor(spec.std))
    assert isinstance(m, VGGCifar)


def test_state_dict_layout_unchanged() -> None:
    keys = list(create_model("vgg16_cifar", width=0.125).state_dict())
    assert keys[:4] == ["normalize.mean", "normalize.std", "features.0.weight", "features.0.bias"]
    assert keys[-2:] == ["classifier.weight", "classifier.bias"]
    assert len(keys) == 2 + 26 + 2
    bn = list(create_model("vgg16_bn_cifar", width=0.125).state_dict())
    assert "features.1.running_mean" in bn


def test_recommended_units_follow_the_measured_k_sweeps() -> None:
    """Each registered recommended K is what the committed K sweep of that architecture gives
    (docs/results/**/depth.json), so the registry cannot drift from the measurement."""
    root = Path(__file__).resolve().parents[3] / "docs" / "results"
    sweeps = sorted(root.rglob("depth.json"))
    assert sweeps, "no K sweep is committed"
    seen = set()
    for path in sweeps:
        r = json.loads(path.read_text())
        arch = r["setup"]["architecture"]
        assert recommended_units(arch) == choose_units(r["ks"], r["mean_gain"]), path
        seen.add(arch)
    assert {"vgg16_cifar", "vgg16_bn_cifar"} <= seen
    assert recommended_units("torchvision.resnet18") is None
    assert recommended_units("no-such-arch") is None


def test_choose_units_rule() -> None:
    assert choose_units([1, 2, 3, 4], [1.0, 9.6, 10.5, 10.0]) == 2
    assert choose_units([1, 2, 3, 4], [1.0, 9.4, 10.5, 10.0]) == 3
    assert choose_units([1, 2, 3], [5.0, 5.0, 5.0]) == 1
    assert choose_units([1, 2, 3], [0.0, 2.0, 9.0], tolerance=0.5) == 3
    with pytest.raises(ValueError, match="one mean gain per K"):
        choose_units([1, 2], [1.0])


def test_bad_recommended_units_refused() -> None:
    with pytest.raises(ValueError, match="recommended_units"):
        register_model("rws-test-bad-k", recommended_units=0)(lambda **kw: nn.Identity())
    assert "rws-test-bad-k" not in list_models()
