"""Extraction: the Robust Weight Signature of a corruption from three checkpoints.

Per selected tensor (weight and bias separately, flattened):
``τ_c = θ_c − θ_pre``, ``τ_std = θ_std − θ_pre`` and
``v = τ_c − (⟨τ_c, τ_std⟩ / ⟨τ_std, τ_std⟩) · τ_std`` — the robust task vector with its
component along the clean task vector removed (``v = τ_c`` when ``τ_std = 0``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rws_hub.core.formats import as_state_dict
from rws_hub.core.layers import BN_COVERS, shallow_units
from rws_hub.core.lineage import fingerprint
from rws_hub.core.signature import Signature
from rws_hub.errors import SignatureMismatchError

__all__ = ["extract", "project"]

ModelLike = nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike


def project(tau_c: torch.Tensor, tau_std: torch.Tensor) -> torch.Tensor:
    """``τ_c`` minus its projection on ``τ_std`` (computed in float64, returned in float64).
    Returns ``τ_c`` unchanged when ``τ_std`` is all zeros."""
    c = tau_c.detach().to(torch.float64)
    s = tau_std.detach().to(device=c.device, dtype=torch.float64)
    if c.shape != s.shape:
        raise SignatureMismatchError(f"shapes differ: {tuple(c.shape)} vs {tuple(s.shape)}")
    ss = torch.dot(s.reshape(-1), s.reshape(-1))
    if ss == 0:
        return c.clone()
    return c - (torch.dot(c.reshape(-1), s.reshape(-1)) / ss) * s


def _architecture(explicit: str | None, models: Sequence[ModelLike]) -> str | None:
    if explicit is not None:
        return explicit
    for m in models:
        if isinstance(m, nn.Module):
            return getattr(m, "rws_architecture", None) or type(m).__name__
    return None


def extract(
    pretrained: ModelLike,
    clean: ModelLike,
    robust: ModelLike,
    *,
    name: str,
    layers: int = 7,
    params: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
    architecture: str | None = None,
    kind: str = "corruption",
    default_alpha: float = 1.0,
    bn: str = "stats",
    stats: str = "project",
) -> Signature:
    """Extract the signature of one corruption.

    Args:
        pretrained: θ_pre, the common starting point. Each model argument is an
            ``nn.Module``, a state dict or a ``.safetensors`` path.
        clean: θ_std, θ_pre fine-tuned on clean data.
        robust: θ_c, θ_pre fine-tuned on data with corruption c.
        name: the signature's name (a lower-case identifier such as ``"fog"``).
        layers: K, how many of the shallowest units to cover: a conv (weight and bias) and,
            on batch-norm networks, the batch norm it feeds; chosen by
            :func:`rws_hub.core.layers.unit_params` on ``clean``. Without batch norm these are
            the first K conv layers (:func:`rws_hub.shallow_params`).
        bn: what a unit's batch norm contributes (:data:`~rws_hub.core.layers.BN_COVERS`):
            ``"stats"`` (default: scale, shift and running statistics), ``"affine"`` (scale
            and shift) or ``"none"`` (the conv only).
        stats: how running statistics become deltas: ``"project"`` (like every other tensor:
            τ_c without its component along τ_std) or ``"swap"`` (θ_c − θ_std, so α = 1
            gives the robust model's statistics on the clean backbone).
        params: explicit tensor names instead (then ``layers`` is not recorded).
        provenance: extra JSON-able facts to record (merged over the defaults).
        architecture: recorded architecture; default the model's ``rws_architecture``
            attribute, else its class name (None for state dicts).

    The signature's ``lineage`` is ``fingerprint(pretrained)``; tensors are computed in
    float64 and stored as fp32.
    """
    if bn not in BN_COVERS:
        raise ValueError(f"bn must be one of {', '.join(BN_COVERS)}, got {bn!r}")
    if stats not in ("project", "swap"):
        raise ValueError(f"stats must be 'project' or 'swap', got {stats!r}")
    sd_pre, sd_std, sd_c = (as_state_dict(m) for m in (pretrained, clean, robust))
    units = shallow_units(clean, layers) if params is None else []
    names = (
        list(params) if params is not None else [n for u in units for n in u.tensors(sd_std, bn)]
    )
    if not names:
        raise SignatureMismatchError("no tensors selected: the model has no conv layers")
    tensors: dict[str, torch.Tensor] = {}
    for n in names:
        missing = [
            label
            for label, sd in (("pretrained", sd_pre), ("clean", sd_std), ("robust", sd_c))
            if n not in sd
        ]
        if missing:
            raise SignatureMismatchError(
                f"tensor {n!r} is missing from the {', '.join(missing)} model"
            )
        shapes = {tuple(sd[n].shape) for sd in (sd_pre, sd_std, sd_c)}
        if len(shapes) != 1:
            raise SignatureMismatchError(
                f"tensor {n!r} has different shapes across the models: {sorted(shapes)}"
            )
        pre = sd_pre[n].detach().to("cpu", torch.float64)
        tau_std = sd_std[n].detach().to("cpu", torch.float64) - pre
        tau_c = sd_c[n].detach().to("cpu", torch.float64) - pre
        if stats == "swap" and n.endswith((".running_mean", ".running_var")):
            tensors[n] = (tau_c - tau_std).to(torch.float32)  # θ_c − θ_std
        else:
            tensors[n] = project(tau_c, tau_std).to(torch.float32)
    prov: dict[str, Any] = {
        "method": "rws-projection",
        "clean": fingerprint(sd_std),
        "robust": fingerprint(sd_c),
    }
    if any(u.norm for u in units):
        prov["bn"] = {"covers": bn, "stats": stats}
    prov.update(provenance or {})
    return Signature(
        name,
        tensors,
        kind=kind,
        architecture=_architecture(architecture, (clean, pretrained, robust)),
        lineage=fingerprint(sd_pre),
        layers=layers if params is None else None,
        default_alpha=default_alpha,
        provenance=prov,
    )
