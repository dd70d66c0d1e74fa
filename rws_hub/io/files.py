"""The signature file: one ``.safetensors`` per signature, metadata in its header.

Format (version 1) is described in ``docs/format.md``. Reading never unpickles: files are
parsed with ``safetensors`` only, after checking that they are safetensors at all, complete,
ours, of a known version, self-consistent and untampered (a sha256 digest over metadata and
payload). Every refusal raises :class:`~rws_hub.errors.ArtifactError` saying which and why.

Also here: :func:`load_state_dict` / :func:`save_state_dict` for full-model safetensors files
(same pickle/truncation checks, no format marker required).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rws_hub.core.formats import as_state_dict, register_format
from rws_hub.core.lineage import digest_tensors
from rws_hub.core.lowrank import LowRank
from rws_hub.core.quantization import QuantizedTensor, check_options
from rws_hub.core.signature import Signature
from rws_hub.errors import ArtifactError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "save_signature",
    "load_signature",
    "read_header",
    "read_raw_header",
    "load_state_dict",
    "save_state_dict",
    "as_state_dict",
]

FORMAT = "rws-signature"
FORMAT_VERSION = "1"
SEP = "::"  # "<tensor>::scale", "<tensor>::offset"
_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


# -- raw safetensors checks ---------------------------------------------------------------
def read_raw_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """Parse and check any safetensors file's header without loading tensors (pickles, zips,
    truncation and inconsistent offsets are refused with ``ArtifactError``): (header, size)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such file")
    if not p.is_file():
        raise ArtifactError(f"{p}: not a regular file")
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(9)
        if head[:4] == b"PK\x03\x04":
            raise ArtifactError(
                f"{p}: this is a zip archive (e.g. a torch.save checkpoint, which holds a "
                "pickle), not safetensors; rws-hub never unpickles"
            )
        # A safetensors file is <u64 header length><JSON header starting with "{">...
        looks_safetensors = len(head) == 9 and head[8:9] == b"{"
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
        if not looks_safetensors or n > _MAX_HEADER:
            if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
                raise ArtifactError(
                    f"{p}: this is a pickle file (e.g. torch.save output), not safetensors; "
                    "rws-hub never unpickles, convert it to safetensors first"
                )
            if len(head) < 9:
                raise ArtifactError(f"{p}: not a safetensors file (only {size} bytes; truncated?)")
            raise ArtifactError(
                f"{p}: not a safetensors file (no JSON header after the length field)"
            )
        if 8 + n > size:
            raise ArtifactError(
                f"{p}: truncated: the header says it is {n} bytes but the file has only "
                f"{size - 8} bytes after the length field"
            )
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{p}: not a safetensors file (header is not JSON: {exc})") from None
    except RecursionError:
        raise ArtifactError(f"{p}: header nested too deeply") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{p}: not a safetensors file (header is not a JSON object)")
    data_size = size - 8 - n
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in entry["data_offsets"])
            numel = math.prod(int(d) for d in entry["shape"])
            width = _DTYPE_BYTES.get(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"{p}: malformed header entry for tensor {key!r}") from None
        if width is not None and stop - start != numel * width:
            raise ArtifactError(
                f"{p}: tampered or corrupt: tensor {key!r} has {stop - start} bytes for "
                f"{numel} values of {entry['dtype']}"
            )
        end = max(end, stop)
    if end > data_size:
        raise ArtifactError(
            f"{p}: truncated: tensors need {end} bytes of data but the file has only {data_size}"
        )
    return header, size


