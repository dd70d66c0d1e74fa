"""The architecture registry (timm / torchvision style): builders by name.

A builder is a function returning an untrained ``nn.Module`` that takes float images in
[0, 1] and normalises inside. It registers by decorating it with :func:`register_model` in
its own module; importing :mod:`rws_hub.archs` imports the built-in builders' modules, so
they are registered whenever :func:`create_model` can be called.

Every builder accepts ``num_classes``, ``mean`` and ``std`` (the data set's normalisation,
which the caller supplies: :func:`model_from_config` takes them from a model folder's
``config.json``, the zoo from the data set's spec) and, optionally, ``width``.

An architecture may carry a **recommended K** (``recommended_units``): how many units a
signature of it should cover, measured by a K sweep on a trained model of that architecture
(``benchmarks/results.py depth``: the smallest K whose mean RA gain is within one point of the
sweep's best). ``rws info`` prints it; architectures nobody has swept have none.

Which pretrained weights exist for an architecture is the zoo's business:
``rws_hub.zoo.weights.get_model_weights(name)`` looks them up by architecture name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its name, builder, the module that defined it and, when a K
    sweep measured one, its recommended number of signature units."""

    name: str
    builder: Builder
    module: str
    recommended_units: int | None = None


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None, *, recommended_units: int | None = None
) -> Callable[[Builder], Builder]:
    """Decorator: register a model builder under ``name`` (default: the function's name), with
    the recommended K of its signatures when a K sweep measured one.

    A name already registered is refused with a ``ValueError`` naming the module that holds
    it (a silent overwrite would change what every model folder of that name builds).
    """

    def deco(fn: Builder) -> Builder:
        key = name or fn.__name__
        old = _MODELS.get(key)
        if old is not None:
            raise ValueError(
                f"architecture {key!r} is already registered (by {old.module}.{old.builder.__name__}); "
                "pick another name"
            )
        if recommended_units is not None and recommended_units < 1:
            raise ValueError(f"recommended_units must be >= 1, got {recommended_units}")
        _MODELS[key] = ModelEntry(key, fn, fn.__module__, recommended_units)
        return fn

    return deco


_FAMILIES: dict[str, Callable[[str], Builder | None]] = {}


def register_family(prefix: str, resolve: Callable[[str], Builder | None]) -> None:
    """Register a family of architectures named ``<prefix><name>`` whose builders are found on
    demand by ``resolve(name)`` (None for an unknown name), e.g. every torchvision
    classification model as ``torchvision.<name>``. A prefix registered twice is refused."""
    if prefix in _FAMILIES:
        raise ValueError(f"architecture family {prefix!r} is already registered")
    _FAMILIES[prefix] = resolve


def unregister_model(name: str) -> None:
    """Remove a registered architecture (for tests and plugins that replace their own)."""
    _MODELS.pop(name, None)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def get_model_builder(name: str) -> Builder:
    """The builder registered under ``name``; ``ValueError`` listing the known names."""
    entry = _MODELS.get(name)
    if entry is not None:
        return entry.builder
    for prefix, resolve in _FAMILIES.items():
        if name.startswith(prefix):
            builder = resolve(name[len(prefix) :])
            if builder is not None:
                return builder
    families = "".join(f", {p}<name>" for p in _FAMILIES)
    raise ValueError(f"unknown architecture {name!r}; known: {', '.join(list_models())}{families}")


def recommended_units(name: str) -> int | None:
    """The recommended K (signature units) of architecture ``name``, measured by a K sweep;
    None when none was measured (torchvision's models, new architectures)."""
    entry = _MODELS.get(name)
    return entry.recommended_units if entry is not None else None


def choose_units(ks: list[int], mean_gain: list[float], tolerance: float = 1.0) -> int:
    """The K a K sweep recommends: the smallest K whose mean RA gain is within ``tolerance``
    points of the sweep's best (differences below a point are within a 1000-image sweep's
    noise, and every further unit only adds bytes)."""
    if not ks or len(ks) != len(mean_gain):
        raise ValueError("a K sweep needs one mean gain per K")
    best = max(mean_gain)
    return next(k for k, g in zip(ks, mean_gain, strict=True) if g >= best - tolerance)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build an untrained model by registry name, e.g.
    ``create_model(name, num_classes=10, width=0.5, mean=spec.mean, std=spec.std)``."""
    return get_model_builder(name)(**kwargs)


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The builder keyword arguments a model folder's ``config.json`` gives: ``num_classes``
    (from ``classes``), ``width``, and ``mean`` / ``std``."""
    kwargs: dict[str, Any] = {"num_classes": len(config["classes"])}
    if "width" in config:
        kwargs["width"] = config["width"]
    if "mean" in config and "std" in config:
        kwargs["mean"], kwargs["std"] = config["mean"], config["std"]
    return kwargs


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Build the architecture a model folder's ``config.json`` describes (untrained)."""
    return create_model(config["architecture"], **model_kwargs(config))
