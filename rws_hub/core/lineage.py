"""Lineage: a stable fingerprint of a model's weights.

A signature is only meaningful on models fine-tuned from the same pretrained weights θ_pre. The
signature records ``fingerprint(θ_pre)`` as its *lineage*, and a model folder records the same
fingerprint for its backbone, so patching can refuse a signature from another lineage.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rws_hub.core.formats import as_state_dict

__all__ = ["fingerprint", "digest_tensors"]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (CPU, contiguous, native byte order), without pickling."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def digest_tensors(tensors: Mapping[str, torch.Tensor], extra: bytes = b"") -> Any:
    """A sha256 object fed with ``extra`` then, for each name in sorted order, the name, dtype,
    shape and raw bytes of the tensor. Shared by :func:`fingerprint` and the artifact digest."""
    h = hashlib.sha256()
    h.update(extra)
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name!r} is not a tensor but {type(t).__name__}")
        head = f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0{t.numel()}\0"
        h.update(head.encode())
        h.update(_tensor_bytes(t))
    return h


def fingerprint(
    state_dict_or_module: Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike,
) -> str:
    """A stable id of a model's weights: ``"sha256:<first 16 hex digits>"``.

    The hash covers every state-dict entry (parameters and buffers), in sorted name order:
    its name, dtype, shape and bytes. The same weights give the same fingerprint whether they
    come from an ``nn.Module``, its state dict, or a ``.safetensors`` file written from it;
    changing any single value changes it.
    """
    try:
        sd = as_state_dict(state_dict_or_module)
    except TypeError:
        raise TypeError(
            "fingerprint() takes a state dict, an nn.Module or a .safetensors path, "
            f"not {type(state_dict_or_module).__name__}"
        ) from None
    return "sha256:" + digest_tensors(sd).hexdigest()[:16]
