"""``Signature``: a named set of per-tensor weight deltas plus metadata, with task-vector
algebra (``a + b``, ``a - b``, ``-a``, ``0.5 * a``, ``sum([...])``)."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import torch

from rws_hub.core.deltas import Delta, DenseDelta, LowRankDelta, QuantizedDelta
from rws_hub.core.formats import read, write
from rws_hub.core.lowrank import LowRank, factorize
from rws_hub.core.quantization import QuantizedTensor, check_options, quantize_tensor
from rws_hub.errors import SignatureMismatchError

__all__ = ["Signature", "cosine", "format_bytes"]


def _check_alpha(value: Any, what: str = "alpha") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def format_bytes(n: int) -> str:
    """A byte count for people: ``"840 B"``, ``"439.0 KB"``, ``"14.7 MB"`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


class Signature:
    """A Robust Weight Signature: per-tensor deltas ``v`` keyed by state-dict name.

    ``tensors`` holds the deltas as floats (fp32 unless moved with :meth:`to`); a quantized
    signature (from :meth:`quantize` or :meth:`load` of a quantized file) also keeps its
    integer codes, so :meth:`save` stores int8 / packed int4 while ``tensors`` gives the
    dequantized values.

    Metadata: ``name`` (lower-case identifier such as ``"fog"``), ``kind`` (``"corruption"``),
    ``architecture`` and ``lineage`` (the fingerprint of the pretrained weights θ_pre it was
    extracted against; see :func:`rws_hub.fingerprint`), ``layers`` (K), ``default_alpha``,
    ``quantization`` (``{"bits", "scheme", "granularity"}`` or None) and ``provenance`` (a
    JSON-able dict).

    Algebra works like task vectors: ``a + b`` (union of tensor names), ``a - b``, ``-a``,
    ``0.5 * a``, ``a * 0.5``, ``a / 2``, ``sum([a, b])``. Operands must share lineage and
    architecture (when both know theirs); results are fp32, unquantized. Signatures hash by
    identity, so they can key a ``{signature: alpha}`` mix.
    """

    def __init__(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        *,
        kind: str = "corruption",
        architecture: str | None = None,
        lineage: str | None = None,
        layers: int | None = None,
        default_alpha: float = 1.0,
        quantization: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
        codes: Mapping[str, QuantizedTensor] | None = None,
        factors: Mapping[str, LowRank] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a signature needs a non-empty name, got {name!r}")
        if not isinstance(tensors, Mapping):
            raise TypeError(
                f"tensors must be a mapping name -> tensor, not {type(tensors).__name__}"
            )
        checked: dict[str, torch.Tensor] = {}
        for key, t in tensors.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"tensor names must be non-empty strings, got {key!r}")
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"tensor {key!r} must be a float tensor")
            checked[key] = t.detach()
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)):
            raise TypeError(f"layers must be an int or None, got {layers!r}")
        self.name = name
        self.tensors: dict[str, torch.Tensor] = checked
        self.kind = kind
        self.architecture = architecture
        self.lineage = lineage
        self.layers = layers
        self.default_alpha = _check_alpha(default_alpha, "default_alpha")
        self.quantization = dict(quantization) if quantization else None
        self.provenance: dict[str, Any] = dict(provenance or {})
        self._factors: dict[str, LowRank] | None = dict(factors) if factors else None
        dense = set(checked) - set(self._factors or {})
        if self._factors is not None:
            for key, f in self._factors.items():
                if key not in checked or tuple(f.shape) != tuple(checked[key].shape):
                    raise ValueError(f"factors for {key!r} do not match the signature's tensor")
        self._codes: dict[str, QuantizedTensor] | None = dict(codes) if codes else None
        if self._codes is not None and set(self._codes) != dense:
            raise ValueError(
                "codes must cover exactly the signature's tensors (those without low-rank factors)"
            )

    # -- introspection --------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Tensor names (state-dict keys) this signature patches."""
        return list(self.tensors)

    @property
    def shapes(self) -> dict[str, torch.Size]:
        """``{tensor name: shape}``."""
        return {n: t.shape for n, t in self.tensors.items()}

    @property
    def numel(self) -> int:
        """Total number of elements over all tensors."""
        return sum(t.numel() for t in self.tensors.values())

    @property
    def codes(self) -> dict[str, QuantizedTensor] | None:
        """The quantized codes per tensor, or None for an fp32 signature."""
        return None if self._codes is None else dict(self._codes)

    @property
    def is_quantized(self) -> bool:
        return self._codes is not None or any(
            f.is_quantized for f in (self._factors or {}).values()
        )

    @property
    def factors(self) -> dict[str, LowRank] | None:
        """Low-rank factors per tensor (see :meth:`low_rank`), or None."""
        return None if self._factors is None else dict(self._factors)

    @property
    def is_low_rank(self) -> bool:
        return self._factors is not None

    def deltas(self, resident: str = "float") -> dict[str, Delta]:
        """The tensors as deltas (:mod:`rws_hub.core.deltas`): dense floats (``"float"``), or
        as held in storage where that is smaller (``"codes"``: integer codes of quantized
        tensors; ``"factors"``: low-rank factors, codes included, as float factors)."""
        out: dict[str, Delta] = {}
        for n, t in self.tensors.items():
            f = (self._factors or {}).get(n)
            q = (self._codes or {}).get(n)
            if resident in ("factors", "codes") and f is not None:
                out[n] = LowRankDelta(f, t.device)
            elif resident in ("factors", "codes") and q is not None:
                out[n] = QuantizedDelta(q, t.device)
            else:
                out[n] = DenseDelta(t)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the stored payload: 4 per element for fp32; the codes (1 byte per element
        for int8, half a byte for int4) plus fp32 scales and offsets when quantized."""
        factors = self._factors or {}
        total = sum(f.nbytes for f in factors.values())
        for n, t in self.tensors.items():
            if n in factors:
                continue
            q = (self._codes or {}).get(n)
            total += q.nbytes if q is not None else 4 * t.numel()
        return total

    def norm(self) -> float:
        """Euclidean norm over all tensors (flattened together)."""
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in self.tensors.values()))

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __repr__(self) -> str:
        q = self.quantization
        storage = (
            "fp32" if not q else f"int{q.get('bits')} {q.get('scheme')}/{q.get('granularity')}"
        )
        if self._factors:
            ranks = sorted({f.rank for f in self._factors.values()})
            low = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
            storage = f"low-rank {low} ({len(self._factors)} tensors), {storage}"
        parts = [
            f"{self.name!r}",
            f"{len(self.tensors)} tensors",
            f"{self.numel:,} values",
            storage,
            format_bytes(self.nbytes),
        ]
        if self.architecture:
            parts.append(f"arch={self.architecture}")
        if self.lineage:
            parts.append(f"lineage={self.lineage}")
        return f"Signature({', '.join(parts)})"

    # -- copies ---------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "architecture": self.architecture,
            "lineage": self.lineage,
            "layers": self.layers,
            "default_alpha": self.default_alpha,
            "quantization": self.quantization,
            "provenance": self.provenance,
        }

    def replace(self, **changes: Any) -> Signature:
        """A copy with some fields replaced, e.g. ``sig.replace(name="fog_v2", default_alpha=0.8)``.
        Replacing ``tensors`` drops the quantized codes."""
        fields: dict[str, Any] = {"name": self.name, "tensors": self.tensors, **self._meta()}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"unknown Signature field(s): {', '.join(sorted(unknown))}")
        if "tensors" not in changes:
            fields["codes"] = self._codes
            fields["factors"] = self._factors
        elif "quantization" not in changes:
            fields["quantization"] = None
        fields.update(changes)
        return Signature(**fields)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Signature:
        """A copy with the float tensors moved to ``device`` (and cast to ``dtype`` if given).
        Quantized codes stay on the CPU, so :meth:`save` still writes them."""
        moved = {n: t.to(device=device, dtype=dtype) for n, t in self.tensors.items()}
        return Signature(self.name, moved, codes=self._codes, factors=self._factors, **self._meta())

    # -- quantization ---------------------------------------------------------------------
    def quantize(
        self, bits: int = 8, scheme: str = "linear", granularity: str = "tensor"
    ) -> Signature:
        """A quantized copy: ``bits`` 8 or 4, ``scheme`` "linear" (uniform over [min, max]) or
        "log" (sign + uniform log2 magnitude), ``granularity`` "tensor" or "channel" (per
        output channel). ``.tensors`` of the result are the dequantized fp32 values; ``.save``
        writes the codes. Quantizing a quantized signature starts from its dequantized values."""
        check_options(bits, scheme, granularity)
        codes = {
            n: quantize_tensor(t, bits=bits, scheme=scheme, granularity=granularity)
            for n, t in self.tensors.items()
        }
        deq = {n: q.dequantize().to(self.tensors[n].device) for n, q in codes.items()}
        meta = self._meta()
        meta["quantization"] = {"bits": bits, "scheme": scheme, "granularity": granularity}
        return Signature(self.name, deq, codes=codes, **meta)

    def low_rank(
        self,
        rank: int | None = None,
        energy: float | None = None,
        *,
        bits: int | None = None,
        scheme: str = "linear",
    ) -> Signature:
        """A low-rank copy: every tensor with 2 or more dims whose factors are smaller than the
        tensor becomes ``U·V`` truncated by SVD at ``rank`` or at the rank that keeps
        ``energy`` of its squared singular values (:func:`rws_hub.core.lowrank.factorize`);
        1-D tensors (biases, batch norm) stay as they are. With ``bits`` (8 or 4) the factors
        and the remaining tensors are stored as per-channel codes. ``.tensors`` of the result
        are the (dequantized) products; starts from this signature's values."""
        if bits is not None:
            check_options(bits, scheme, "channel")
        factors: dict[str, LowRank] = {}
        for n, t in self.tensors.items():
            if t.dim() < 2:
                continue
            f = factorize(t, rank=rank, energy=energy)
            if f.rank * (t.shape[0] + t[0].numel()) >= t.numel():
                continue  # no smaller than the tensor itself
            factors[n] = f.quantize(bits, scheme) if bits is not None else f
        tensors: dict[str, torch.Tensor] = {}
        codes: dict[str, QuantizedTensor] = {}
        for n, t in self.tensors.items():
            if n in factors:
                tensors[n] = factors[n].materialize().to(t.device)
            elif bits is not None:
                codes[n] = quantize_tensor(t, bits=bits, scheme=scheme, granularity="channel")
                tensors[n] = codes[n].dequantize().to(t.device)
            else:
                tensors[n] = t.float()
        meta = self._meta()
        meta["quantization"] = (
            {"bits": bits, "scheme": scheme, "granularity": "channel"} if bits else None
        )
        meta["provenance"] = {
            **self.provenance,
            "low_rank": {"rank": rank, "energy": energy, "bits": bits},
        }
        return Signature(self.name, tensors, codes=codes or None, factors=factors, **meta)

    def dequantize(self) -> Signature:
        """An fp32 copy without codes (``.save`` then stores fp32)."""
        meta = self._meta()
        meta["quantization"] = None
        return Signature(self.name, {n: t.float() for n, t in self.tensors.items()}, **meta)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the signature as one ``.safetensors`` file (see docs/format.md; the writer is
        :func:`rws_hub.io.files.save_signature`)."""
        write("signature", self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Signature:
        """Read a signature file written by :meth:`save`; checks it and dequantizes. Never
        unpickles: a pickle, truncated, tampered or foreign file raises ``ArtifactError``
        (the reader is :func:`rws_hub.io.files.load_signature`)."""
        return read("signature", path, device=device)

    # -- algebra --------------------------------------------------------------------------
    def _check_compatible(self, other: Signature) -> None:
        for field in ("lineage", "architecture"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine is not None and theirs is not None and mine != theirs:
                raise SignatureMismatchError(
                    f"cannot combine {self.name!r} and {other.name!r}: different {field} "
                    f"({mine} vs {theirs})"
                )

    def _combine(self, other: Signature, sign: float, op: str) -> Signature:
        self._check_compatible(other)
        out: dict[str, torch.Tensor] = {n: t.float().clone() for n, t in self.tensors.items()}
        for n, t in other.tensors.items():
            t = t.float()
            if n in out:
                if out[n].shape != t.shape:
                    raise SignatureMismatchError(
                        f"cannot combine {self.name!r} and {other.name!r}: tensor {n!r} has "
                        f"shape {tuple(out[n].shape)} vs {tuple(t.shape)}"
                    )
                out[n] = out[n] + sign * t.to(out[n].device)
            else:
                out[n] = sign * t
        layers = [x for x in (self.layers, other.layers) if x is not None]
        mine, theirs = self._factors or {}, other._factors or {}
        factors = {n: mine[n].plus(theirs[n], sign) for n in mine.keys() & theirs.keys()}
        for n in factors:  # keep U·V exact: the tensors are the factors' product
            out[n] = factors[n].materialize().to(out[n].device)
        return Signature(
            f"{self.name}{op}{other.name}",
            out,
            factors=factors or None,
            kind=self.kind if self.kind == other.kind else "composite",
            architecture=self.architecture or other.architecture,
            lineage=self.lineage or other.lineage,
            layers=max(layers) if layers else None,
            provenance={"op": op, "operands": [self.name, other.name]},
        )

    def _scaled(self, factor: Any, name: str) -> Signature:
        f = _check_alpha(factor, "scale factor")
        meta = self._meta()
        meta["quantization"] = None
        meta["provenance"] = {"op": "scale", "factor": f, "operands": [self.name]}
        tensors = {n: t.float() * f for n, t in self.tensors.items()}
        factors = {n: lr.scaled(f) for n, lr in (self._factors or {}).items()}
        for n, lr in factors.items():
            tensors[n] = lr.materialize().to(tensors[n].device)
        return Signature(name, tensors, factors=factors or None, **meta)

    def __add__(self, other: Any) -> Signature:
        if isinstance(other, Signature):
            return self._combine(other, 1.0, "+")
        if isinstance(other, numbers.Number) and not isinstance(other, bool) and other == 0:
            return self._scaled(1.0, self.name)  # a + 0 == a (for sum())
        return NotImplemented

    def __radd__(self, other: Any) -> Signature:
        return self.__add__(other)

    def __sub__(self, other: Any) -> Signature:
        if isinstance(other, Signature):
            return self._combine(other, -1.0, "-")
        if isinstance(other, numbers.Number) and not isinstance(other, bool) and other == 0:
            return self._scaled(1.0, self.name)
        return NotImplemented

    def __rsub__(self, other: Any) -> Signature:
        if isinstance(other, numbers.Number) and not isinstance(other, bool) and other == 0:
            return -self
        return NotImplemented

    def __neg__(self) -> Signature:
        return self._scaled(-1.0, f"-{self.name}")

    def __pos__(self) -> Signature:
        return self

    def __mul__(self, factor: Any) -> Signature:
        if isinstance(factor, Signature) or not isinstance(factor, numbers.Real):
            return NotImplemented
        return self._scaled(factor, f"{factor:g}*{self.name}")

    __rmul__ = __mul__

    def __truediv__(self, divisor: Any) -> Signature:
        if isinstance(divisor, Signature) or not isinstance(divisor, numbers.Real):
            return NotImplemented
        if divisor == 0:
            raise ZeroDivisionError("cannot divide a signature by zero")
        return self._scaled(1.0 / float(divisor), f"{self.name}/{divisor:g}")


def cosine(a: Signature, b: Signature) -> float:
    """Cosine similarity of two signatures, flattened over all their tensors (a tensor one of
    them lacks counts as zeros). Computed in float64; 0.0 when either signature is all zero.
    Different corruptions give clearly lower values than a signature with itself (1.0)."""
    dot = 0.0
    for n, t in a.tensors.items():
        u = b.tensors.get(n)
        if u is not None:
            if u.shape != t.shape:
                raise SignatureMismatchError(
                    f"tensor {n!r} has shape {tuple(t.shape)} in {a.name!r} but "
                    f"{tuple(u.shape)} in {b.name!r}"
                )
            dot += float((t.double() * u.to(t.device).double()).sum())
    na, nb = a.norm(), b.norm()
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / (na * nb)
