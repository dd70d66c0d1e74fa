"""Quantization: error bounds, packed int4, sizes (int8 ~1/4, int4 ~1/8 of fp32)."""

from __future__ import annotations

import pytest
import torch

from rws_hub import Signature, quantize_tensor
from rws_hub.core.quantization import pack_int4, unpack_int4


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.01


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_linear_error_at_most_half_a_step(bits: int, granularity: str) -> None:
    x = randn(32, 16, 3, 3)
    x[3] *= 50  # one channel with a much larger range
    q = quantize_tensor(x, bits=bits, scheme="linear", granularity=granularity)
    groups = 32 if granularity == "channel" else 1
    assert q.scale.shape == (groups,) and q.granularity == granularity
    err = (q.dequantize() - x).abs().reshape(groups, -1).amax(dim=1)
    bound = q.scale / 2
    assert torch.all(err <= bound * (1 + 1e-4) + 1e-9), (err / bound).max()
    codes = q.int_codes()
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    # the extremes of every group are hit exactly (up to fp32 rounding)
    assert codes.reshape(groups, -1).min(dim=1).values.eq(-(2 ** (bits - 1))).all()


def test_channel_beats_tensor_when_ranges_differ() -> None:
    x = randn(16, 8, 3, 3)
    x[0] *= 100
    e_t = (quantize_tensor(x, 8, "linear", "tensor").dequantize() - x).abs().max()
    e_c = (quantize_tensor(x, 8, "linear", "channel").dequantize() - x)[1:].abs().max()
    assert e_c < e_t / 10


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_log_relative_error_and_exact_zeros(bits: int, granularity: str) -> None:
    x = randn(8, 4, 3, 3, seed=1)
    x[0, 0, 0, 0] = 0.0
    x[2, 1] = 0.0
    q = quantize_tensor(x, bits=bits, scheme="log", granularity=granularity)
    y = q.dequantize()
    assert torch.equal(y == 0, x == 0)  # zeros stay exactly zero, nothing else becomes zero
    assert torch.equal(torch.sign(y), torch.sign(x))
    groups = 8 if granularity == "channel" else 1
    scale = q.scale.reshape(groups, 1, 1, 1) if groups > 1 else q.scale
    bound = torch.exp2(scale / 2) - 1
    nz = x != 0
    rel = torch.where(nz, (y - x).abs() / x.abs().clamp_min(1e-30), torch.zeros_like(x))
    assert torch.all(rel <= bound * (1 + 1e-3) + 1e-6)
    assert q.int_codes().abs().max() <= 2 ** (bits - 1) - 1


@pytest.mark.parametrize("scheme", ["linear", "log"])
def test_degenerate_tensors(scheme: str) -> None:
    for x in (torch.full((5,), 0.25), torch.zeros(3, 2), torch.zeros(0), torch.tensor(-1.5)):
        for bits in (8, 4):
            q = quantize_tensor(x, bits=bits, scheme=scheme, granularity="channel")
            assert q.dequantize().shape == x.shape
            torch.testing.assert_close(q.dequantize(), x, rtol=0, atol=0)


def test_pack_unpack_int4() -> None:
    codes = torch.arange(-8, 8, dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 8
    assert int(packed[0]) == (0 | (1 << 4))  # -8 -> 0 in the low nibble, -7 -> 1 high
    assert torch.equal(unpack_int4(packed, 16), codes)
    odd = torch.tensor([3, -2, 7], dtype=torch.int8)
    assert pack_int4(odd).numel() == 2
    assert torch.equal(unpack_int4(pack_int4(odd), 3), odd)


def test_refusals() -> None:
    x = randn(4, 4)
    with pytest.raises(ValueError, match="bits"):
        quantize_tensor(x, bits=2)
    with pytest.raises(ValueError, match="scheme"):
        quantize_tensor(x, scheme="cubic")
    with pytest.raises(ValueError, match="granularity"):
        quantize_tensor(x, granularity="row")
    with pytest.raises(ValueError, match="NaN"):
        quantize_tensor(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError):
        quantize_tensor(torch.arange(4))


def vgg_like_signature() -> Signature:
    """Shapes of VGG-16's first five conv layers (about 0.5 M values)."""
    shapes = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128)]
    tensors = {}
    for i, (o, c) in enumerate(shapes):
        tensors[f"features.{i}.weight"] = randn(o, c, 3, 3, seed=i)
        tensors[f"features.{i}.bias"] = randn(o, seed=100 + i)
    return Signature("fog", tensors)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_sizes(granularity: str) -> None:
    sig = vgg_like_signature()
    fp32 = sig.nbytes
    assert fp32 == 4 * sig.numel
    for bits, ratio in ((8, 1 / 4), (4, 1 / 8)):
        for scheme in ("linear", "log"):
            q = sig.quantize(bits=bits, scheme=scheme, granularity=granularity)
            assert q.quantization == {"bits": bits, "scheme": scheme, "granularity": granularity}
            assert ratio <= q.nbytes / fp32 <= ratio * 1.03, (bits, scheme, q.nbytes / fp32)


def test_signature_quantize_semantics() -> None:
    sig = vgg_like_signature()
    q = sig.quantize(bits=8, scheme="linear", granularity="channel")
    assert q.is_quantized and not sig.is_quantized
    assert q.names == sig.names and q.name == sig.name
    for n in sig.names:
        assert q.tensors[n].dtype == torch.float32
        assert torch.equal(q.tensors[n], q.codes[n].dequantize())
        assert (q.tensors[n] - sig.tensors[n]).abs().max() <= q.codes[n].scale.max() / 2 * 1.0001
    assert not (q + q).is_quantized and (q + q).quantization is None
    assert not (2 * q).is_quantized
    assert q.dequantize().nbytes == sig.nbytes
    assert "int8 linear/channel" in repr(q)
    assert q.to("cpu", torch.float16).nbytes == q.nbytes  # still stores the codes
    with pytest.raises(ValueError):
        sig.quantize(bits=16)
