"""Layer selection: which tensors a signature covers.

Robustness to corruptions lives mostly in the shallow layers, so a signature covers only the
first ``k`` convolution layers (the published default for VGG-16 is ``k = 7``).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rws_hub.core.formats import read

__all__ = ["shallow_params", "conv_layers", "Unit", "shallow_units", "unit_params", "BN_COVERS"]

BN_COVERS = ("none", "affine", "stats")
"""What a signature carries of a unit's batch norm: nothing, its scale and shift, or scale,
shift and running statistics (mean and variance)."""


def _trace(model: nn.Module, size: int) -> tuple[list[str], dict[str, str]]:
    """Conv names in forward-call order, and ``{conv: batch norm}`` for every conv whose output
    a batch-norm layer takes directly as its input (a *unit*)."""
    names: dict[nn.Module, str] = {}
    norms: dict[nn.Module, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module not in names:
            names[module] = name
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module not in norms:
            norms[module] = name
    order: list[str] = []
    seen: set[str] = set()
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> conv (tensor kept alive)
    pairs: dict[str, str] = {}

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        name = names[module]
        if isinstance(output, torch.Tensor):
            outputs[id(output)] = (name, output)
        if name not in seen:
            seen.add(name)
            order.append(name)

    def norm_hook(module: nn.Module, inputs: tuple[object, ...]) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor):
            found = outputs.get(id(inputs[0]))
            if found is not None and found[1] is inputs[0]:
                pairs.setdefault(found[0], norms[module])

    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in names]
    handles += [m.register_forward_pre_hook(norm_hook) for m in norms]
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
    return order, pairs


def conv_layers(model: nn.Module) -> list[str]:
    """Module names of the model's ``nn.Conv2d`` layers in forward order (see
    :func:`shallow_params` for the rule)."""
    return _traced(model)[0]


def _traced(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """:func:`_trace` with a (1, 3, 32, 32) probe, else (1, 3, 224, 224); when neither runs,
    registration order (no pairs) with a warning. A model without convs has none."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return [], {}
    errors = []
    for size in (32, 224):
        try:
            return _trace(model, size)
        except Exception as exc:  # the probe input may not fit this model; try the next size
            errors.append(f"{size}x{size}: {type(exc).__name__}: {exc}")
    warnings.warn(
        "could not trace a forward pass to order the conv layers ("
        + "; ".join(errors)
        + "); using registration order instead",
        stacklevel=4,
    )
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)], {}


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
    small-image VGG-16 and ``k=2``: ``["features.0.weight", "features.0.bias", "features.2.weight",
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
        sd = _state_dict_of(model_or_state_dict)
        keys = _ordered_keys(sd)
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


@dataclass(frozen=True)
class Unit:
    """A conv layer and the batch norm that takes its output directly (``norm`` None when
    there is none): what a signature on a batch-norm network covers per layer."""

    conv: str
    norm: str | None = None

    def tensors(self, available: Mapping[str, Any], bn: str = "stats") -> list[str]:
        """State-dict names this unit covers in ``available``: the conv's weight (and bias), then
        the norm's ``weight``/``bias`` (``bn`` "affine" or "stats") and ``running_mean``/
        ``running_var`` ("stats")."""
        names = [f"{self.conv}.{t}" for t in ("weight", "bias") if f"{self.conv}.{t}" in available]
        if self.norm is not None and bn != "none":
            kinds = ("weight", "bias") + (("running_mean", "running_var") if bn == "stats" else ())
            names += [f"{self.norm}.{t}" for t in kinds if f"{self.norm}.{t}" in available]
        return names


def _check_bn(bn: str) -> None:
    if bn not in BN_COVERS:
        raise ValueError(f"bn must be one of {', '.join(BN_COVERS)}, got {bn!r}")


def shallow_units(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
    k: int | None,
) -> list[Unit]:
    """The first ``k`` units (conv + its batch norm) in forward order (``None``: all).

    For a module the pairing is traced (a batch norm whose input is a conv's output). A state
    dict has no code to trace, so the pairing follows the names, as :func:`_state_dict_units`
    says; trace a module instead wherever one can be built (``rws info`` on a model folder
    does). Shortcut (downsample) convs count as units where forward calls them.
    """
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive int or None, got {k!r}")
    if isinstance(model_or_state_dict, nn.Module):
        order, pairs = _traced(model_or_state_dict)
        units = [Unit(c, pairs.get(c)) for c in order]
    else:
        units = _state_dict_units(_state_dict_of(model_or_state_dict))
    if k is not None and len(units) < k:
        raise ValueError(f"the model has only {len(units)} conv layers; asked for the first {k}")
    return units if k is None else units[:k]


def _state_dict_units(sd: Mapping[str, Any]) -> list[Unit]:
    """Units of a state dict: its convs (4-D ``.weight`` tensors) in registration order (natural
    order for a file's sorted keys, see :func:`_ordered_keys`), each paired with a batch norm
    (a prefix with ``running_mean``) of as many channels as the conv has outputs, found by name:

    1. the sibling whose last name part says ``bn`` where the conv's says ``conv``
       (``layer1.0.conv2`` -> ``layer1.0.bn2``, ``conv1`` -> ``bn1``: torchvision's ResNets and
       this project's);
    2. the next index in the same container (``features.0`` -> ``features.1``,
       ``downsample.0`` -> ``downsample.1``: ``nn.Sequential`` conv/BN pairs, VGG-BN,
       MobileNets, EfficientNets);
    3. only when the keys are in registration order (a module's own ``state_dict()``): the
       batch norm registered next in the same container, before the next conv (DenseNet's
       ``conv0`` -> ``norm0``, ``conv1`` -> ``norm2``).

    Each batch norm pairs with one conv at most. The names decide, not the data flow: a
    network that normalises *before* its convs (pre-activation) pairs wrongly by rule 1; give
    such a network as a module.
    """
    keys = _ordered_keys(sd)
    registration = not _file_order(sd)

    def is_conv(key: str) -> bool:
        t = sd[key]
        return key.endswith(".weight") and isinstance(t, torch.Tensor) and t.dim() == 4

    norms = {
        key.removesuffix(".running_mean"): sd[key].numel()
        for key in keys
        if key.endswith(".running_mean") and isinstance(sd[key], torch.Tensor)
    }
    taken: set[str] = set()

    def free(name: str, channels: int) -> bool:
        return norms.get(name) == channels and name not in taken

    units = []
    for i, key in enumerate(keys):
        if not is_conv(key):
            continue
        conv = key.removesuffix(".weight")
        channels = sd[key].shape[0]
        parent, _, last = conv.rpartition(".")
        prefix = f"{parent}." if parent else ""
        candidates = []
        if "conv" in last:
            candidates.append(prefix + last.replace("conv", "bn"))
        if last.isdigit():
            candidates.append(f"{prefix}{int(last) + 1}")
        norm = next((c for c in candidates if free(c, channels)), None)
        if norm is None and registration:
            for later in keys[i + 1 :]:
                if is_conv(later):
                    break  # the next conv: no norm in between
                name = later.removesuffix(".running_mean")
                same_parent = name.rpartition(".")[0] == parent
                if later.endswith(".running_mean") and same_parent and free(name, channels):
                    norm = name
                    break
        if norm is not None:
            taken.add(norm)
        units.append(Unit(conv, norm))
    return units


def unit_params(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
    k: int | None,
    *,
    bn: str = "stats",
) -> list[str]:
    """Tensor names of the first ``k`` units (see :func:`shallow_units`): per unit the conv's
    weight and bias, then what ``bn`` says of its batch norm (:data:`BN_COVERS`). On a network
    without batch norm this is :func:`shallow_params`."""
    _check_bn(bn)
    if isinstance(model_or_state_dict, nn.Module):
        available: Mapping[str, Any] = dict(model_or_state_dict.state_dict(keep_vars=True))
    else:
        available = _state_dict_of(model_or_state_dict)
    return [n for u in shallow_units(model_or_state_dict, k) for n in u.tensors(available, bn)]


def _state_dict_of(obj: Mapping[str, torch.Tensor] | str | os.PathLike) -> Mapping[str, Any]:
    if isinstance(obj, (str, os.PathLike)):
        return read("state_dict", obj)
    if isinstance(obj, Mapping):
        return obj
    raise TypeError(
        f"expected an nn.Module, a state dict or a .safetensors path, not {type(obj).__name__}"
    )


def _file_order(sd: Mapping[str, Any]) -> bool:
    """Whether the keys are in a file's order (safetensors writes names sorted within each
    dtype: "features.10" before "features.2", batch norms' int64 counters apart) rather than
    registration order."""
    groups: dict[Any, list[str]] = {}
    for k in sd:
        groups.setdefault(getattr(sd[k], "dtype", None), []).append(k)
    return all(g == sorted(g) for g in groups.values())


def _ordered_keys(sd: Mapping[str, Any]) -> list[str]:
    """The keys in registration order: a file's order (:func:`_file_order`) is not, so such
    keys are put in natural order instead."""
    return sorted(sd, key=_natural_key) if _file_order(sd) else list(sd)
