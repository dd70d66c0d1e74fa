"""File formats as plug-ins: ``core`` computes, ``rws_hub.io`` reads and writes.

Core functions accept file paths where users expect them (``fingerprint("model.safetensors")``,
``Signature.load(path)``, ``extract(pre_path, clean_path, robust_path)``) without importing the
I/O layer: :mod:`rws_hub.io.files` registers its readers and writers here when it is imported,
which ``import rws_hub`` always does (the same pattern as image-format plug-ins in Pillow).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from rws_hub.errors import RWSError

__all__ = ["register_format", "read", "write", "as_state_dict", "PathLike"]

PathLike = str | os.PathLike
Reader = Callable[..., Any]
Writer = Callable[..., None]

_READERS: dict[str, Reader] = {}
_WRITERS: dict[str, Writer] = {}


def register_format(kind: str, *, read: Reader, write: Writer | None = None) -> None:
    """Register how files of ``kind`` (``"state_dict"``, ``"signature"``) are read (and written).

    Registering a kind twice replaces nothing: it raises ``ValueError``.
    """
    if kind in _READERS:
        raise ValueError(f"a reader for {kind!r} files is already registered")
    _READERS[kind] = read
    if write is not None:
        _WRITERS[kind] = write


def _lookup(table: Mapping[str, Any], kind: str, what: str) -> Any:
    fn = table.get(kind)
    if fn is None:
        raise RWSError(f"no {what} for {kind!r} files is registered; import rws_hub.io.files")
    return fn


def read(kind: str, path: PathLike, **kwargs: Any) -> Any:
    """Read a file of ``kind`` with the registered reader."""
    return _lookup(_READERS, kind, "reader")(path, **kwargs)


def write(kind: str, obj: Any, path: PathLike, **kwargs: Any) -> None:
    """Write ``obj`` as a file of ``kind`` with the registered writer."""
    _lookup(_WRITERS, kind, "writer")(obj, path, **kwargs)


def as_state_dict(
    obj: nn.Module | Mapping[str, torch.Tensor] | PathLike,
) -> dict[str, torch.Tensor]:
    """A state dict from an ``nn.Module``, a mapping of tensors or a ``.safetensors`` path."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, (str, os.PathLike)):
        return read("state_dict", obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(
        f"expected an nn.Module, a state dict or a .safetensors path, not {type(obj).__name__}"
    )
