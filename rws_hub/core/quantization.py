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
from typing import Any

import torch

__all__ = [
    "QuantizedTensor",
    "QuantScheme",
    "quantize_tensor",
    "dequantize_codes",
    "register_scheme",
    "get_scheme",
    "list_schemes",
    "parse_storage",
    "pack_int4",
    "unpack_int4",
    "GRANULARITIES",
    "BITS",
]

GRANULARITIES = ("tensor", "channel")
BITS = (8, 4)


class QuantScheme:
    """A quantization scheme: how one group of values becomes signed ``bits``-bit codes plus an
    fp32 ``scale`` and ``offset`` per group, and back.

    Subclass it, set ``name`` and implement :meth:`encode` and :meth:`decode`, then
    :func:`register_scheme` an instance: quantizing, saving and loading signatures, patching
    and the engine's resident codes all find it by name.
    """

    name: str = ""

    def encode(self, x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x``: float64 (groups, n), finite. Returns int8 codes (groups, n) in
        ``[-2^(bits-1), 2^(bits-1) - 1]`` and float32 scale and offset of shape (groups,)."""
        raise NotImplementedError

    def decode(
        self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int
    ) -> torch.Tensor:
        """``codes``: float32 (groups, n); ``scale``/``offset``: float32 (groups, 1). Returns the
        float32 values (groups, n)."""
        raise NotImplementedError


class LinearScheme(QuantScheme):
    """Uniform levels over each group's ``[min, max]`` (the published "linear" scheme)."""

    name = "linear"

    def encode(self, x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        half = 2 ** (bits - 1)
        lo = x.min(dim=1).values
        hi = x.max(dim=1).values
        # Round scale/offset to fp32 first, so codes are chosen for the values stored.
        scale32 = ((hi - lo) / (2**bits - 1)).to(torch.float32)
        offset32 = lo.to(torch.float32)
        scale = scale32.to(torch.float64).reshape(-1, 1)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        u = torch.round((x - offset32.to(torch.float64).reshape(-1, 1)) / safe)
        return (u.clamp(0, 2**bits - 1) - half).to(torch.int8), scale32, offset32

    def decode(
        self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int
    ) -> torch.Tensor:
        return offset + (codes + 2 ** (bits - 1)) * scale


class LogScheme(QuantScheme):
    """Sign plus a uniformly quantized ``log2 |x|``; code 0 is an exact zero."""

    name = "log"

    def encode(self, x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = 2 ** (bits - 1) - 1  # magnitudes 1..levels, code 0 = exact zero
        nonzero = x != 0
        logs = torch.log2(torch.where(nonzero, x.abs(), torch.ones_like(x)))
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
        m = torch.round((logs - offset32.to(torch.float64).reshape(-1, 1)) / safe)
        m = m.clamp(0, levels - 1) + 1
        codes = torch.where(nonzero, torch.sign(x) * m, torch.zeros_like(m)).to(torch.int8)
        return codes, scale32, offset32

    def decode(
        self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int
    ) -> torch.Tensor:
        mag = torch.exp2(offset + (codes.abs() - 1).clamp(min=0) * scale)
        return torch.where(codes == 0, torch.zeros_like(mag), torch.sign(codes) * mag)


_SCHEMES: dict[str, QuantScheme] = {}


def register_scheme(scheme: QuantScheme) -> QuantScheme:
    """Make ``scheme`` available by its ``name``; a name registered twice raises ``ValueError``."""
    name = getattr(scheme, "name", "")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a quantization scheme needs an identifier as name, got {name!r}")
    if name in _SCHEMES:
        raise ValueError(f"quantization scheme {name!r} is already registered")
    _SCHEMES[name] = scheme
    return scheme


def get_scheme(name: str) -> QuantScheme:
    """The registered scheme called ``name`` (``ValueError`` naming the known ones if none)."""
    scheme = _SCHEMES.get(name) if isinstance(name, str) else None
    if scheme is None:
        raise ValueError(f"scheme must be one of {', '.join(list_schemes())}, got {name!r}")
    return scheme


def list_schemes() -> list[str]:
    """Names of the registered quantization schemes."""
    return list(_SCHEMES)


register_scheme(LinearScheme())
register_scheme(LogScheme())


def check_options(bits: int, scheme: str, granularity: str) -> None:
    """Raise ``ValueError`` for an unsupported quantization setting."""
    if bits not in BITS or isinstance(bits, bool):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    get_scheme(scheme)
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}"
        )


def parse_storage(text: str) -> dict[str, Any] | None:
    """A storage name as the zoo and the CLI write it, as quantization options.

    ``"fp32"`` is None (no quantization); ``"int8"`` / ``"int4"`` are the linear scheme,
    ``"<scheme><bits>"`` any registered scheme (``"log8"``), all per output channel.
    ``"rank<r>"`` and ``"rank<r>-<storage>"`` are low-rank factors (``{"rank": r}``, plus the
    bits and scheme of the codes the factors are stored as; see ``Signature.low_rank``).
    """
    if text.startswith("rank"):
        head, _, codes = text.partition("-")
        digits = head.removeprefix("rank")
        if not digits.isdigit() or int(digits) < 1:
            raise ValueError(f"unknown storage {text!r}: a rank is rank<r>, e.g. rank8-int4")
        options = parse_storage(codes) if codes else None
        if codes and options is None:
            raise ValueError(f"unknown storage {text!r}: factors are stored fp32 without a suffix")
        low = {"rank": int(digits)}
        if options:
            low |= {"bits": options["bits"], "scheme": options["scheme"]}
        return low
    if text in ("fp32", "float32"):
        return None
    head, digits = text.rstrip("0123456789"), text[len(text.rstrip("0123456789")) :]
    scheme = "linear" if head == "int" else head
    if not digits or scheme not in _SCHEMES or int(digits) not in BITS:
        known = ["fp32", "int8", "int4"] + [
            f"{s}{b}" for s in _SCHEMES if s != "linear" for b in BITS
        ]
        raise ValueError(f"unknown storage {text!r}; one of {', '.join(known)}")
    return {"bits": int(digits), "scheme": scheme, "granularity": "channel"}


def describe_storage(text: str) -> str:
    """A storage name (see :func:`parse_storage`) in words: ``"int8"``, ``"low-rank (rank 8,
    int8 factors)"``, ``"low-rank (rank 4, fp32 factors)"``."""
    options = parse_storage(text)
    if options is None or "rank" not in options:
        return text
    codes = text.partition("-")[2] or "fp32"
    return f"low-rank (rank {options['rank']}, {codes} factors)"


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

    @classmethod
    def from_int_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        offset: torch.Tensor,
        bits: int,
        scheme: str,
        granularity: str,
    ) -> QuantizedTensor:
        """Build from signed int8 codes in the original shape (packed here for 4 bits)."""
        shape = tuple(codes.shape)
        stored = pack_int4(codes) if bits == 4 else codes.to(torch.int8)
        return cls(stored, scale, offset, shape, bits, scheme, granularity)

    def int_codes(self) -> torch.Tensor:
        """Signed integer codes as int8 with the original shape (unpacked for int4)."""
        if self.bits == 4:
            return unpack_int4(self.codes, self.numel).reshape(self.shape)
        return self.codes.reshape(self.shape)

    def dequantize(self) -> torch.Tensor:
        """The fp32 values the codes stand for."""
        return dequantize_codes(self.int_codes(), self.scale, self.offset, self.bits, self.scheme)


def dequantize_codes(
    codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int, scheme: str
) -> torch.Tensor:
    """The one dequantizer: signed integer ``codes`` (any shape, standard layout; groups along
    dim 0) with ``scale``/``offset`` per group, as float32 values of the codes' shape. Used by
    :meth:`QuantizedTensor.dequantize` and by the engine's resident codes alike."""
    shape = codes.shape
    groups = scale.numel()
    c = codes.to(torch.float32)
    c = c.reshape(groups, -1) if c.numel() else c.reshape(groups, 0)
    out = get_scheme(scheme).decode(
        c,
        scale.to(device=c.device, dtype=torch.float32).reshape(-1, 1),
        offset.to(device=c.device, dtype=torch.float32).reshape(-1, 1),
        bits,
    )
    return out.reshape(shape)


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

    codes, scale32, offset32 = get_scheme(scheme).encode(xd, bits)
    codes = codes.reshape(shape)
    if bits == 4:
        codes = pack_int4(codes)
    return QuantizedTensor(codes, scale32, offset32, shape, bits, scheme, granularity)
