"""Low-rank factors of a delta: ``Δ ≈ U·V`` with U (out, r) and V (r, in·kh·kw).

A conv delta (out, in, kh, kw) is viewed as a matrix (out, in·kh·kw) and truncated by SVD to
rank r, chosen per tensor by a fixed ``rank`` or by the retained ``energy`` (the share of the
squared singular values kept). U carries the singular values. Either factor may be stored as
quantized codes (:class:`~rws_hub.core.quantization.QuantizedTensor`).

Sums stay low-rank by concatenating factors: ``a·U₁V₁ + b·U₂V₂ = [a·U₁, b·U₂]·[V₁; V₂]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rws_hub.core.quantization import QuantizedTensor, quantize_tensor

__all__ = ["LowRank", "factorize", "rank_for_energy"]

Factor = torch.Tensor | QuantizedTensor


def _float(f: Factor) -> torch.Tensor:
    return f.dequantize() if isinstance(f, QuantizedTensor) else f.float()


@dataclass(frozen=True)
class LowRank:
    """``U·V`` reshaped to ``shape``; U is (shape[0], rank), V is (rank, prod(shape[1:]))."""

    u: Factor
    v: Factor
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        us, vs = tuple(self.u.shape), tuple(self.v.shape)
        rows, cols = self.shape[0], math.prod(self.shape[1:])
        if len(us) != 2 or len(vs) != 2 or us[0] != rows or vs[1] != cols or us[1] != vs[0]:
            raise ValueError(
                f"low-rank factors of shapes {list(us)} and {list(vs)} do not make a "
                f"{list(self.shape)} tensor"
            )

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])

    @property
    def is_quantized(self) -> bool:
        return isinstance(self.u, QuantizedTensor)

    @property
    def nbytes(self) -> int:
        """Bytes stored: both factors (codes plus scales and offsets when quantized)."""
        return sum(
            f.nbytes if isinstance(f, QuantizedTensor) else f.numel() * 4 for f in (self.u, self.v)
        )

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """U and V as float32 tensors."""
        return _float(self.u), _float(self.v)

    def materialize(self) -> torch.Tensor:
        """The dense float32 delta ``U·V`` in its tensor shape."""
        u, v = self.factors()
        return (u @ v).reshape(self.shape)

    def quantize(self, bits: int, scheme: str = "linear", granularity: str = "channel") -> LowRank:
        """Both factors as codes (V per row = per rank component, U per output channel)."""
        u, v = self.factors()
        return LowRank(
            quantize_tensor(u, bits=bits, scheme=scheme, granularity=granularity),
            quantize_tensor(v, bits=bits, scheme=scheme, granularity=granularity),
            self.shape,
        )

    def scaled(self, factor: float) -> LowRank:
        """``factor · U·V`` (float factors)."""
        u, v = self.factors()
        return LowRank(u * factor, v, self.shape)

    def plus(self, other: LowRank, sign: float = 1.0) -> LowRank:
        """``self + sign·other`` as concatenated float factors (rank adds up)."""
        if tuple(other.shape) != tuple(self.shape):
            raise ValueError(f"shapes differ: {list(self.shape)} vs {list(other.shape)}")
        (u1, v1), (u2, v2) = self.factors(), other.factors()
        return LowRank(torch.cat([u1, sign * u2], 1), torch.cat([v1, v2], 0), self.shape)


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of the squared total."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    power = singular.double().pow(2)
    total = float(power.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(power, 0) / total
    return int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1


def factorize(t: torch.Tensor, rank: int | None = None, energy: float | None = None) -> LowRank:
    """Truncated SVD of ``t`` (2-D or more) at ``rank``, or at the rank that keeps ``energy``.

    The rank is capped at the matrix's smaller side. Computed in float64, stored float32.
    """
    if t.dim() < 2:
        raise ValueError("only tensors with 2 or more dims have low-rank factors")
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank= or energy=")
    shape = tuple(t.shape)
    m = t.detach().to("cpu", torch.float64).reshape(shape[0], -1)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    r = rank if rank is not None else rank_for_energy(s, float(energy))  # type: ignore[arg-type]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"rank must be a positive int, got {r!r}")
    r = min(r, s.numel())
    return LowRank((u[:, :r] * s[:r]).float(), vh[:r].float().contiguous(), shape)
