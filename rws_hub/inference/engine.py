"""The serving engine: one backbone and its signatures, every image with its own mix.

:class:`Engine` answers ``predict(images, mixes)`` where each image names the signatures (and
strengths) it wants. The shared weights are never written to, so one engine serves many threads
at once:

* the engine keeps its own copy of the model in which every Conv2d/Linear that some loaded
  signature patches becomes a *routing* layer (same parameters and names, a forward that knows
  about groups of rows); every other layer is unchanged;
* a ``predict`` call groups the images by mix (rows of a group made contiguous), fetches each
  group's patched weights (``base + sum(alpha * delta)`` by
  :func:`rws_hub.core.deltas.patched_value`, the kernel :func:`rws_hub.patch` uses) from an
  LRU cache bounded in bytes, and publishes that plan in a *thread-local* slot;
* a routing layer runs its conv once per group on that group's rows with the group's weights
  (clean rows use the base weights); the unpatched deep layers run once for the whole batch.

The patched weights equal those of a model patched in place with :func:`rws_hub.patch`
bitwise (same kernel, same layout, signatures in name order); the logits equal running each
image alone through such a model up to the batch composition's effect on the convolution
algorithms (float rounding). Signatures can be added and dropped while serving
(:meth:`Engine.add_signature`, :meth:`Engine.drop_signature`). This module imports no serving
framework.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rws_hub.core.deltas import (
    Delta,
    DenseDelta,
    LowRankDelta,
    QuantizedDelta,
    patched_value,
    value_floor,
)
from rws_hub.core.mix import DEFAULT_MAX_ALPHA, Mix
from rws_hub.core.signature import Signature
from rws_hub.detect import auto_patcher_from_folder
from rws_hub.errors import (
    InvalidMixError,
    RequestError,
    RWSError,
    SignatureMismatchError,
    shorten,
)
from rws_hub.io.folder import ModelFolder

__all__ = ["AUTO", "Detector", "Engine", "MixLike", "default_device"]

AUTO: Literal["auto"] = "auto"
"""The mix value that asks the corruption detector to choose the signatures."""

MixLike = Mix | Mapping[str, float] | Sequence[str] | str | None
"""What ``predict`` accepts per image: a Mix, a dict, a list of names, ``"a:1,b:0.5"``,
``None`` (clean) or ``"auto"``."""

Detector = Callable[[torch.Tensor], Sequence[MixLike]]
"""The hook for ``"auto"``: images (N, 3, H, W) in [0, 1] -> one mix per image."""


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------
# routing


@dataclass(frozen=True)
class _Plan:
    """How one forward pass routes its rows: contiguous group slices and their weights.

    ``weights[g][slot]`` is the tensors of routed layer ``slot`` in group ``g`` (in the order
    of its ``_rws_attrs``: weight and bias; for batch norm also running mean and variance), or
    ``None`` where the group uses the layer's base weights.
    """

    bounds: tuple[tuple[int, int], ...]
    weights: tuple[tuple[tuple[torch.Tensor | None, ...] | None, ...], ...]
    # slot -> [(low-rank delta or None, bias delta or None, rows, alpha per row)]: layers
    # served as base + branches (resident="factors"), their groups' weights stay None
    branches: Mapping[int, tuple[_Branch, ...]] | None = None


@dataclass(frozen=True)
class _Branch:
    """One signature's part in a branch-served layer: ``alpha_i · (branch(x_i) + Δb)`` added to
    the rows ``rows`` (sorted order) of the base output."""

    delta: Delta | None
    bias: torch.Tensor | None
    rows: torch.Tensor
    alphas: torch.Tensor
    every_row: bool


class _RouteState(threading.local):
    """The per-thread routing slot of one engine (``plan``); copies start empty."""

    plan: _Plan | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _RouteState:
        return _RouteState()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RouteState, ())


class _Routing:
    """Mixin for Conv2d/Linear/BatchNorm2d: with a plan set on this thread, run the layer once
    per group of rows with that group's tensors. The layer keeps its own parameters, buffers
    and names; the engine turns a module into a routed one by switching its class."""

    _rws_slot: int
    _rws_state: _RouteState
    _rws_attrs: tuple[str, ...] = ("weight", "bias")

    def _patched_forward(
        self, x: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._rws_state.plan
        if plan is None:
            return super().forward(x)  # type: ignore[misc]
        branches = plan.branches.get(self._rws_slot) if plan.branches else None
        if branches is not None:
            return self._branch_forward(x, branches)
        single = len(plan.bounds) == 1
        outs = []
        for (start, stop), group in zip(plan.bounds, plan.weights, strict=True):
            rows = x if single else x[start:stop]
            # a slot routed after this plan was made (a signature added live) uses base weights
            patched = group[self._rws_slot] if self._rws_slot < len(group) else None
            if patched is None:
                outs.append(super().forward(rows))  # type: ignore[misc]
            else:
                outs.append(self._patched_forward(rows, patched))
        return outs[0] if single else torch.cat(outs)

    def _branch_forward(self, x: torch.Tensor, branches: tuple[_Branch, ...]) -> torch.Tensor:
        """The base layer once for the whole batch, plus each signature's thin branch on the
        rows whose mix holds it, scaled per row by its alpha (multi-adapter batching)."""
        y = super().forward(x)  # type: ignore[misc]
        view = (-1,) + (1,) * (y.dim() - 1)
        for b in branches:
            rows = x if b.every_row else _rows(x, b.rows)
            extra = b.delta.branch(rows, self) if b.delta is not None else None  # type: ignore[arg-type]
            if b.bias is not None:
                bias = b.bias.reshape((1, -1) + (1,) * (y.dim() - 2))
                extra = bias.expand(len(b.rows), *y.shape[1:]) if extra is None else extra + bias
            extra = extra * b.alphas.reshape(view)  # a new tensor (extra may be a view)
            if b.every_row:
                y.add_(extra)
            else:
                _add_rows(y, b.rows, extra)
        return y


def _nhwc(t: torch.Tensor) -> torch.Tensor | None:
    """A channels-last 4-D tensor as its contiguous (N, H, W, C) view, else None."""
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return t.permute(0, 2, 3, 1)
    return None


def _rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x.index_select(0, rows)``, through the (N, H, W, C) view for channels-last images
    (several times faster on CPU; the result is channels-last too)."""
    view = _nhwc(x)
    if view is None:
        return x.index_select(0, rows)
    return view.index_select(0, rows).permute(0, 3, 1, 2)


