"""CIFAR ResNets (3x3 stem, no max-pool, width multiplier) and the torchvision family: built by
name, units in forward order with their batch norms, and a torchvision ResNet-50 at 224x224
through extract, the model folder, patch and the engine."""

from __future__ import annotations

import pytest
import torch
import torchvision

import rws_hub
from rws_hub.archs import create_model, list_models, model_from_config
from rws_hub.core.layers import shallow_units, unit_params
from rws_hub.inference.engine import Engine
from rws_hub.io.folder import ModelFolder, save_model_folder


@pytest.mark.parametrize(
    ("name", "units", "params"),
    [
        ("resnet20_cifar", 21, 0.27e6),
        ("resnet18_cifar", 20, 11.2e6),
        ("resnet50_cifar", 53, 23.5e6),
    ],
)
def test_cifar_resnets(name: str, units: int, params: float) -> None:
    assert name in list_models()
    m = create_model(name, num_classes=10)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - params) / params < 0.05
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    us = shallow_units(m, None)
    assert len(us) == units and all(u.norm for u in us)  # every conv feeds a batch norm
    assert us[0].conv == "conv1" and us[0].norm == "bn1"
    half = create_model(name, width=0.5)
    assert half.conv1.out_channels == m.conv1.out_channels // 2


def test_resnet18_cifar_shortcut_is_a_unit_where_forward_calls_it() -> None:
    us = [u.conv for u in shallow_units(create_model("resnet18_cifar"), 8)]
    assert us[5:8] == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0"]


def test_torchvision_family_keeps_torchvision_names() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m = create_model("torchvision.resnet18", num_classes=10, mean=mean, std=std)
    ref = torchvision.models.resnet18(weights=None, num_classes=10)
    assert list(m.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 64, 64)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    m.eval(), ref.eval()
    torch.testing.assert_close(m(x), ref(normed))
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("torchvision.no_such_model")
    with pytest.raises(ValueError, match="width"):
        create_model("torchvision.resnet18", width=0.5)


def test_torchvision_resnet50_at_224_through_the_folder(tmp_path) -> None:
    torch.manual_seed(0)
    config = {
        "architecture": "torchvision.resnet50",
        "classes": [f"c{i}" for i in range(5)],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "input_size": [3, 224, 224],
    }
    pre = model_from_config(config).eval()
    with torch.no_grad():
        for mod in pre.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 2.0)
    moved = []
    for s in (0.002, 0.004):
        m = model_from_config(config).eval()
        m.load_state_dict(
            {k: v + s * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in pre.state_dict().items()}
        )  # fmt: skip
        moved.append(m)
    clean, robust = moved
    sig = rws_hub.extract(
        pre, clean, robust, name="fog", layers=5, architecture="torchvision.resnet50"
    )
    assert sorted(sig.tensors) == sorted(unit_params(clean, 5))
    root = save_model_folder(
        tmp_path / "r50", model=clean, config=config, signatures=[sig], pretrained=pre
    )
    folder = ModelFolder.load(root)
    x = torch.rand(2, 3, 224, 224)
    before = {k: v.clone() for k, v in folder.model.state_dict().items()}
    with rws_hub.patch(folder.model, {"fog": 1.0}):
        want = folder.model(x.contiguous(memory_format=torch.channels_last))
    assert all(torch.equal(v, before[k]) for k, v in folder.model.state_dict().items())
    eng = Engine.from_folder(folder, device="cpu")
    assert eng.input_size == (224, 224)
    assert torch.equal(eng.predict(x, {"fog": 1.0}), want)
