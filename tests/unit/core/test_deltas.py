"""The delta protocol and the one kernel ``base + Σ α·delta``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rws_hub.core.deltas import Delta, DenseDelta, QuantizedDelta, layer_output, patched_value
from rws_hub.core.quantization import quantize_tensor


def test_kernel_arithmetic_and_order() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 8, 3, 3, generator=g)
    d1, d2 = torch.randn(2, 16, 8, 3, 3, generator=g)
    out = patched_value(base, [(DenseDelta(d1), 0.5), (DenseDelta(d2), -2.0)])
    want = torch.add(base, d1, alpha=0.5)
    want.add_(d2, alpha=-2.0)
    assert torch.equal(out, want)
    torch.testing.assert_close(out, base + 0.5 * d1 - 2.0 * d2)
    assert torch.equal(patched_value(base, []), base)
    assert patched_value(base, []).data_ptr() != base.data_ptr()


def test_kernel_keeps_dtype_and_accumulates_in_fp32() -> None:
    base = torch.zeros(4, dtype=torch.float16)
    d = DenseDelta(torch.full((4,), 1e-4))
    out = patched_value(base, [(d, 1.0)] * 10)
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), torch.full((4,), 1e-3), rtol=1e-2)
    b64 = torch.ones(3, dtype=torch.float64)
    assert patched_value(b64, [(DenseDelta(torch.ones(3)), 1.0)]).dtype == torch.float64


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scheme", ["linear", "log"])
def test_quantized_delta_materializes_the_signature_values(bits: int, scheme: str) -> None:
    x = torch.randn(6, 4, 3, 3)
    q = quantize_tensor(x, bits=bits, scheme=scheme, granularity="channel")
    d = QuantizedDelta(q)
    assert isinstance(d, Delta) and isinstance(DenseDelta(x), Delta)
    assert torch.equal(d.materialize(), q.dequantize())
    assert d.shape == x.shape and d.numel() == x.numel()
    back = d.quantized()
    assert torch.equal(back.codes, q.codes) and back.shape == q.shape
    base = torch.randn(6, 4, 3, 3)
    assert torch.equal(
        patched_value(base, [(d, 0.7)]), patched_value(base, [(DenseDelta(q.dequantize()), 0.7)])
    )


def test_branch_is_the_output_change() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 8, 8)
    delta = torch.randn_like(conv.weight) * 0.1
    patched = nn.functional.conv2d(x, conv.weight + delta, conv.bias, 2, 1)
    for d in (DenseDelta(delta), QuantizedDelta(quantize_tensor(delta, 8))):
        dv = d.materialize()
        want = nn.functional.conv2d(x, conv.weight + dv, conv.bias, 2, 1) - conv(x)
        torch.testing.assert_close(d.branch(x, conv), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        conv(x) + DenseDelta(delta).branch(x, conv), patched, atol=1e-5, rtol=1e-4
    )
    lin = nn.Linear(4, 3)
    w = torch.randn(3, 4)
    torch.testing.assert_close(layer_output(lin, torch.ones(2, 4), w), torch.ones(2, 4) @ w.T)
    with pytest.raises(TypeError, match="Conv2d and Linear"):
        layer_output(nn.BatchNorm2d(3), x, w)


def test_a_patched_variance_keeps_a_share_of_the_backbone_one() -> None:
    """A batch norm's running variance patched below VARIANCE_FLOOR × its backbone value is
    raised to it, the same in ``rws_hub.patch`` and the engine; other tensors are not floored,
    and taking the patch off restores the variance exactly."""
    import rws_hub
    from rws_hub.archs import create_model
    from rws_hub.core.deltas import VARIANCE_FLOOR, value_floor
    from rws_hub.core.signature import Signature
    from rws_hub.inference.engine import Engine

    base = torch.tensor([1.0, 2.0, 0.5])
    floor = value_floor("features.1.running_var", base)
    assert torch.equal(floor, base * VARIANCE_FLOOR)
    assert value_floor("features.0.weight", base) is None
    drop = DenseDelta(torch.tensor([-0.5, -3.0, 0.0]))
    out = patched_value(base, [(drop, 1.0)], floor)
    assert torch.equal(out, torch.tensor([0.5, 2.0 * VARIANCE_FLOOR, 0.5]))

    torch.manual_seed(0)
    model = create_model("vgg16_bn_cifar", width=0.125).eval()
    var = model.state_dict()["features.1.running_var"].clone()
    sig = Signature("shrink", {"features.1.running_var": -2 * var}, layers=1)
    x = torch.rand(4, 3, 32, 32)
    engine = Engine(model, [sig], device="cpu")
    with rws_hub.patch(model, {sig: 1.0}), torch.no_grad():
        assert torch.equal(model.features[1].running_var, var * VARIANCE_FLOOR)
        want = model(x).softmax(1)
        assert torch.isfinite(want).all()
    assert torch.equal(model.state_dict()["features.1.running_var"], var)
    got = engine.classify(x, [{"shrink": 1.0}] * 4, top_k=3)
    for i, answer in enumerate(got):
        for p in answer["predictions"]:
            j = engine.classes.index(p["class"])
            assert p["probability"] == pytest.approx(float(want[i, j]), abs=1e-5)