def _add_rows(y: torch.Tensor, rows: torch.Tensor, extra: torch.Tensor) -> None:
    """``y.index_add_(0, rows, extra)`` in place, through the (N, H, W, C) views when both are
    channels-last (the plain call is an order of magnitude slower there on CPU)."""
    target, source = _nhwc(y), _nhwc(extra)
    if target is not None and source is not None:
        target.index_add_(0, rows, source)
    else:
        y.index_add_(0, rows, extra)


class _RoutedConv2d(_Routing, nn.Conv2d):
    def _patched_forward(
        self, x: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]
    ) -> torch.Tensor:
        return self._conv_forward(x, tensors[0], tensors[1])


class _RoutedLinear(_Routing, nn.Linear):
    def _patched_forward(
        self, x: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]
    ) -> torch.Tensor:
        return F.linear(x, tensors[0], tensors[1])


class _RoutedBatchNorm2d(_Routing, nn.BatchNorm2d):
    """Eval-mode batch norm with the group's scale, shift and statistics (the engine serves
    in eval mode only: statistics are never updated)."""

    _rws_attrs = ("weight", "bias", "running_mean", "running_var")

    def _patched_forward(
        self, x: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]
    ) -> torch.Tensor:
        w, b, mean, var = tensors
        return F.batch_norm(x, mean, var, w, b, False, 0.0, self.eps)


_ROUTED: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: _RoutedConv2d,
    nn.Linear: _RoutedLinear,
    nn.BatchNorm2d: _RoutedBatchNorm2d,
}
ROUTABLE = tuple(_ROUTED)
"""Layer types whose tensors signatures may patch in the engine."""


def _route(module: nn.Module, slot: int, state: _RouteState) -> None:
    """Make ``module`` (a Conv2d, Linear or BatchNorm2d, or an already routed one) routed."""
    kind = next((k for k, r in _ROUTED.items() if type(module) in (k, r)), None)
    if kind is None:
        raise SignatureMismatchError(
            f"cannot route a {type(module).__name__}; the engine routes plain Conv2d, Linear "
            "and BatchNorm2d layers"
        )
    if kind is nn.BatchNorm2d and not module.track_running_stats:
        raise SignatureMismatchError("the engine routes batch norms with running statistics only")
    module.__class__ = _ROUTED[kind]
    module._rws_slot = slot
    module._rws_state = state


# --------------------------------------------------------------------------------------------
# weight cache


