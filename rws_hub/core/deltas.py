"""Deltas and the one kernel that adds them to a weight.

A *delta* is what a signature adds to one tensor. It may be held dense (fp32), as quantized
codes, or (next) as low-rank factors; every kind answers the same two questions:

* :meth:`Delta.materialize` -- the delta as a dense tensor shaped like the weight (what
  :func:`patched_value` adds), and
* :meth:`Delta.branch` -- the delta's contribution to a layer's output for activations ``x``,
  ``layer(x; W + Δ) - layer(x; W)`` without the bias, for engines where running a thin branch is
  cheaper than building a patched weight (low-rank factors); dense kinds compute it from the
  materialized weight.

:func:`patched_value` computes ``base + Σ α·delta`` for one tensor. ``rws_hub.patch`` and the
serving engine both call it, so a patched model and the engine give bitwise-equal weights (both
keep bases and deltas in the standard contiguous layout; see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from rws_hub.core.lowrank import LowRank
from rws_hub.core.quantization import QuantizedTensor, dequantize_codes

__all__ = [
    "Delta",
    "DenseDelta",
    "QuantizedDelta",
    "LowRankDelta",
    "patched_value",
    "layer_output",
    "VARIANCE_FLOOR",
    "value_floor",
]


@runtime_checkable
class Delta(Protocol):
    """What every delta kind provides (see the module docstring)."""

    @property
    def shape(self) -> torch.Size: ...

    def numel(self) -> int: ...

    def nbytes(self) -> int: ...

    def tensors(self) -> tuple[torch.Tensor, ...]: ...

    def materialize(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor: ...

    def branch(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor: ...


def layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s linear operator applied to ``x`` with ``weight`` and no bias (Conv2d, Linear)."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ValueError("branches support zero-padded convolutions only")
        return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    raise TypeError(f"no branch for a {type(layer).__name__}; Conv2d and Linear have one")


class DenseDelta:
    """A delta held as a float tensor."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    def numel(self) -> int:
        return self.tensor.numel()

    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors this delta holds (for memory accounting)."""
        return (self.tensor,)

    def materialize(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        return self.tensor.to(device=device, dtype=dtype)

    def branch(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        return layer_output(layer, x, self.materialize(x.dtype, x.device))

    def __repr__(self) -> str:
        return f"DenseDelta({tuple(self.shape)}, {self.tensor.dtype})"


class QuantizedDelta:
    """A delta held as integer codes plus a scale and offset per group; dequantized on use by
    :func:`~rws_hub.core.quantization.dequantize_codes` (the same float operations as
    :meth:`QuantizedTensor.dequantize`, so the values are bitwise those of the signature's
    ``tensors``). int4 codes are kept unpacked, one per byte, so a build does no unpacking."""

    __slots__ = ("codes", "scale", "offset", "bits", "scheme", "granularity")

    def __init__(self, q: QuantizedTensor, device: torch.device | str | None = None) -> None:
        self.codes = q.int_codes().to(device).contiguous()
        self.scale = q.scale.to(device=device, dtype=torch.float32)
        self.offset = q.offset.to(device=device, dtype=torch.float32)
        self.bits = q.bits
        self.scheme = q.scheme
        self.granularity = q.granularity

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def numel(self) -> int:
        return self.codes.numel()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.offset))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors this delta holds (for memory accounting)."""
        return (self.codes, self.scale, self.offset)

    def materialize(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        values = dequantize_codes(self.codes, self.scale, self.offset, self.bits, self.scheme)
        return values.to(device=device, dtype=dtype)

    def branch(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        return layer_output(layer, x, self.materialize(x.dtype, x.device))

    def quantized(self) -> QuantizedTensor:
        """The :class:`QuantizedTensor` (on the CPU, int4 packed again) these codes came from."""
        return QuantizedTensor.from_int_codes(
            self.codes.cpu(),
            self.scale.cpu().reshape(-1).clone(),
            self.offset.cpu().reshape(-1).clone(),
            self.bits,
            self.scheme,
            self.granularity,
        )

    def __repr__(self) -> str:
        return f"QuantizedDelta({tuple(self.shape)}, int{self.bits} {self.scheme})"


class LowRankDelta:
    """A delta held as factors ``U`` (out, r) and ``V`` (r, in·kh·kw): materialized as
    ``U·V``, or applied as a thin branch -- ``conv(x, V)`` with r output channels, then a 1×1
    conv with ``U`` -- so an engine can run the base layer once for the whole batch.

    With ``codes=True`` quantized factors stay resident as their integer codes (dequantized by
    the one dequantizer on each use, a few KB per layer); otherwise they are held in fp32."""

    __slots__ = ("_u", "_v", "_shape")

    def __init__(
        self, factors: LowRank, device: torch.device | str | None = None, *, codes: bool = False
    ) -> None:
        if codes and factors.is_quantized:
            self._u: torch.Tensor | QuantizedDelta = QuantizedDelta(factors.u, device)  # type: ignore[arg-type]
            self._v: torch.Tensor | QuantizedDelta = QuantizedDelta(factors.v, device)  # type: ignore[arg-type]
        else:
            u, v = factors.factors()
            self._u = u.to(device).contiguous()
            self._v = v.to(device).contiguous()
        self._shape = torch.Size(factors.shape)

    @property
    def u(self) -> torch.Tensor:
        """``U`` as fp32."""
        return self._u.materialize() if isinstance(self._u, QuantizedDelta) else self._u

    @property
    def v(self) -> torch.Tensor:
        """``V`` as fp32."""
        return self._v.materialize() if isinstance(self._v, QuantizedDelta) else self._v

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def rank(self) -> int:
        return int(self._u.shape[1])

    def numel(self) -> int:
        return self._u.numel() + self._v.numel()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        for f in (self._u, self._v):
            out.extend(f.tensors() if isinstance(f, QuantizedDelta) else (f,))
        return tuple(out)

    def materialize(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        return (self.u @ self.v).reshape(self._shape).to(device=device, dtype=dtype)

    def branch(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        u, v = self.u.to(x.dtype), self.v.to(x.dtype)
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                return layer_output(layer, x, self.materialize(x.dtype, x.device))
            inner = v.reshape(self.rank, *self._shape[1:])
            mid = layer_output(layer, x, inner)  # (N, r, H', W'): the layer's geometry
            if mid.is_contiguous(memory_format=torch.channels_last) and not mid.is_contiguous():
                # channels-last: U as one matmul over (N, H', W', r), the result channels-last
                return (mid.permute(0, 2, 3, 1) @ u.t()).permute(0, 3, 1, 2)
            return F.conv2d(mid, u.reshape(self._shape[0], self.rank, 1, 1))
        if isinstance(layer, nn.Linear):
            return F.linear(F.linear(x, v), u)
        raise TypeError(f"no branch for a {type(layer).__name__}; Conv2d and Linear have one")

    def __repr__(self) -> str:
        return f"LowRankDelta({tuple(self.shape)}, rank {self.rank})"


VARIANCE_FLOOR = 0.2
"""A patched batch-norm variance stays at or above this share of the backbone's, per channel.

Every robust model of the zoo's entries keeps at least 0.36 of its clean model's variance in
every covered channel (38 robust models, two data sets), so at α = 1 an honest statistic never
meets the floor; it catches extrapolations -- a projected delta that overshoots, α > 1, several
signatures composed -- which would otherwise drive a variance to about 0 and the channel's
normalised output to hundreds of times its scale."""


def value_floor(name: str, base: torch.Tensor) -> torch.Tensor | None:
    """The smallest values a patched tensor may take, by its state-dict name and backbone value
    ``base``: :data:`VARIANCE_FLOOR` × ``base`` for a batch norm's ``running_var``, else None."""
    return base.detach() * VARIANCE_FLOOR if name.endswith("running_var") else None


def patched_value(
    base: torch.Tensor,
    terms: Iterable[tuple[Delta, float]],
    floor: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """``base + Σ α·delta`` as a new tensor: the one kernel behind patching and serving.

    Accumulates in float32 (float64 for float64 bases): the first term fused with the base
    (``base + α·d``), the others added in place, then raised to ``floor`` where below it (a
    number, or a tensor of ``base``'s shape; see :func:`value_floor`) and cast to the base's
    dtype. With no terms, a copy of ``base``.
    """
    acc = torch.float64 if base.dtype == torch.float64 else torch.float32
    out: torch.Tensor | None = None
    for delta, alpha in terms:
        d = delta.materialize(acc, base.device)
        if out is None:
            out = torch.add(base.detach().to(acc), d, alpha=alpha)
        else:
            out.add_(d, alpha=alpha)
    if out is None:
        return base.detach().clone()
    if isinstance(floor, torch.Tensor):
        out = torch.maximum(out, floor.to(device=out.device, dtype=out.dtype))
    elif floor is not None:
        out.clamp_(min=floor)
    return out if out.dtype == base.dtype else out.to(base.dtype)