def _safe_load(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as exc:
        raise ArtifactError(f"{path}: unreadable safetensors file: {exc}") from None


_ORDER_KEY = "rws_tensor_order"


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_state_dict(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Load a full-model state dict from a ``.safetensors`` file (checked; never unpickles).

    Safetensors does not keep insertion order, so the keys come back in the model's
    registration order when the file records it (files written by :func:`save_state_dict`),
    else in natural order (``features.2`` before ``features.10``), which is the registration
    order of torchvision VGG/ResNet and this project's models.
    """
    header, _ = read_raw_header(path)
    tensors = _safe_load(path, device)
    meta = header.get("__metadata__") or {}
    order: Any = None
    if _ORDER_KEY in meta:
        try:
            order = json.loads(meta[_ORDER_KEY])
        except (json.JSONDecodeError, RecursionError):
            order = None
    if not isinstance(order, list) or sorted(order) != sorted(tensors):
        order = sorted(tensors, key=_natural_key)
    return {k: tensors[k] for k in order}


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a state dict as ``.safetensors`` (atomically), recording its key order in the
    metadata so :func:`load_state_dict` gives the same order back."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = dict(metadata or {})
    meta[_ORDER_KEY] = json.dumps(list(tensors))
    _atomic_save(tensors, path, meta)


def _atomic_save(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- signature files ----------------------------------------------------------------------
def _digest(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    meta = {k: v for k, v in metadata.items() if k != "digest"}
    canon = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + digest_tensors(tensors, extra=canon).hexdigest()


def _encode(sig: Signature) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata a signature is stored as."""
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    codes = sig.codes or {}
    factors = sig.factors or {}
    for name, t in sig.tensors.items():
        if SEP in name:
            raise ArtifactError(f"tensor name {name!r} may not contain {SEP!r}")
        if not torch.isfinite(t).all():
            raise ArtifactError(f"signature {sig.name!r}: tensor {name!r} holds NaN or inf")
        entry: dict[str, Any] = {"shape": list(t.shape)}
        if name in factors:
            f = factors[name]
            entry.update(storage="lowrank", rank=f.rank)
            for part, value in (("U", f.u), ("V", f.v)):
                key = name + SEP + part
                if isinstance(value, QuantizedTensor):
                    _put_codes(tensors, key, value)
                    entry.update(factors=value.storage, scheme=value.scheme)
                    entry["granularity"] = value.granularity
                else:
                    tensors[key] = value.detach().to("cpu", torch.float32).contiguous()
                    entry["factors"] = "float32"
        elif name in codes:
            q = codes[name]
            _put_codes(tensors, name, q)
            entry.update(storage=q.storage, scheme=q.scheme, granularity=q.granularity)
        else:
            tensors[name] = t.detach().to("cpu", torch.float32).contiguous()
            entry["storage"] = "float32"
        info[name] = entry
    meta: dict[str, str] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": sig.name,
        "kind": sig.kind,
        "default_alpha": repr(float(sig.default_alpha)),
        "quantization": json.dumps(sig.quantization),
        "provenance": json.dumps(sig.provenance, sort_keys=True),
        "tensors": json.dumps(info),
    }
    if sig.architecture is not None:
        meta["architecture"] = sig.architecture
    if sig.lineage is not None:
        meta["lineage"] = sig.lineage
    if sig.layers is not None:
        meta["layers"] = str(int(sig.layers))
    meta["digest"] = _digest(meta, tensors)
    return tensors, meta


def _put_codes(tensors: dict[str, torch.Tensor], key: str, q: QuantizedTensor) -> None:
    tensors[key] = q.codes.to("cpu").contiguous()
    tensors[key + SEP + "scale"] = q.scale.to("cpu", torch.float32).contiguous()
    tensors[key + SEP + "offset"] = q.offset.to("cpu", torch.float32).contiguous()


def save_signature(sig: Signature, path: str | os.PathLike) -> None:
    """Write ``sig`` to ``path`` (atomically: a crash never leaves a half-written file)."""
    try:
        json.dumps(sig.provenance)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"signature {sig.name!r}: provenance is not JSON-able: {exc}") from None
    tensors, meta = _encode(sig)
    _atomic_save(tensors, path, meta)