class _WeightCache:
    """LRU of per-mix patched weights, bounded in bytes, admitting a mix on its second miss;
    thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Mix, tuple[Any, int]] = OrderedDict()
        self._seen: OrderedDict[Mix, None] = OrderedDict()  # keys missed once (bounded)
        self.doorkeeper = 4096
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Mix) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Mix, value: Any, nbytes: int) -> None:
        """Keep ``value`` for ``key`` if the key was seen before (a one-off mix, e.g. a random
        alpha, never displaces the popular ones), evicting least recently used entries."""
        if nbytes > self.max_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            if key in self._entries:
                return
            if key not in self._seen:
                self._seen[key] = None
                if len(self._seen) > self.doorkeeper:
                    self._seen.popitem(last=False)
                return
            del self._seen[key]
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self._bytes -= freed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._seen.clear()
            self._bytes = 0

    def info(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
            }


# --------------------------------------------------------------------------------------------
# the engine


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class Engine:
    """One backbone plus its loaded signatures on one device; per-image mixes in one batch.

    Args:
        model: the clean backbone (theta_std). It takes float images in [0, 1] and must be a
            feed-forward network whose patched layers see the batch along dim 0 (true for the
            zoo's models). The engine works on its own copy (``copy=False`` adopts ``model``;
            the engine then only ever reads its tensors).
        signatures: the signatures to serve, ``{name: Signature}`` or a sequence.
        classes: class names in index order (default ``"0"``, ``"1"``, ...).
        device: where to run (default: CUDA when available, else CPU).
        dtype: compute precision (default float32). ``torch.float16`` / ``torch.bfloat16`` are
            meant for GPUs; patched weights are always built in float32, then cast.
        cache_bytes: bound of the LRU cache of per-mix patched weights.
        max_alpha: largest ``|alpha|`` a mix may use; ``None`` is
            :data:`~rws_hub.core.mix.DEFAULT_MAX_ALPHA` (10), ``math.inf`` no bound. A
            signature whose ``default_alpha`` exceeds it is refused.
        allow_negative: accept negative alphas (taking a signature off a patched base).
        detector: the hook behind the ``"auto"`` mix (see :data:`Detector`).
        input_size: the (H, W) the model expects; informs request parsing.
        name: a display name (e.g. the model folder's).
        copy: copy ``model`` (default) or adopt it.
        channels_last: run convolutions in the channels-last memory format (faster for conv
            nets on CPUs and GPUs alike; results equal within float rounding).
        resident: how the deltas are held. ``"float"`` (default): fp32, the fastest weight
            builds. ``"codes"``: linearly quantized signatures (int8, or int4 unpacked to one
            byte) keep their integer codes and per-group scale/offset and are dequantized while
            a mix's weights are built — about a quarter of the memory, identical results (the
            same float operations as :meth:`Signature.dequantize`); other signatures stay fp32.
            ``"factors"``: like ``"codes"``, and low-rank signatures keep their factors: a
            Conv2d/Linear layer whose loaded deltas are all low-rank is served as the base layer
            once for the whole batch plus, per signature, a thin branch on the rows that ask for
            it (no patched weights are built); answers equal patching within float tolerance.
    """

    def __init__(
        self,
        model: nn.Module,
        signatures: Mapping[str, Signature] | Sequence[Signature] = (),
        *,
        classes: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        cache_bytes: int = 256 << 20,
        max_alpha: float | None = None,
        allow_negative: bool = False,
        detector: Detector | None = None,
        input_size: tuple[int, int] = (32, 32),
        name: str = "model",
        copy: bool = True,
        channels_last: bool = True,
        resident: Literal["float", "codes", "factors"] = "float",
    ) -> None:
        if resident not in ("float", "codes", "factors"):
            raise ValueError(f"resident must be 'float', 'codes' or 'factors', not {resident!r}")
        self.resident = resident
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or torch.float32
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, not {self.dtype}")
        if self.dtype == torch.float16 and self.device.type == "cpu":
            raise ValueError("float16 is for GPUs; use float32 or bfloat16 on the CPU")
        self.name = name
        bound = DEFAULT_MAX_ALPHA if max_alpha is None else float(max_alpha)
        if not bound > 0:  # also refuses NaN
            raise ValueError(f"max_alpha must be positive, got {max_alpha!r}")
        self.max_alpha: float | None = None if math.isinf(bound) else bound
        self.allow_negative = allow_negative
        self.detector = detector
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.refused: dict[str, str] = {}
        self.config: dict[str, Any] = {}

        sigs = (
            dict(signatures) if isinstance(signatures, Mapping) else {s.name: s for s in signatures}
        )

        model = _copy_model(model) if copy else model
        model = model.to(device=self.device, dtype=self.dtype).eval()
        # Inputs go channels-last; the weights keep the standard layout, so the patched weights
        # are built exactly as rws_hub.patch builds them (same kernel, same layout, same bits).
        self.channels_last = bool(channels_last) and any(
            isinstance(m, nn.Conv2d) for m in model.modules()
        )
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self._modules = dict(model.named_modules())
        self._state_tensors = dict(model.state_dict(keep_vars=True))

        out = _output_features(model)
        self.classes: list[str] = (
            list(classes) if classes is not None else [str(i) for i in range(out or 0)]
        )

        # What the loaded signatures need, swapped as a whole under ``_lock`` (add/drop while
        # serving): deltas per signature, metadata, default alphas; routed slots and the
        # float32 bases of the touched tensors only grow.
        self._lock = threading.RLock()
        self._state = _RouteState()
        self._slots: list[str] = []
        self._base: dict[str, torch.Tensor] = {}
        # per base tensor, the lowest value a patch may give it (value_floor), made once
        self._floors: dict[str, torch.Tensor | None] = {}
        self._deltas: dict[str, dict[str, Delta]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._defaults: dict[str, float] = {}
        self._branched: frozenset[str] = frozenset()
        self._cache = _WeightCache(cache_bytes)
        for n in list(sigs):
            self.add_signature(sigs.pop(n))
        del signatures

    # -- the loaded signatures --------------------------------------------------------------

    def _check(self, sig: Signature) -> None:
        """Refuse a signature whose tensors the model lacks, or that are not Conv2d/Linear
        weights or biases, have another shape, hold non-finite or absurd values (a delta above
        1000 times the larger of 1 and the weight's largest magnitude), or whose default alpha
        is above the engine's bound."""
        a = sig.default_alpha
        if not math.isfinite(a) or (self.max_alpha is not None and abs(a) > self.max_alpha):
            raise SignatureMismatchError(
                f"signature {sig.name!r}: default_alpha {a!r} is above the bound {self.max_alpha}"
            )
        for tname, delta in sig.tensors.items():
            have = self._state_tensors.get(tname)
            if have is None:
                raise SignatureMismatchError(
                    f"signature {sig.name!r} patches {tname!r}, which the model does not have"
                )
            if tuple(delta.shape) != tuple(have.shape):
                raise SignatureMismatchError(
                    f"signature {sig.name!r}: {tname} has shape {tuple(delta.shape)}, "
                    f"the model's is {tuple(have.shape)}"
                )
            mname, _, attr = tname.rpartition(".")
            module = self._modules.get(mname)
            kind = next((k for k, r in _ROUTED.items() if type(module) in (k, r)), None)
            attrs = _ROUTED[kind]._rws_attrs if kind is not None else ()
            if attr not in attrs:
                raise SignatureMismatchError(
                    f"signatures patch {tname!r}; the engine routes the weight and bias of "
                    "Conv2d and Linear layers and the weight, bias and running statistics of "
                    f"BatchNorm2d layers only, not a {type(module).__name__}"
                )
            size = float(delta.detach().abs().max()) if delta.numel() else 0.0
            limit = 1e3 * max(1.0, float(have.detach().abs().max()) if have.numel() else 0.0)
            if not math.isfinite(size) or size > limit:
                raise SignatureMismatchError(
                    f"signature {sig.name!r}: {tname} holds a delta of magnitude {size:.3g}, "
                    f"above the sane limit {limit:.3g} for this weight (damaged or mis-scaled)"
                )

    def _hold(self, sig: Signature) -> dict[str, Delta]:
        """One signature's deltas as the engine keeps them (see ``resident``), on its device,
        in the standard layout."""
        if self.resident == "factors":
            held: dict[str, Delta] = {}
            for t, d in sig.deltas("factors").items():
                if isinstance(d, LowRankDelta):
                    held[t] = LowRankDelta(sig.factors[t], self.device, codes=True)  # type: ignore[index]
                elif isinstance(d, QuantizedDelta):
                    held[t] = QuantizedDelta(sig.codes[t], self.device)  # type: ignore[index]
                else:
                    held[t] = DenseDelta(d.tensor.to(self.device, torch.float32).contiguous())
            return held
        codes = sig.codes if self.resident == "codes" else None
        held = {}
        for t, d in sig.tensors.items():
            q = codes.get(t) if codes else None
            if q is not None:
                held[t] = QuantizedDelta(q, self.device)
            else:
                held[t] = DenseDelta(d.to(self.device, torch.float32).contiguous().clone())
        return held

    def _branch_slots(self, deltas: Mapping[str, Mapping[str, Delta]]) -> frozenset[str]:
        """Modules served as base + branches: Conv2d (ungrouped) and Linear layers whose weight
        delta is low-rank in every loaded signature that touches them."""
        if self.resident != "factors":
            return frozenset()
        out = set()
        for mname in self._slots:
            module = self._modules[mname]
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                continue
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            held = [d.get(f"{mname}.weight") for d in deltas.values()]
            held = [h for h in held if h is not None]
            if held and all(isinstance(h, LowRankDelta) for h in held):
                out.add(mname)
        return frozenset(out)

    def add_signature(self, sig: Signature, *, replace: bool = False) -> None:
        """Load ``sig`` into the live engine (thread-safe; requests in flight are unaffected and
        later ones may name it). A name already loaded is refused unless ``replace=True``.

        Raises:
            SignatureMismatchError: the model lacks a tensor, a shape differs, or a tensor is
                not a Conv2d/Linear weight or bias.
            ValueError: the name is loaded and ``replace`` is False.
        """
        if not isinstance(sig, Signature):
            raise TypeError(f"expected a Signature, got {type(sig).__name__}")
        self._check(sig)
        held = self._hold(sig)
        with self._lock:
            if sig.name in self._deltas and not replace:
                raise ValueError(f"signature {sig.name!r} is already loaded; pass replace=True")
            base, floors = dict(self._base), dict(self._floors)
            for tname in held:
                if tname not in base:
                    base[tname] = self._state_tensors[tname].detach().to(torch.float32).contiguous()
                    floors[tname] = value_floor(tname, base[tname])
            for mname in self._modules:  # route new modules, definition order
                wanted = {t for t in held if t.rpartition(".")[0] == mname}
                if wanted and mname not in self._slots:
                    _route(self._modules[mname], len(self._slots), self._state)
                    self._slots.append(mname)
            replacing = sig.name in self._deltas
            self._base, self._floors = base, floors
            self._deltas = {**self._deltas, sig.name: held}
            branched = self._branch_slots(self._deltas)
            if branched != self._branched:
                self._branched = branched
                replacing = True  # cached weights may hold layers now served as branches
            self._meta = {**self._meta, sig.name: sig._meta()}
            self._defaults = {**self._defaults, sig.name: float(sig.default_alpha)}
            if replacing:
                self._cache.clear()

    def drop_signature(self, name: str) -> None:
        """Unload signature ``name`` from the live engine (thread-safe). Requests already past
        validation that name it are refused with ``InvalidMixError``; later ones too."""
        with self._lock:
            if name not in self._deltas:
                known = ", ".join(sorted(self._deltas)) or "none"
                raise InvalidMixError(f"unknown signature {name!r}; known: {known}")
            self._deltas = {k: v for k, v in self._deltas.items() if k != name}
            self._meta = {k: v for k, v in self._meta.items() if k != name}
            self._defaults = {k: v for k, v in self._defaults.items() if k != name}
            self._branched = self._branch_slots(self._deltas)
            self._cache.clear()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        folder: str | Path | ModelFolder,
        *,
        device: str | torch.device | None = None,
        signatures: Any = "all",
        **kwargs: Any,
    ) -> Engine:
        """An engine for a model folder (a path, or a loaded :class:`ModelFolder`).

        ``signatures`` selects what to load (see ``ModelFolder.load``); other keyword
        arguments go to :class:`Engine`. The folder's ``refused`` files are kept in
        :attr:`refused`. A folder that ships a corruption detector (``detector.safetensors``
        + ``config["detector"]``) gets it as the ``"auto"`` hook unless ``detector=`` is given;
        a damaged one is left out and recorded in :attr:`refused`.
        """
        dev = torch.device(device) if device is not None else default_device()
        if not isinstance(folder, ModelFolder):
            folder = ModelFolder.load(folder, device=dev, signatures=signatures)
        config = folder.config
        size = config.get("input_size", [3, 32, 32])
        kwargs.setdefault("classes", list(config["classes"]))
        kwargs.setdefault("input_size", (int(size[-2]), int(size[-1])))
        kwargs.setdefault("name", folder.path.name if folder.path else "model")
        if "detector" not in kwargs and folder.has_detector():
            try:
                kwargs["detector"] = auto_patcher_from_folder(folder, device=dev)
            except RWSError as exc:  # a damaged detector: serve without "auto", say why
                folder.refused["detector.safetensors"] = str(exc)
        engine = cls(folder.model, (), device=dev, copy=False, **kwargs)
        refused = dict(folder.refused)
        for name, sig in folder.signatures.items():
            try:
                engine.add_signature(sig)
            except SignatureMismatchError as exc:  # serve the others, say why
                refused[f"signatures/{name}"] = str(exc)
        engine.refused = refused
        engine.config = dict(config)
        return engine

    # -- information ----------------------------------------------------------------------

    @property
    def signatures(self) -> Mapping[str, Signature]:
        """The loaded signatures by name, as the engine holds them (on its device; with
        ``resident="codes"`` rebuilt from the codes on each access)."""
        out = {}
        for name, held in self._deltas.items():
            tensors = {t: d.materialize() for t, d in held.items()}
            codes = {t: d.quantized() for t, d in held.items() if isinstance(d, QuantizedDelta)}
            full = len(codes) == len(held) and bool(codes)
            meta = dict(self._meta[name])
            if not full and codes:
                meta["quantization"] = None
            out[name] = Signature(name, tensors, codes=codes if full else None, **meta)
        return out

    @property
    def defaults(self) -> dict[str, float]:
        """Default alpha of each loaded signature (used for mixes given as lists of names)."""
        return dict(self._defaults)

    @property
    def patched_layers(self) -> list[str]:
        """Names of the routed (patchable) modules, forward order."""
        return list(self._slots)

    def describe(self) -> dict[str, Any]:
        """Metadata of the engine and every signature (for ``?customized=true`` and UIs)."""
        sigs = []
        for name, held in self._deltas.items():
            entry: dict[str, Any] = {
                "name": name,
                "default_alpha": self._defaults[name],
                "tensors": sorted(held),
                "parameters": int(sum(d.numel() for d in held.values())),
            }
            for key in ("kind", "layers", "architecture", "lineage", "quantization", "provenance"):
                value = self._meta[name].get(key)
                if value is not None:
                    entry[key] = _jsonable(value)
            sigs.append(entry)
        return {
            "model": self.name,
            "classes": list(self.classes),
            "input_size": list(self.input_size),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_alpha": self.max_alpha,  # None: unbounded
            "allow_negative": self.allow_negative,
            "auto": self.detector is not None,
            "resident": self.resident,
            "patched_layers": self.patched_layers,
            "signatures": sigs,
            "refused": dict(self.refused),
        }

    def cache_info(self) -> dict[str, int]:
        """Entries, bytes, bound, hits and misses of the patched-weight cache."""
        return self._cache.info()

    def clear_cache(self) -> None:
        """Drop every cached patched weight."""
        self._cache.clear()

    def memory_bytes(self) -> dict[str, int]:
        """Bytes the engine holds: ``backbone`` (parameters and buffers), ``signatures`` (the
        deltas), ``bases`` (float32 copies of patched tensors, only when dtype is reduced),
        ``cache`` (patched weights) and ``total``."""
        backbone = list(self.model.parameters()) + list(self.model.buffers())
        bb = _tensor_bytes(backbone)
        own = {t.untyped_storage().data_ptr() for t in backbone}
        bases = [t for t in self._base.values() if t.untyped_storage().data_ptr() not in own]
        deltas = [t for held in self._deltas.values() for d in held.values() for t in d.tensors()]
        out = {
            "backbone": bb,
            "signatures": _tensor_bytes(deltas),
            "bases": _tensor_bytes(bases) if bases else 0,
            "cache": self._cache.info()["bytes"],
        }
        out["total"] = sum(out.values())
        return out

    # -- mixes ----------------------------------------------------------------------------

    def parse_mix(self, obj: MixLike) -> Mix | Literal["auto"]:
        """Validate one mix against the loaded signatures and limits.

        Returns a :class:`Mix` (zero alphas dropped), or ``"auto"``. Raises
        :class:`InvalidMixError` naming the problem (unknown names list the known ones).
        """
        if _is_auto(obj):
            return AUTO
        return Mix.parse(
            obj,
            known=self._deltas.keys(),
            defaults=self._defaults,
            max_alpha=self.max_alpha,
            allow_negative=self.allow_negative,
        ).without_zeros()

    def _resolve(
        self,
        images: torch.Tensor,
        mixes: Sequence[MixLike],
        detected: list[Any] | None = None,
    ) -> list[Mix]:
        """Parse every mix; run the detector on the ``"auto"`` rows. A detector with a
        ``detect`` method (``rws_hub.detect.rules.AutoPatcher``) also reports what it saw: row i's
        ``detected[i]`` becomes its top classes and probabilities (when ``detected`` is given)."""
        parsed = [self.parse_mix(m) for m in mixes]
        auto = [i for i, m in enumerate(parsed) if m == AUTO]
        if auto:
            for i, m in zip(auto, self._detect(images, auto, detected), strict=True):
                parsed[i] = m
        return parsed  # type: ignore[return-value]

    def _detect(
        self, images: torch.Tensor, rows: list[int], detected: list[Any] | None
    ) -> list[Mix]:
        """The detector's mix for each of ``rows`` (validated like a client's); a detector
        with a ``detect`` method also reports what it saw into ``detected[i]``."""
        if self.detector is None:
            raise RequestError(
                '"auto" needs a corruption detector, and this model has none loaded; '
                "name the signatures instead",
                400,
            )
        detect = getattr(self.detector, "detect", None)
        if callable(detect):
            found = detect(images[rows])
            chosen = [d.mix for d in found]
            if detected is not None:
                for i, d in zip(rows, found, strict=True):
                    detected[i] = d.to_json()
        else:
            chosen = self.detector(images[rows])
        if len(chosen) != len(rows):
            raise RuntimeError("the detector returned a different number of mixes")
        out = []
        for m in chosen:
            resolved = self.parse_mix(m)
            if not isinstance(resolved, Mix):
                raise RuntimeError("the detector answered 'auto'")
            out.append(resolved)
        return out

    # -- weights --------------------------------------------------------------------------

    def _build(self, mix: Mix) -> dict[str, torch.Tensor]:
        """``base + sum(alpha * delta)`` in float32 for every tensor the mix touches, by
        :func:`rws_hub.core.deltas.patched_value` -- the kernel :func:`rws_hub.patch` uses, so
        the served weights equal the patched model's bitwise."""
        deltas, bases, floors = self._deltas, self._base, self._floors  # one snapshot
        branched = self._branched
        terms: dict[str, list[tuple[Delta, float]]] = {}
        for name, alpha in mix.items():
            held = deltas.get(name)
            if held is None:
                raise InvalidMixError(f"signature {name!r} was unloaded; name a loaded one")
            for tname, delta in held.items():
                if tname.rpartition(".")[0] in branched:
                    continue  # served as a branch: no weight to build
                terms.setdefault(tname, []).append((delta, alpha))
        return {t: patched_value(bases[t], ts, floors[t]) for t, ts in terms.items()}

    def _patched(self, mix: Mix) -> tuple[tuple[torch.Tensor | None, ...] | None, ...]:
        """Per routed slot, the patched tensors of ``mix`` (the layer's own where the mix leaves
        them), or None for a layer the mix does not touch."""
        cached = self._cache.get(mix)
        if cached is not None:
            return cached
        patched = self._build(mix)
        slots: list[tuple[torch.Tensor | None, ...] | None] = []
        nbytes = 0
        for mname in self._slots:
            module = self._modules[mname]
            names = [f"{mname}.{a}" for a in module._rws_attrs]
            if not any(n in patched for n in names):
                slots.append(None)
                continue
            tensors = []
            for attr, n in zip(module._rws_attrs, names, strict=True):
                t = patched.get(n)
                if t is None:
                    tensors.append(getattr(module, attr))
                else:
                    t = t.to(self.dtype)
                    tensors.append(t)
                    nbytes += t.numel() * t.element_size()
            slots.append(tuple(tensors))
        value = tuple(slots)
        self._cache.put(mix, value, nbytes)
        return value

    # -- inference ------------------------------------------------------------------------

    def predict(
        self, images: torch.Tensor, mixes: Sequence[MixLike] | MixLike = None
    ) -> torch.Tensor:
        """Logits (N, classes), float32, on the engine's device.

        Args:
            images: float (N, 3, H, W) in [0, 1] (any device; moved to the engine's).
            mixes: one mix per image (see :data:`MixLike`), or a single mix for all of them.

        Raises:
            InvalidMixError: a mix is invalid (nothing ran).
            RequestError: ``"auto"`` without a detector (status 400).
            ValueError: ``images`` is not (N, C, H, W) or the counts differ.
        """
        x, mixes = self._inputs(images, mixes)
        return self._logits(x, self._resolve(x, mixes))

    def _inputs(
        self, images: torch.Tensor, mixes: Sequence[MixLike] | MixLike
    ) -> tuple[torch.Tensor, Sequence[MixLike]]:
        """``images`` checked and moved to the engine's device, dtype and memory format, and
        one mix per image."""
        mixes = _per_image_checked(images, mixes)
        x = images.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, mixes

    def _logits(
        self,
        x: torch.Tensor,
        resolved: Sequence[Mix],
        built: Mapping[Mix, Any] | None = None,
    ) -> torch.Tensor:
        """Logits of ``x`` (from :meth:`_inputs`) under mixes already resolved by
        :meth:`_resolve`, one per row; the one inference path behind every public call.
        ``built`` may hold the patched weights of some mixes already."""
        n = x.shape[0]
        if n == 0:
            return torch.empty(0, len(self.classes), device=self.device)

        # Group rows by mix; make every group contiguous (stable order).
        group_of: dict[Mix, int] = {}
        ids = [group_of.setdefault(m, len(group_of)) for m in resolved]
        keys = list(group_of)
        if len(keys) == 1 and keys[0].is_empty:
            plan = None
            perm = None
        else:
            order = sorted(range(n), key=ids.__getitem__)
            counts = [0] * len(keys)
            for g in ids:
                counts[g] += 1
            bounds, start = [], 0
            for c in counts:
                bounds.append((start, start + c))
                start += c
            built = built or {}
            weights = tuple(
                tuple([None] * len(self._slots))
                if k.is_empty
                else (built[k] if k in built else self._patched(k))
                for k in keys
            )
            plan = _Plan(tuple(bounds), weights, self._plan_branches(keys, bounds, n))
            perm = None if order == list(range(n)) else torch.tensor(order, device=self.device)
            if perm is not None:
                x = _rows(x, perm)  # keeps the channels-last format (index_select drops it)

        self._state.plan = plan
        try:
            with torch.inference_mode():
                out = self.model(x)
        finally:
            self._state.plan = None
        out = out.float()
        if perm is not None:
            unsorted = torch.empty_like(out)
            unsorted[perm] = out
            out = unsorted
        return out

    def _patched_or_error(self, mix: Mix) -> Any:
        """:meth:`_patched`, or the :class:`RequestError` that answers the rows of a mix whose
        weights cannot be built (a signature unloaded meanwhile: 400; an overflow: 422)."""
        try:
            return self._patched(mix)
        except InvalidMixError as exc:
            return RequestError(str(exc), 400)
        except (RuntimeError, OverflowError, ValueError) as exc:
            return RequestError(
                f"the weights for mix {shorten(str(mix), 200)} cannot be built "
                f"({shorten(str(exc), 200)}); lower the strengths",
                422,
            )

    def _plan_branches(
        self, keys: list[Mix], bounds: list[tuple[int, int]], n: int
    ) -> dict[int, tuple[_Branch, ...]] | None:
        """For each branch-served slot: per signature in the batch, its rows (in the sorted
        order of the groups) and their alphas."""
        branched, deltas = self._branched, self._deltas
        if not branched:
            return None
        per_sig: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for key, (start, stop) in zip(keys, bounds, strict=True):
            for name, alpha in key.items():
                rows, alphas = per_sig.setdefault(name, ([], []))
                rows.append(torch.arange(start, stop, device=self.device))
                alphas.append(torch.full((stop - start,), alpha, device=self.device))
        segments = {
            name: (torch.cat(r), torch.cat(a).to(self.dtype)) for name, (r, a) in per_sig.items()
        }
        out: dict[int, tuple[_Branch, ...]] = {}
        for slot, mname in enumerate(self._slots):
            if mname not in branched:
                continue
            parts = []
            for name, (rows, alphas) in segments.items():
                held = deltas.get(name, {})
                w, b = held.get(f"{mname}.weight"), held.get(f"{mname}.bias")
                if w is None and b is None:
                    continue
                bias = b.materialize(self.dtype, self.device) if b is not None else None
                parts.append(_Branch(w, bias, rows, alphas, len(rows) == n))
            if parts:
                out[slot] = tuple(parts)
        return out

    def classify(
        self,
        images: torch.Tensor,
        mixes: Sequence[MixLike] | MixLike = None,
        top_k: int | Sequence[int] = 5,
    ) -> list[dict[str, Any]]:
        """Top-k answers, one dict per image:
        ``{"predictions": [{"class": name, "probability": p}, ...], "mix": {name: alpha}}``.

        ``top_k`` is one int or one per image (each clipped to the number of classes). For
        ``"auto"`` rows the mix is the one the detector chose and ``"auto": True`` is added,
        with ``"detected": [{"class": name, "probability": p}, ...]`` (the detector's top
        classes, ``"clean"`` included) when the detector reports them.

        Raises the first row's error (see :meth:`classify_rows` for answers per row).
        """
        answers = self.classify_rows(images, mixes, top_k)
        for a in answers:
            if isinstance(a, RWSError):
                raise a
        return answers  # type: ignore[return-value]

    def classify_rows(
        self,
        images: torch.Tensor,
        mixes: Sequence[MixLike] | MixLike = None,
        top_k: int | Sequence[int] = 5,
    ) -> list[dict[str, Any] | RequestError]:
        """Like :meth:`classify`, but every error that belongs to one image answers that image
        alone: a :class:`RequestError` in its place (status 400 for an invalid mix or an image
        holding NaN/inf, 422 when its weights cannot be built or its output is not finite, e.g.
        strengths that overflow float32) while the other images are answered normally. No
        answer ever holds a non-finite number."""
        mixes = _per_image_checked(images, mixes)
        n = images.shape[0]
        ks = [int(top_k)] * n if isinstance(top_k, int) else [int(k) for k in top_k]
        if len(ks) != n:
            raise ValueError(f"{n} images but {len(ks)} top_k values")
        errors: list[RequestError | None] = [None] * n
        finite = torch.isfinite(images.reshape(n, -1)).all(dim=1).tolist() if n else []
        parsed: list[Mix | Literal["auto"] | None] = [None] * n
        for i in range(n):
            if not finite[i]:
                errors[i] = RequestError("the image holds NaN or infinite pixel values", 400)
                continue
            try:
                parsed[i] = self.parse_mix(mixes[i])
            except InvalidMixError as exc:
                errors[i] = RequestError(str(exc), 400)
        detected: list[Any] = [None] * n
        auto = [i for i in range(n) if parsed[i] == AUTO]
        if auto:
            try:
                for i, m in zip(auto, self._detect(images, auto, detected), strict=True):
                    parsed[i] = m
            except RequestError as exc:  # "auto" without a detector: those rows only
                for i in auto:
                    errors[i] = exc
        # Weights per distinct mix; a mix whose weights cannot be built fails its rows only.
        weights: dict[Mix, Any] = {}
        for i, m in enumerate(parsed):
            if errors[i] is not None or not isinstance(m, Mix) or m.is_empty:
                continue
            if m not in weights:
                weights[m] = self._patched_or_error(m)
            if isinstance(weights[m], RequestError):
                errors[i] = weights[m]
        ok = [i for i in range(n) if errors[i] is None]
        answers: list[dict[str, Any] | RequestError] = list(errors)  # type: ignore[arg-type]
        if not ok:
            return answers
        resolved = [parsed[i] for i in ok]
        x, _ = self._inputs(images[ok], resolved)
        logits = self._logits(x, resolved, weights)  # type: ignore[arg-type]
        probs = torch.softmax(logits, dim=1).cpu()
        good = torch.isfinite(logits).all(dim=1).cpu().tolist()
        kmax = max(1, min(max(ks, default=1), probs.shape[1]))
        values, indices = probs.topk(kmax, dim=1)
        for row, i in enumerate(ok):
            if not good[row]:
                answers[i] = RequestError(
                    "the patched model's output is not finite for this image (the strengths "
                    "are too large for these weights); lower the alphas",
                    422,
                )
                continue
            k = max(1, min(ks[i], probs.shape[1]))
            preds = [
                {"class": self.classes[int(j)], "probability": float(p)}
                for p, j in zip(values[row, :k].tolist(), indices[row, :k].tolist(), strict=True)
            ]
            answer: dict[str, Any] = {"predictions": preds, "mix": dict(parsed[i])}  # type: ignore[arg-type]
            if _is_auto(mixes[i]):
                answer["auto"] = True
                if detected[i] is not None:
                    answer["detected"] = detected[i]
            answers[i] = answer
        return answers

    def as_module(self, mix: MixLike = AUTO) -> MixedModel:
        """An ``nn.Module`` view of this engine: ``forward(images)`` returns the logits of every
        image under ``mix`` (``"auto"`` by default: each image gets the mix the detector chose
        for it). The shared weights are never touched. See :class:`MixedModel`."""
        return MixedModel(self, mix)


