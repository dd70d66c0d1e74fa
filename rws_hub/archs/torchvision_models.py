"""Bring your own model: every torchvision classification model as ``torchvision.<name>``.

``create_model("torchvision.resnet50", num_classes=10, mean=..., std=...)`` is
``torchvision.models.get_model("resnet50", weights=None, num_classes=10)`` as it is (same
modules, same state-dict names), plus this project's input convention: it takes float images in
[0, 1] and normalises them inside, with ``mean``/``std`` held as non-persistent buffers and
applied by a forward pre-hook, so the state dict is torchvision's own. A model folder whose
config names ``"torchvision.resnet50"`` loads like any other.

What signatures cover on these models: units of a Conv2d and the BatchNorm2d it feeds (ResNets,
MobileNets, EfficientNets, RegNets, VGG-BN); on networks normalised otherwise (ConvNeXt's
LayerNorm, GroupNorm) the convs are units and the norms are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from rws_hub.archs.registry import Builder, register_family

__all__ = ["PREFIX", "torchvision_model", "classification_models"]

PREFIX = "torchvision."


def classification_models() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models.list_models``)."""
    return torchvision.models.list_models(module=torchvision.models)


def _normalize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    return ((x - module.rws_mean) / module.rws_std, *args[1:])


def torchvision_model(
    name: str,
    num_classes: int = 1000,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    width: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Torchvision's ``name`` untrained, taking [0, 1] images normalised inside."""
    if width not in (None, 1, 1.0):
        raise ValueError(f"torchvision models have no width multiplier (got width={width})")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    model.register_buffer(
        "rws_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
    )
    model.register_buffer(
        "rws_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
    )
    model.register_forward_pre_hook(_normalize_input)
    return model


def _resolve(name: str) -> Builder | None:
    if name not in classification_models():
        return None

    def build(**kwargs: Any) -> nn.Module:
        return torchvision_model(name, **kwargs)

    build.__name__ = f"torchvision_{name}"
    return build


register_family(PREFIX, _resolve)
