"""Units (a conv and the batch norm it feeds) and signatures that carry batch norm."""

from __future__ import annotations

import pytest
import torch
import torchvision

import rws_hub
from rws_hub.archs import create_model
from rws_hub.core.layers import Unit, shallow_units, unit_params


def test_vgg_bn_units_pair_each_conv_with_its_norm() -> None:
    m = create_model("vgg16_bn_cifar", width=0.125)
    units = shallow_units(m, 3)
    assert units == [Unit("features.0", "features.1"), Unit("features.3", "features.4"),
                     Unit("features.7", "features.8")]  # fmt: skip
    assert shallow_units(m.state_dict(), 3) == units
    names = unit_params(m, 2)
    assert names == [
        "features.0.weight", "features.1.weight", "features.1.bias",
        "features.1.running_mean", "features.1.running_var",
        "features.3.weight", "features.4.weight", "features.4.bias",
        "features.4.running_mean", "features.4.running_var",
    ]  # fmt: skip
    assert unit_params(m, 2, bn="affine") == [n for n in names if "running" not in n]
    assert unit_params(m, 2, bn="none") == rws_hub.shallow_params(m, 2)
    with pytest.raises(ValueError, match="bn must be one of"):
        unit_params(m, 2, bn="all")


def test_vgg_without_bn_is_unchanged() -> None:
    m = create_model("vgg16_cifar", width=0.125)
    assert unit_params(m, 7) == rws_hub.shallow_params(m, 7)
    assert unit_params(m.state_dict(), 7) == rws_hub.shallow_params(m, 7)


def test_resnet18_units_include_the_shortcut() -> None:
    m = torchvision.models.resnet18(weights=None)
    units = shallow_units(m, 8)
    assert units[0] == Unit("conv1", "bn1")
    assert units[7] == Unit("layer2.0.downsample.0", "layer2.0.downsample.1")
    assert shallow_units(m.state_dict(), 8) == units


def test_extract_carries_bn_and_stats_treatments() -> None:
    torch.manual_seed(0)
    pre = create_model("vgg16_bn_cifar", width=0.125)
    sd_pre = pre.state_dict()
    g = torch.Generator().manual_seed(1)

    def moved(scale: float) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in sd_pre.items():
            if v.is_floating_point():
                noise = torch.randn(v.shape, generator=g) * scale
                out[k] = (v + noise.abs()) if k.endswith("running_var") else v + noise
            else:
                out[k] = v.clone()
        return out

    clean, robust = moved(0.01), moved(0.02)
    sig = rws_hub.extract(pre, clean, robust, name="fog", layers=2)
    assert "features.1.running_var" in sig.tensors and sig.provenance["bn"]["stats"] == "project"
    swap = rws_hub.extract(pre, clean, robust, name="fog", layers=2, stats="swap")
    v = swap.tensors["features.1.running_var"]
    assert torch.allclose(clean["features.1.running_var"] + v, robust["features.1.running_var"])
    conv_only = rws_hub.extract(pre, clean, robust, name="fog", layers=2, bn="none")
    assert sorted(conv_only.tensors) == ["features.0.weight", "features.3.weight"]
    # exact restore, buffers included; variance never below zero while patched
    model = create_model("vgg16_bn_cifar", width=0.125)
    model.load_state_dict(clean)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    with rws_hub.patch(model, {sig: -50.0}):
        assert (model.features[1].running_var >= 0).all()
    for k, t in model.state_dict().items():
        assert torch.equal(t, before[k]), k