def _decode_metadata(p: str | os.PathLike, meta: Mapping[str, str]) -> dict[str, Any]:
    def need(key: str) -> str:
        if key not in meta:
            raise ArtifactError(f"{p}: metadata field {key!r} is missing")
        return meta[key]

    def js(key: str) -> Any:
        try:
            return json.loads(need(key))
        except (json.JSONDecodeError, RecursionError):
            raise ArtifactError(f"{p}: metadata field {key!r} is not valid JSON") from None

    out: dict[str, Any] = {
        "format": meta.get("format"),
        "format_version": meta.get("format_version"),
        "name": need("name"),
        "kind": meta.get("kind", "corruption"),
        "architecture": meta.get("architecture"),
        "lineage": meta.get("lineage"),
        "digest": meta.get("digest"),
    }
    try:
        out["layers"] = int(meta["layers"]) if "layers" in meta else None
        out["default_alpha"] = float(meta.get("default_alpha", "1.0"))
    except ValueError:
        raise ArtifactError(f"{p}: metadata 'layers' or 'default_alpha' is not a number") from None
    if not math.isfinite(out["default_alpha"]):
        raise ArtifactError(f"{p}: default_alpha is not finite")
    out["quantization"] = js("quantization") if "quantization" in meta else None
    out["provenance"] = js("provenance") if "provenance" in meta else {}
    out["tensors"] = js("tensors")
    if not isinstance(out["tensors"], dict):
        raise ArtifactError(f"{p}: metadata 'tensors' must be a JSON object")
    if out["quantization"] is not None:
        q = out["quantization"]
        try:
            check_options(q["bits"], q["scheme"], q["granularity"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{p}: unsupported quantization {q!r}: {exc}") from None
    return out


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a signature file's header without loading its tensors.

    Returns ``{"metadata": {...decoded: name, kind, architecture, lineage, layers (int),
    default_alpha (float), quantization (dict|None), provenance (dict), tensors (per-tensor
    storage info), format, format_version, digest}, "stored": {key: {"dtype", "shape",
    "nbytes"}}, "payload_bytes": int, "file_size": int}``.
    """
    header, size = read_raw_header(path)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = (
            f"format marker {meta.get('format')!r}"
            if isinstance(meta, dict) and "format" in meta
            else "no format marker"
        )
        raise ArtifactError(
            f"{path}: a safetensors file but not an rws signature ({found}, expected "
            f"{FORMAT!r}); is it a full model state dict? Use `rws extract` to make a signature"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: unsupported rws signature format version {meta.get('format_version')!r} "
            f"(this rws-hub reads version {FORMAT_VERSION})"
        )
    decoded = _decode_metadata(path, meta)
    stored: dict[str, dict[str, Any]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, stop = entry["data_offsets"]
        stored[key] = {
            "dtype": entry["dtype"],
            "shape": list(entry["shape"]),
            "nbytes": stop - start,
        }
    return {
        "metadata": decoded,
        "stored": stored,
        "payload_bytes": sum(e["nbytes"] for e in stored.values()),
        "file_size": size,
    }


def _decode_tensor(
    p: str | os.PathLike, name: str, entry: Mapping[str, Any], raw: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, QuantizedTensor | None]:
    try:
        shape = tuple(int(d) for d in entry["shape"])
        storage = entry["storage"]
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{p}: metadata for tensor {name!r} lacks shape/storage") from None
    if name not in raw:
        raise ArtifactError(f"{p}: tensor {name!r} is listed in the metadata but missing")
    data = raw[name]
    if storage == "float32":
        if data.dtype != torch.float32 or tuple(data.shape) != shape:
            raise ArtifactError(
                f"{p}: tensor {name!r} should be float32 {list(shape)}, found {data.dtype} "
                f"{list(data.shape)}"
            )
        if not torch.isfinite(data).all():
            raise ArtifactError(f"{p}: tensor {name!r} holds NaN or inf")
        return data, None
    if storage not in ("int8", "int4"):
        raise ArtifactError(f"{p}: tensor {name!r} has unsupported storage {storage!r}")
    bits = 8 if storage == "int8" else 4
    scheme, gran = entry.get("scheme"), entry.get("granularity")
    try:
        check_options(bits, scheme, gran)
    except ValueError as exc:
        raise ArtifactError(f"{p}: tensor {name!r}: {exc}") from None
    numel = math.prod(shape)
    want_dtype, want_shape = (
        (torch.int8, shape) if bits == 8 else (torch.uint8, ((numel + 1) // 2,))
    )
    if data.dtype != want_dtype or tuple(data.shape) != want_shape:
        raise ArtifactError(
            f"{p}: tensor {name!r} stored as {storage} should be {want_dtype} {list(want_shape)}, "
            f"found {data.dtype} {list(data.shape)}"
        )
    groups = shape[0] if gran == "channel" else 1
    parts = {}
    for what in ("scale", "offset"):
        key = name + SEP + what
        if key not in raw:
            raise ArtifactError(
                f"{p}: tensor {name!r} is stored as {storage} but its {what} {key!r} is missing"
            )
        t = raw[key]
        if t.dtype != torch.float32 or t.numel() != groups:
            raise ArtifactError(
                f"{p}: {key!r} should hold {groups} float32 value(s), found {t.dtype} {list(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise ArtifactError(f"{p}: {key!r} holds NaN or inf")
        parts[what] = t.reshape(groups)
    q = QuantizedTensor(data, parts["scale"], parts["offset"], shape, bits, scheme, gran)
    values = q.dequantize()
    if not torch.isfinite(values).all():
        raise ArtifactError(f"{p}: tensor {name!r} dequantizes to NaN or inf")
    return values, q


def _decode_lowrank(
    p: str | os.PathLike, name: str, entry: Mapping[str, Any], raw: Mapping[str, torch.Tensor]
) -> LowRank:
    """The factors of a ``"lowrank"`` tensor: ``<name>::U`` (out, rank) and ``<name>::V``
    (rank, in·kh·kw), each float32 or codes, checked like any stored tensor."""
    try:
        shape = tuple(int(d) for d in entry["shape"])
        rank = int(entry["rank"])
        storage = str(entry["factors"])
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(
            f"{p}: metadata for low-rank tensor {name!r} lacks shape/rank/factors"
        ) from None
    if len(shape) < 2 or rank < 1:
        raise ArtifactError(f"{p}: low-rank tensor {name!r} has shape {list(shape)}, rank {rank}")
    parts = {}
    for part, part_shape in (("U", (shape[0], rank)), ("V", (rank, math.prod(shape[1:])))):
        sub = {k: entry[k] for k in ("scheme", "granularity") if k in entry}
        sub.update(shape=list(part_shape), storage=storage)
        values, q = _decode_tensor(p, name + SEP + part, sub, raw)
        parts[part] = q if q is not None else values
    try:
        return LowRank(parts["U"], parts["V"], shape)
    except ValueError as exc:
        raise ArtifactError(f"{p}: tensor {name!r}: {exc}") from None


def load_signature(path: str | os.PathLike, device: str | torch.device = "cpu") -> Signature:
    """Read, check and dequantize a signature file (see :func:`read_header` for the checks)."""
    head = read_header(path)
    meta = head["metadata"]
    raw = _safe_load(path)
    info: dict[str, Any] = meta["tensors"]
    expected: set[str] = set()
    for name, entry in info.items():
        storage = entry.get("storage") if isinstance(entry, dict) else None
        keys = [name + SEP + "U", name + SEP + "V"] if storage == "lowrank" else [name]
        quantized = (entry.get("factors") if storage == "lowrank" else storage) in ("int8", "int4")
        for key in keys:
            expected.add(key)
            if quantized:
                expected |= {key + SEP + "scale", key + SEP + "offset"}
    extra = sorted(set(raw) - expected)
    if extra:
        raise ArtifactError(f"{path}: tampered: unexpected tensor(s) {', '.join(extra)}")
    tensors: dict[str, torch.Tensor] = {}
    codes: dict[str, QuantizedTensor] = {}
    factors: dict[str, LowRank] = {}
    for name, entry in info.items():
        if not isinstance(entry, dict):
            raise ArtifactError(f"{path}: metadata for tensor {name!r} is not an object")
        if entry.get("storage") == "lowrank":
            factors[name] = _decode_lowrank(path, name, entry, raw)
            tensors[name] = factors[name].materialize()
            if not torch.isfinite(tensors[name]).all():
                raise ArtifactError(f"{path}: tensor {name!r} multiplies out to NaN or inf")
            continue
        values, q = _decode_tensor(path, name, entry, raw)
        tensors[name] = values
        if q is not None:
            codes[name] = q
    if codes and len(codes) != len(tensors) - len(factors):
        raise ArtifactError(f"{path}: mixes quantized and float tensors")
    if meta["digest"] is None:
        raise ArtifactError(f"{path}: the digest is missing (not written by rws-hub?)")
    header_meta = _raw_metadata(path)
    if _digest(header_meta, raw) != meta["digest"]:
        raise ArtifactError(
            f"{path}: tampered or corrupted: the sha256 digest of metadata and tensors does "
            "not match the one recorded when it was saved"
        )
    sig = Signature(
        meta["name"],
        tensors,
        kind=meta["kind"],
        architecture=meta["architecture"],
        lineage=meta["lineage"],
        layers=meta["layers"],
        default_alpha=meta["default_alpha"],
        quantization=meta["quantization"]
        if codes or any(f.is_quantized for f in factors.values())
        else None,
        provenance=meta["provenance"],
        codes=codes or None,
        factors=factors or None,
    )
    return sig if str(device) == "cpu" else sig.to(device)


def _raw_metadata(path: str | os.PathLike) -> dict[str, str]:
    header, _ = read_raw_header(path)
    return dict(header.get("__metadata__") or {})


register_format("state_dict", read=load_state_dict, write=save_state_dict)
register_format("signature", read=load_signature, write=save_signature)