class MixedModel(nn.Module):
    """Logits of an :class:`Engine` under one mix, as a module (what ``torch.hub.load(...,
    patch="auto")`` returns). Images are float (N, 3, H, W) in [0, 1].

    After each ``forward`` on an ``"auto"`` mix, :attr:`last_mixes` holds the mix applied to
    each image and :attr:`last_detected` the detector's top classes per image.

    Raises on ``forward``: :class:`~rws_hub.errors.RequestError` if ``"auto"`` is asked of an
    engine without a detector.
    """

    def __init__(self, engine: Engine, mix: MixLike = AUTO) -> None:
        super().__init__()
        self.engine = engine
        self.mix = mix
        self.model = engine.model  # registered, so .eval()/.parameters() behave as expected
        self.last_mixes: list[dict[str, float]] = []
        self.last_detected: list[Any] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0] if images.dim() == 4 else 0
        detected: list[Any] = [None] * n
        engine = self.engine
        resolved = engine._resolve(images.to(engine.device), [self.mix] * n, detected)
        self.last_mixes = [dict(m) for m in resolved]
        self.last_detected = detected
        x, _ = engine._inputs(images, resolved)
        return engine._logits(x, resolved)

    def extra_repr(self) -> str:
        return f"mix={self.mix!r}"


# --------------------------------------------------------------------------------------------
# helpers


