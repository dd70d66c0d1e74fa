"""Quantization of signature tensors: int8 and packed int4, linear or log, per tensor or per
output channel.

* **linear** (the published scheme): uniform levels over ``[min, max]`` of each group (the
  whole tensor, or each output channel). ``x ≈ offset + (code + 2^(b-1)) · scale`` with
  ``offset = min`` and ``scale = (max - min) / (2^b - 1)``; codes are signed ``b``-bit
  integers. The absolute error is at most ``scale / 2``.
* **log**: sign plus a uniformly quantized ``log2 |x|``. Code 0 is an exact zero; code
  ``±m`` (``m = 1 .. 2^(b-1) - 1``) is ``±2^(offset + (m - 1) · scale)`` with ``offset`` the
  group's smallest ``log2 |x|`` over non-zeros. The relative error is at most
  ``2^(scale/2) - 1``.

Per-channel ("channel") granularity groups along dim 0 (output channels); tensors with fewer
than 2 dims (biases) always use one group. int4 codes are packed two per byte, the element
with the even flat index in the low nibble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "QuantizedTensor",
    "quantize_tensor",
    "pack_int4",
    "unpack_int4",
    "SCHEMES",
    "GRANULARITIES",
    "BITS",
]

SCHEMES = ("linear", "log")
GRANULARITIES = ("tensor", "channel")
BITS = (8, 4)


def check_options(bits: int, scheme: str, granularity: str) -> None:
    """Raise ``ValueError`` for an unsupported quantization setting."""
    if bits not in BITS or isinstance(bits, bool):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
        )


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack signed 4-bit codes (int values in [-8, 7]) two per byte into a 1-D uint8 tensor."""
    flat = (codes.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``numel`` int8 codes in [-8, 7] (flat)."""
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    return (torch.stack([low, high], dim=1).reshape(-1)[:numel] - 8).to(torch.int8)


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantized tensor: stored codes plus fp32 ``scale`` and ``offset`` per group.

    ``codes`` is int8 with the original shape (8 bits) or packed uint8, 1-D (4 bits).
    ``scale``/``offset`` have shape ``(groups,)``: 1 for "tensor", ``shape[0]`` for "channel".
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    shape: tuple[int, ...]
    bits: int
    scheme: str
    granularity: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes plus fp32 scale and offset."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.offset))

    @property
    def storage(self) -> str:
        """``"int8"`` or ``"int4"``."""
        return f"int{self.bits}"

    def int_codes(self) -> torch.Tensor:
        """Signed integer codes as int8 with the original shape (unpacked for int4)."""
        if self.bits == 4:
            return unpack_int4(self.codes, self.numel).reshape(self.shape)
        return self.codes.reshape(self.shape)

    def dequantize(self) -> torch.Tensor:
        """The fp32 values the codes stand for."""
        codes = self.int_codes().to(torch.float32)
        groups = self.scale.numel()
        c = codes.reshape(groups, -1) if self.numel else codes.reshape(groups, 0)
        scale = self.scale.to(torch.float32).reshape(-1, 1)
        offset = self.offset.to(torch.float32).reshape(-1, 1)
        if self.scheme == "linear":
            out = offset + (c + 2 ** (self.bits - 1)) * scale
        else:
            mag = torch.exp2(offset + (c.abs() - 1).clamp(min=0) * scale)
            out = torch.where(c == 0, torch.zeros_like(mag), torch.sign(c) * mag)
        return out.reshape(self.shape)


def quantize_tensor(
    x: torch.Tensor, bits: int = 8, scheme: str = "linear", granularity: str = "tensor"
) -> QuantizedTensor:
    """Quantize a float tensor (see the module docstring for the schemes)."""
    check_options(bits, scheme, granularity)
    if not x.is_floating_point():
        raise TypeError(f"can only quantize float tensors, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize a tensor holding NaN or inf")
    shape = tuple(x.shape)
    if granularity == "channel" and x.dim() < 2:
        granularity = "tensor"
    groups = shape[0] if granularity == "channel" else 1
    xd = x.detach().to("cpu", torch.float64).reshape(groups, -1)
    if xd.shape[1] == 0:  # empty tensor: nothing to quantize
        scale = torch.ones(groups, dtype=torch.float32)
        offset = torch.zeros(groups, dtype=torch.float32)
        codes = torch.zeros(shape, dtype=torch.int8)
        if bits == 4:
            codes = pack_int4(codes)
        return QuantizedTensor(codes, scale, offset, shape, bits, scheme, granularity)

    half = 2 ** (bits - 1)
    if scheme == "linear":
        lo = xd.min(dim=1).values
        hi = xd.max(dim=1).values
        # Round scale/offset to fp32 first, so codes are chosen for the values stored.
        scale32 = ((hi - lo) / (2**bits - 1)).to(torch.float32)
        offset32 = lo.to(torch.float32)
        scale = scale32.to(torch.float64).reshape(-1, 1)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        u = torch.round((xd - offset32.to(torch.float64).reshape(-1, 1)) / safe)
        codes = (u.clamp(0, 2**bits - 1) - half).to(torch.int8)
    else:
        levels = half - 1  # magnitudes 1..levels, code 0 = exact zero
        nonzero = xd != 0
        logs = torch.log2(torch.where(nonzero, xd.abs(), torch.ones_like(xd)))
        inf = torch.tensor(math.inf, dtype=torch.float64)
        lmin = torch.where(nonzero, logs, inf).min(dim=1).values
        lmax = torch.where(nonzero, logs, -inf).max(dim=1).values
        empty = ~torch.isfinite(lmin)  # groups of zeros only
        lmin = torch.where(empty, torch.zeros_like(lmin), lmin)
        lmax = torch.where(empty, torch.zeros_like(lmax), lmax)
        scale32 = ((lmax - lmin) / max(levels - 1, 1)).to(torch.float32)
        offset32 = lmin.to(torch.float32)
        scale = scale32.to(torch.float64).reshape(-1, 1)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        m = (
            torch.round((logs - offset32.to(torch.float64).reshape(-1, 1)) / safe).clamp(
                0, levels - 1
            )
            + 1
        )
        codes = torch.where(nonzero, torch.sign(xd) * m, torch.zeros_like(m)).to(torch.int8)
    codes = codes.reshape(shape)
    if bits == 4:
        codes = pack_int4(codes)
    return QuantizedTensor(codes, scale32, offset32, shape, bits, scheme, granularity)
