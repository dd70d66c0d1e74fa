"""Bring your own model: torchvision CNNs (batch norm, shortcuts, depthwise convs, layer norm)
with random weights work with extract, patch (exact restore) and the engine (== patch)."""

from __future__ import annotations

import pytest
import torch
import torchvision

import rws_hub
from rws_hub.core.layers import shallow_units, unit_params
from rws_hub.inference.engine import Engine


def random_signature(model: torch.nn.Module, name: str, k: int, seed: int) -> rws_hub.Signature:
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    tensors = {}
    for n in unit_params(model, k):
        scale = 0.05 * float(sd[n].float().std()) if sd[n].numel() > 1 else 0.01
        tensors[n] = torch.randn(sd[n].shape, generator=g) * (scale or 0.01)
    return rws_hub.Signature(name, tensors, layers=k)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    with torch.no_grad():  # trained-looking statistics, so batch norm deltas matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize(
    ("arch", "k", "size", "has_bn"),
    [
        ("resnet18", 8, 64, True),  # shortcut conv is unit 8
        ("mobilenet_v3_small", 6, 64, True),  # depthwise convs, squeeze-excitation convs
        ("convnext_tiny", 3, 64, False),  # layer norm: its convs are units, norms are not
    ],
)
def test_torchvision_models(arch: str, k: int, size: int, has_bn: bool) -> None:
    model = build(arch)
    units = shallow_units(model, k)
    assert any(u.norm for u in units) == has_bn
    a, b = random_signature(model, "fog", k, 1), random_signature(model, "snow", k - 1, 2)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    x = torch.rand(4, 3, size, size)
    with rws_hub.patch(model, {a: 0.8, b: 0.5}):
        want = model(x.contiguous(memory_format=torch.channels_last))
        per_row = [model(x[i : i + 1]) for i in range(1)]
    for n, t in model.state_dict().items():
        assert torch.equal(t, before[n]), n  # exact restore, buffers included
    eng = Engine(model, {"fog": a, "snow": b}, device="cpu", input_size=(size, size))
    got = eng.predict(x, {"fog": 0.8, "snow": 0.5})
    assert torch.equal(got, want)  # one kernel, one layout: bitwise
    mixed = eng.predict(x, [{"fog": 0.8, "snow": 0.5}, None, {"fog": 1.0}, None])
    torch.testing.assert_close(mixed[:1], per_row[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed[1], model(x[1:2])[0], atol=1e-4, rtol=1e-4)
    with rws_hub.patch(model, {a: 1.0}):
        torch.testing.assert_close(mixed[2], model(x[2:3])[0], atol=1e-4, rtol=1e-4)