def _is_auto(obj: Any) -> bool:
    """Whether a mix asks for the detector (``"auto"``, any case and spacing)."""
    return isinstance(obj, str) and obj.strip().lower() == AUTO


def _per_image_checked(
    images: torch.Tensor, mixes: Sequence[MixLike] | MixLike
) -> Sequence[MixLike]:
    """One mix per image, after checking ``images`` is (N, C, H, W) and the counts agree."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images must be a float tensor of shape (N, 3, H, W)")
    n = images.shape[0]
    mixes = _per_image(mixes, n)
    if len(mixes) != n:
        raise ValueError(f"{n} images but {len(mixes)} mixes")
    return mixes


def _per_image(mixes: Sequence[MixLike] | MixLike, n: int) -> Sequence[MixLike]:
    """``mixes`` as one per image: a single mix (None, a string, a mapping) is repeated."""
    if mixes is None or isinstance(mixes, (str, Mapping)):
        return [mixes] * n
    return mixes


def _copy_model(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` with cloned tensors (the caller's model is untouched)."""
    return copy.deepcopy(model)


def _output_features(model: nn.Module) -> int | None:
    """Output width of the model's last Linear layer (its class count), if it has one."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last.out_features if last is not None else None


def _jsonable(value: Any) -> Any:
    """``value`` made JSON-serialisable (numbers, strings, lists, dicts; others as str)."""
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
