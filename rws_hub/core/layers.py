"""Layer selection: which tensors a signature covers.

Robustness to corruptions lives mostly in the shallow layers, so a signature covers only the
first ``k`` convolution layers (the published default for VGG-16 is ``k = 7``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rws_hub.core.formats import read

__all__ = ["shallow_params", "conv_layers"]


def _trace_conv_order(model: nn.Module, size: int) -> list[str]:
    """Names of the ``nn.Conv2d`` modules in the order a forward pass calls them."""
    names: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module not in names:
            names[module] = name
    order: list[str] = []
    seen: set[str] = set()

    def hook(module: nn.Module, _inputs: object, _output: object) -> None:
        name = names[module]
        if name not in seen:
            seen.add(name)
            order.append(name)

    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in names]
    try:
        model.eval()  # no batch-norm statistics are updated by the probe
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    # Conv layers the forward pass never called go last, in registration order.
    order += [n for n in names.values() if n not in seen]
    return order


def conv_layers(model: nn.Module) -> list[str]:
    """Module names of the model's ``nn.Conv2d`` layers in forward order (see
    :func:`shallow_params` for the rule)."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return []
    errors = []
    for size in (32, 224):
        try:
            return _trace_conv_order(model, size)
        except Exception as exc:  # the probe input may not fit this model; try the next size
            errors.append(f"{size}x{size}: {type(exc).__name__}: {exc}")
    warnings.warn(
        "could not trace a forward pass to order the conv layers ("
        + "; ".join(errors)
        + "); using registration order instead",
        stacklevel=3,
    )
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _names_for(module_name: str, module: nn.Module) -> list[str]:
    prefix = f"{module_name}." if module_name else ""
    names = [prefix + "weight"]
    if getattr(module, "bias", None) is not None:
        names.append(prefix + "bias")
    return names


def shallow_params(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
    k: int | None,
) -> list[str]:
    """Tensor names (state-dict keys) of the first ``k`` convolution layers, in forward order.

    Each layer contributes its ``weight`` and then its ``bias`` when it has one, e.g. for the
    CIFAR VGG-16 and ``k=2``: ``["features.0.weight", "features.0.bias", "features.2.weight",
    "features.2.bias"]``. ``k=None`` selects every conv layer.

    The rule:

    * **nn.Module** (any architecture): the order in which a forward pass *calls* the
      ``nn.Conv2d`` modules. It is found by running the model once in eval mode under
      ``torch.no_grad`` on a zero image of shape (1, 3, 32, 32), or (1, 3, 224, 224) when the
      small one fails, with forward hooks on every ``nn.Conv2d``; training modes are restored
      afterwards and no weight or statistic changes. A module called twice counts once, at its
      first call; conv modules the forward pass never calls come last, in registration order.
      ResNet downsample (1x1 shortcut) convs count where forward calls them. If neither probe
      runs (a model that does not take images), registration order is used, with a warning.
    * **State dict or .safetensors path** (no code to run): the registration order (the
      mapping's key order) of the 4-D tensors whose name ends in ``.weight``, each followed by
      ``<prefix>.bias`` when the state dict has it. Keys in plain lexicographic order (as
      ``safetensors.torch.load_file`` returns them) are put in natural order instead
      (``features.2`` before ``features.10``). For torchvision VGG and ResNet and this
      project's models both give the forward order.

    Raises ``ValueError`` when the model has fewer than ``k`` conv layers.
    """
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        modules = dict(model.named_modules())
        layer_names = conv_layers(model)
        selected = layer_names if k is None else layer_names[:k]
        names = [n for m in selected for n in _names_for(m, modules[m])]
    else:
        if isinstance(model_or_state_dict, (str, os.PathLike)):
            sd: Mapping[str, torch.Tensor] = read("state_dict", model_or_state_dict)
        elif isinstance(model_or_state_dict, Mapping):
            sd = model_or_state_dict
        else:
            raise TypeError(
                "shallow_params() takes an nn.Module, a state dict or a .safetensors path, "
                f"not {type(model_or_state_dict).__name__}"
            )
        keys = list(sd)
        if keys == sorted(keys):
            # Plain lexicographic order is what safetensors' load_file returns; it would put
            # "features.10" before "features.2". Use natural order instead.
            keys = sorted(keys, key=_natural_key)
        layer_names = [
            n.removesuffix(".weight")
            for n in keys
            if n.endswith(".weight") and isinstance(sd[n], torch.Tensor) and sd[n].dim() == 4
        ]
        selected = layer_names if k is None else layer_names[:k]
        names = []
        for prefix in selected:
            names.append(prefix + ".weight")
            if prefix + ".bias" in sd:
                names.append(prefix + ".bias")
    if k is not None and len(layer_names) < k:
        raise ValueError(
            f"the model has only {len(layer_names)} conv layers; asked for the first {k}"
        )
    return names
