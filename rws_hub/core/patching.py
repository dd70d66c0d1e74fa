"""Patching a model with signatures: ``θ = θ_base + Σ α_i · v_i`` on the tensors they cover.

* :func:`patch` — a context manager; in place, restores the original tensors bitwise on exit.
* :func:`apply` / :func:`remove` / :func:`active_mix` — long-lived patches (PEFT-like).
* :func:`patched_tensors` — functional: new tensors, the model is never touched.

A *mix* says which signatures and how strongly: ``{sig_or_name: alpha}``, a list of signatures
or names (alpha = each signature's ``default_alpha``), a :class:`~rws_hub.core.mix.Mix`, or a string
``"fog:1,gaussian_noise:0.5"``. Names are looked up in ``signatures=`` or else in the model's
``rws_signatures`` attribute (set when a model folder is loaded).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rws_hub.core.deltas import DenseDelta, patched_value, value_floor
from rws_hub.core.mix import Mix, as_alpha
from rws_hub.core.signature import Signature
from rws_hub.errors import InvalidMixError, SignatureMismatchError

__all__ = ["patch", "apply", "remove", "active_mix", "patched_tensors", "resolve_mix", "MixLike"]

MixLike = Mix | Mapping[Signature | str, float] | Iterable[Signature | str] | str | None

_STACK_ATTR = "_rws_applied"


def _alpha(label: str, value: Any) -> float:
    a = as_alpha(label, value)  # numbers, numpy scalars, 0-d tensors; not bools or strings
    if not math.isfinite(a):
        raise InvalidMixError(f"alpha for {label!r} must be finite, got {a}")
    return a


def resolve_mix(
    mix: MixLike, signatures: Mapping[str, Signature] | None = None
) -> list[tuple[Signature, float]]:
    """Turn any accepted mix form into ``[(signature, alpha), ...]``, validating names and
    alphas (``InvalidMixError`` for unknown names, NaN/inf or non-numeric alphas)."""
    registry: Mapping[str, Signature] = signatures or {}

    def lookup(name: str) -> Signature:
        if not isinstance(name, str):
            raise InvalidMixError(
                f"a mix holds Signature objects or names, got {type(name).__name__} {name!r}"
            )
        sig = registry.get(name)
        if sig is None:
            known = ", ".join(sorted(registry)) or "none are loaded"
            raise InvalidMixError(f"unknown signature {name!r}; known: {known}")
        return sig

    if mix is None:
        return []
    if isinstance(mix, Signature):
        return [(mix, mix.default_alpha)]
    if isinstance(mix, str):
        defaults = {n: s.default_alpha for n, s in registry.items()}
        mix = Mix.parse(mix, defaults=defaults, allow_negative=True)
    pairs: list[tuple[Signature, float]] = []
    if isinstance(mix, Mapping):
        for key, value in mix.items():
            sig = key if isinstance(key, Signature) else lookup(key)
            pairs.append((sig, _alpha(sig.name, value)))
    elif isinstance(mix, Iterable):
        seen: set[str] = set()
        for item in mix:
            if isinstance(item, str):
                if item in seen:
                    raise InvalidMixError(f"signature {item!r} appears twice in the mix")
                seen.add(item)
            sig = item if isinstance(item, Signature) else lookup(item)
            pairs.append((sig, _alpha(sig.name, sig.default_alpha)))
    else:
        raise InvalidMixError(
            "a mix is a {signature or name: alpha} mapping, a list of signatures or names, "
            f"a Mix or a string 'a:1,b:0.5', not {type(mix).__name__}"
        )
    return pairs


def _same(field: str, have: str, want: str) -> bool:
    if field == "architecture":
        # a signature may record a more specific id ("resnet18@w0.5"); the family must agree
        return have == want or have.split("@", 1)[0] == want.split("@", 1)[0]
    return have == want


def _check(
    pairs: list[tuple[Signature, float]],
    targets: Mapping[str, torch.Tensor],
    *,
    architecture: str | None,
    lineage: str | None,
    force: bool,
) -> list[str]:
    """Validate every pair against the target tensors; return the touched names in order."""
    touched: dict[str, None] = {}
    for sig, _ in pairs:
        if not force:
            for field, want in (("architecture", architecture), ("lineage", lineage)):
                have = getattr(sig, field)
                if want is not None and have is not None and not _same(field, have, want):
                    raise SignatureMismatchError(
                        f"signature {sig.name!r} was extracted for {field} {have!r} but the "
                        f"model's is {want!r}; pass force=True to patch anyway"
                    )
        for name, v in sig.tensors.items():
            t = targets.get(name)
            if t is None:
                close = difflib.get_close_matches(name, list(targets), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise SignatureMismatchError(
                    f"signature {sig.name!r} patches tensor {name!r}, which the model does "
                    f"not have{hint}"
                )
            if t.shape != v.shape:
                raise SignatureMismatchError(
                    f"signature {sig.name!r}: tensor {name!r} has shape {tuple(v.shape)} but "
                    f"the model's is {tuple(t.shape)}"
                )
            if not t.is_floating_point():
                raise SignatureMismatchError(
                    f"signature {sig.name!r}: model tensor {name!r} is {t.dtype}, not float"
                )
            touched[name] = None
    return list(touched)


def _patched_value(
    t: torch.Tensor, name: str, pairs: list[tuple[Signature, float]]
) -> torch.Tensor:
    """``t + Σ α·v[name]`` by :func:`rws_hub.core.deltas.patched_value`, the kernel the engine
    uses too (so the in-place, functional and served weights agree bitwise)."""
    # terms in signature-name order: the order a Mix iterates in, which the engine uses
    ordered = sorted((p for p in pairs if name in p[0].tensors), key=lambda p: p[0].name)
    terms = [(DenseDelta(s.tensors[name]), a) for s, a in ordered]
    return patched_value(t.contiguous(), terms, value_floor(name, t))


def patched_tensors(
    base: Mapping[str, torch.Tensor],
    mix: MixLike,
    *,
    signatures: Mapping[str, Signature] | None = None,
    architecture: str | None = None,
    lineage: str | None = None,
    force: bool = False,
) -> dict[str, torch.Tensor]:
    """Functional patching: ``{name: base[name] + Σ α·v[name]}`` for every tensor a signature
    in ``mix`` touches. ``base`` is never modified; untouched tensors are not returned.

    Args:
        base: state-dict-like ``{name: tensor}`` of the model to patch.
        mix: ``{signature_or_name: alpha}``, a list of signatures/names, a ``Mix`` or
            ``"a:1,b:0.5"``. An empty mix returns ``{}``.
        signatures: where names are looked up.
        architecture, lineage: the base model's; signatures that disagree are refused
            unless ``force=True``.

    Raises:
        InvalidMixError: unknown signature name, NaN/inf or non-numeric alpha.
        SignatureMismatchError: unknown tensor name, shape mismatch, other
            architecture/lineage.
    """
    pairs = resolve_mix(mix, signatures)
    names = _check(pairs, base, architecture=architecture, lineage=lineage, force=force)
    with torch.no_grad():
        return {n: _patched_value(base[n], n, pairs) for n in names}


def _model_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    return dict(model.state_dict(keep_vars=True))


def _apply_pairs(
    model: nn.Module, mix: MixLike, signatures: Mapping[str, Signature] | None, force: bool
) -> tuple[list[tuple[Signature, float]], dict[str, torch.Tensor]]:
    """Add the mix in place; return the pairs and the saved originals of the touched tensors."""
    registry = signatures if signatures is not None else getattr(model, "rws_signatures", None)
    pairs = resolve_mix(mix, registry)
    targets = _model_targets(model)
    names = _check(
        pairs,
        targets,
        architecture=getattr(model, "rws_architecture", None),
        lineage=getattr(model, "rws_lineage", None),
        force=force,
    )
    originals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        try:
            for n in names:
                t = targets[n]
                new = _patched_value(t, n, pairs)
                originals[n] = t.detach().clone()
                t.copy_(new)
        except BaseException:
            _restore(targets, originals)
            raise
    return pairs, originals


def _restore(targets: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, orig in originals.items():
            targets[n].copy_(orig)


@contextmanager
def patch(
    model: nn.Module,
    mix: MixLike,
    *,
    signatures: Mapping[str, Signature] | None = None,
    force: bool = False,
) -> Iterator[nn.Module]:
    """Patch ``model`` in place for the duration of a ``with`` block.

    Inside the block the covered tensors are ``θ + Σ α_i · v_i``; on exit (also when the
    block raises) they are restored **bitwise** from copies of the originals, and they are
    the same tensor objects throughout (optimizers and hooks keep working).

    Example::

        with rws_hub.patch(model, {"fog": 1.0, "gaussian_noise": 0.5}):
            logits = model(images)            # robust to fog + noise
        logits = model(images)                # exactly the clean model again

    Args:
        model: an ``nn.Module``.
        mix: what to add; any of

            * ``{signature_or_name: alpha, ...}``
            * ``[signature_or_name, ...]`` (alpha = each signature's ``default_alpha``)
            * a :class:`~rws_hub.Mix`, or a string ``"fog:1,gaussian_noise:0.5"``
            * a single ``Signature``; ``None`` or empty: nothing (the clean model)

        signatures: ``{name: Signature}`` to look names up in; default
            ``model.rws_signatures`` (set when a model folder is loaded).
        force: patch even when a signature's ``architecture`` or ``lineage`` differs from
            the model's ``rws_architecture`` / ``rws_lineage``.

    Yields:
        the model itself.

    Raises (before touching any weight):
        InvalidMixError: unknown signature name (the message lists the known ones),
            NaN/inf or non-numeric alpha.
        SignatureMismatchError: a tensor the model lacks, a shape mismatch, or another
            architecture/lineage (unless ``force=True``).
    """
    _, originals = _apply_pairs(model, mix, signatures, force)
    try:
        yield model
    finally:
        _restore(_model_targets(model), originals)


def apply(
    model: nn.Module,
    mix: MixLike,
    *,
    signatures: Mapping[str, Signature] | None = None,
    force: bool = False,
) -> Mix:
    """Apply a long-lived patch (same arguments and checks as :func:`patch`).

    Patches stack: each call adds its mix on top and remembers the tensors it changed;
    :func:`remove` takes them all off, or one signature by name, restoring the weights bitwise.
    Returns :func:`active_mix` after applying.
    """
    pairs, originals = _apply_pairs(model, mix, signatures, force)
    stack = _stack(model)
    stack.append((pairs, originals))
    object.__setattr__(model, _STACK_ATTR, stack)
    return active_mix(model)


def _stack(
    model: nn.Module,
) -> list[tuple[list[tuple[Signature, float]], dict[str, torch.Tensor]]]:
    return getattr(model, _STACK_ATTR, None) or []


def remove(model: nn.Module, name: str | None = None) -> int:
    """Take patches off that :func:`apply` added, restoring the weights bitwise.

    ``name=None`` takes every patch off (last first) and returns how many there were (0 when
    none was applied). ``remove(model, "fog")`` takes off one signature only and returns how
    many times it had been applied: the touched tensors are restored to their clean values and
    the remaining signatures added again, so the result is bitwise what applying only the
    remaining ones to the clean model gives. An unknown name raises ``InvalidMixError``.
    """
    stack = _stack(model)
    targets = _model_targets(model)
    if name is None:
        count = len(stack)
        while stack:
            _, originals = stack.pop()
            _restore(targets, originals)
        object.__setattr__(model, _STACK_ATTR, [])
        return count
    dropped = sum(1 for pairs, _ in stack for s, _ in pairs if s.name == name)
    if not dropped:
        applied = ", ".join(active_mix(model)) or "none"
        raise InvalidMixError(
            f"signature {name!r} is not applied to this model; applied: {applied}"
        )
    kept = [[(s, a) for s, a in pairs if s.name != name] for pairs, _ in stack]
    while stack:
        _, originals = stack.pop()
        _restore(targets, originals)
    object.__setattr__(model, _STACK_ATTR, [])
    for pairs in kept:  # the other patches again, in their order (checked when first applied)
        if pairs:
            apply(model, dict(pairs), force=True)
    return dropped


def active_mix(model: nn.Module) -> Mix:
    """The signatures :func:`apply` has put on ``model``, alphas summed per name (empty when
    the model is clean; patches inside a :func:`patch` block are not counted)."""
    totals: dict[str, float] = {}
    for pairs, _ in _stack(model):
        for sig, a in pairs:
            totals[sig.name] = totals.get(sig.name, 0.0) + a
    return Mix(totals)
