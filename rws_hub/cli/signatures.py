"""``rws extract``, ``rws quantize``, ``rws info``, ``rws patch``: signature files on disk."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from rws_hub.core.quantization import list_schemes

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_QUANT = {
    "none": None,
    "int8": (8, "linear"),
    "int4": (4, "linear"),
    "log8": (8, "log"),
    "log4": (4, "log"),
}

EXTRACT_EPILOG = """\
Each model is a .safetensors state dict: PRETRAINED is theta_pre, CLEAN is theta_pre fine-tuned
on clean data, ROBUST is theta_pre fine-tuned on one corruption. Per tensor of the first
--layers conv layers (weight and bias) the signature is
    v = tau_c - (<tau_c, tau_std> / <tau_std, tau_std>) * tau_std
with tau_c = ROBUST - PRETRAINED and tau_std = CLEAN - PRETRAINED.

examples:
  # the fog signature of a VGG-16, first 7 conv layers, stored as fp32
  rws extract --pretrained pre.safetensors --clean clean.safetensors \\
      --robust fog.safetensors --name fog -o signatures/fog.safetensors
  # 8-bit, one scale per output channel (about 4x smaller than fp32)
  rws extract --pretrained pre.safetensors --clean clean.safetensors \\
      --robust fog.safetensors --name fog --quantize int8 --granularity channel -o fog.safetensors
"""

QUANTIZE_EPILOG = """\
linear: uniform levels over [min, max] (max abs error = scale/2); log: sign + uniformly
quantized log2 magnitude (bounded relative error, exact zeros). int8 is about 1/4 of the fp32
size, int4 (two codes per byte) about 1/8. Quantizing a quantized file starts from its
dequantized values.

examples:
  rws quantize fog.safetensors -o fog-int8.safetensors --bits 8
  rws quantize fog.safetensors -o fog-int4.safetensors --bits 4 --granularity channel
  rws quantize fog.safetensors -o fog-log8.safetensors --bits 8 --scheme log
"""

INFO_EPILOG = """\
Reads only the file header (no tensors are loaded) and checks it.

examples:
  rws info signatures/fog.safetensors
  rws info signatures/fog.safetensors --model model.safetensors   # size vs the full model
  rws info signatures/fog.safetensors --json
"""

PATCH_EPILOG = """\
Writes MODEL + sum(alpha_i * v_i) as a new full-model .safetensors (every tensor of MODEL,
the covered ones patched). alpha defaults to each signature's default_alpha.

examples:
  rws patch --model clean.safetensors --signature fog.safetensors -o clean+fog.safetensors
  rws patch --model clean.safetensors --signature fog.safetensors:0.8 \\
      --signature gaussian_noise.safetensors:0.5 -o robust.safetensors
"""


# -- extract ------------------------------------------------------------------------------
def _extract(args: argparse.Namespace) -> int:
    from rws_hub.core.extraction import extract

    if not _NAME.match(args.name):
        raise ValueError(f"--name {args.name!r}: use a lower-case identifier such as 'fog'")
    provenance = {
        "pretrained_file": Path(args.pretrained).name,
        "clean_file": Path(args.clean).name,
        "robust_file": Path(args.robust).name,
    }
    sig = extract(
        args.pretrained,
        args.clean,
        args.robust,
        name=args.name,
        layers=args.layers,
        architecture=args.architecture,
        kind=args.kind,
        default_alpha=args.default_alpha,
        provenance=provenance,
    )
    q = _QUANT[args.quantize]
    if q is not None:
        sig = sig.quantize(bits=q[0], scheme=q[1], granularity=args.granularity)
    sig.save(args.output)
    print(f"wrote {args.output}: {sig!r}")
    return 0


# -- quantize -----------------------------------------------------------------------------
def _quantize_cmd(args: argparse.Namespace) -> int:
    from rws_hub.core.signature import Signature, format_bytes

    sig = Signature.load(args.input)
    before = sig.nbytes
    if args.rank is not None or args.energy is not None:
        bits = None if args.bits == 32 else args.bits
        out = sig.low_rank(rank=args.rank, energy=args.energy, bits=bits, scheme=args.scheme)
    elif args.bits == 32:
        out = sig.dequantize()
    else:
        out = sig.quantize(bits=args.bits, scheme=args.scheme, granularity=args.granularity)
    err = max(
        (
            float((out.tensors[n] - sig.tensors[n]).abs().max())
            for n in sig.names
            if sig.tensors[n].numel()
        ),
        default=0.0,
    )
    out.save(args.output)
    print(
        f"wrote {args.output}: {out!r}\n"
        f"payload {format_bytes(before)} -> {format_bytes(out.nbytes)} "
        f"({before / max(out.nbytes, 1):.2f}x smaller); max abs change {err:.3g}"
    )
    return 0


# -- info ---------------------------------------------------------------------------------
def _tensor_rows(head: dict[str, Any]) -> list[dict[str, Any]]:
    stored = head["stored"]
    rows = []
    for name, entry in head["metadata"]["tensors"].items():
        keys = [name] + [f"{name}::{p}" for p in ("U", "V")]
        keys = [k + s for k in keys for s in ("", "::scale", "::offset")]
        nbytes = sum(stored[k]["nbytes"] for k in keys if k in stored)
        storage = entry.get("storage", "?")
        if storage == "lowrank":
            storage = f"r{entry.get('rank')} {entry.get('factors')}"
        rows.append(
            {
                "name": name,
                "shape": list(entry.get("shape", [])),
                "stored": storage,
                "granularity": entry.get("granularity", ""),
                "bytes": nbytes,
            }
        )
    return rows


def _coverage(args: argparse.Namespace) -> int:
    """``rws info MODEL --layers K``: which tensors the first K units cover, and their share."""
    from rws_hub.core.layers import shallow_units
    from rws_hub.io.files import load_state_dict

    path = Path(args.file)
    weights = path / "model.safetensors" if path.is_dir() else path
    sd = load_state_dict(weights)
    architecture, recommended, model = _folder_model(path, sd)
    units = shallow_units(model if model is not None else sd, None)
    k = args.layers if args.layers is not None else len(units)
    if not 1 <= k <= len(units):
        raise ValueError(f"--layers must be 1..{len(units)} for this model, got {k}")
    params = {n: t for n, t in sd.items() if t.is_floating_point()}
    total = sum(t.numel() for t in params.values())
    rows = []
    for i, u in enumerate(units[:k], 1):
        names = u.tensors(sd, args.bn)
        n = sum(sd[x].numel() for x in names)
        rows.append({"unit": i, "conv": u.conv, "norm": u.norm, "tensors": names, "values": n})
    covered = sum(r["values"] for r in rows)
    out = {
        "model": str(weights),
        "architecture": architecture,
        "recommended_units": recommended,
        "units_total": len(units),
        "layers": k,
        "bn": args.bn,
        "units": rows,
        "values": covered,
        "share_of_parameters": covered / total if total else 0.0,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"model {weights}: {len(units)} units (a conv and the batch norm it feeds, if any)")
    for r in rows:
        norm = f" + {r['norm']}" if r["norm"] else ""
        print(
            f"  {r['unit']:>3}. {r['conv']}{norm}: {r['values']:,} values ({len(r['tensors'])} tensors)"
        )
    print(
        f"the first {k} units (bn={args.bn}) cover {covered:,} of {total:,} values "
        f"({100 * out['share_of_parameters']:.1f}% of the parameters and statistics)"
    )
    if recommended is not None:
        print(f"recommended K for {architecture}: {recommended} (measured by a K sweep)")
    elif architecture is not None:
        print(f"no measured K for {architecture}: the published default for VGG-16 is 7")
    return 0


def _folder_model(path: Path, sd: dict[str, Any]) -> tuple[str | None, int | None, Any]:
    """For a model folder (``path`` is the folder or its ``model.safetensors``): its
    architecture, that architecture's recommended K, and its model built from the config with
    ``sd`` loaded, so the units are traced in forward order (None when it does not build: the
    names' pairing on the state dict still answers). (None, None, None) without a config."""
    from rws_hub.archs import model_from_config, recommended_units
    from rws_hub.io.folder import ModelFolder

    folder = path if path.is_dir() else path.parent if path.name == "model.safetensors" else None
    if folder is None or not (folder / "config.json").is_file():
        return None, None, None
    config = ModelFolder.read_config(folder)
    architecture = config["architecture"]
    try:
        model = model_from_config(config)
        model.load_state_dict(sd)
    except (ValueError, RuntimeError, KeyError):
        model = None
    return architecture, recommended_units(architecture), model


def _info(args: argparse.Namespace) -> int:
    from rws_hub.core.signature import format_bytes
    from rws_hub.io.files import read_header, read_raw_header

    if args.layers is not None or Path(args.file).is_dir():
        return _coverage(args)
    head = read_header(args.file)
    meta = head["metadata"]
    rows = _tensor_rows(head)
    numel = sum(math.prod(r["shape"]) for r in rows)
    payload = head["payload_bytes"]
    full: dict[str, Any] | None = None
    if args.model:
        header, _ = read_raw_header(args.model)
        full_bytes = sum(
            e["data_offsets"][1] - e["data_offsets"][0]
            for k, e in header.items()
            if k != "__metadata__"
        )
        full = {
            "file": str(args.model),
            "payload_bytes": full_bytes,
            "ratio": full_bytes / payload if payload else math.inf,
        }
    if args.json:
        out = {
            "file": str(args.file),
            "file_size": head["file_size"],
            "payload_bytes": payload,
            "numel": numel,
            "metadata": {k: v for k, v in meta.items() if k != "tensors"},
            "tensors": rows,
        }
        if full:
            out["full_model"] = full
        print(json.dumps(out, indent=2))
        return 0

    q = meta["quantization"]
    qtext = "none (fp32)" if not q else f"int{q['bits']} {q['scheme']}, per {q['granularity']}"
    lines = [
        f"signature     {meta['name']}",
        f"file          {args.file} ({head['file_size']:,} bytes)",
        f"format        {meta['format']} v{meta['format_version']}",
        f"kind          {meta['kind']}",
        f"architecture  {meta['architecture'] or '-'}",
        f"lineage       {meta['lineage'] or '-'}",
        f"layers (K)    {meta['layers'] if meta['layers'] is not None else '-'}",
        f"default alpha {meta['default_alpha']:g}",
        f"quantization  {qtext}",
        f"provenance    {json.dumps(meta['provenance'], sort_keys=True)}",
        "",
    ]
    width = max([len("tensor")] + [len(r["name"]) for r in rows])
    lines.append(f"{'tensor':<{width}}  {'shape':<16} {'stored':<12} {'bytes':>12}")
    for r in rows:
        shape = "x".join(str(d) for d in r["shape"]) or "scalar"
        stored = r["stored"] + ("/ch" if r["granularity"] == "channel" else "")
        lines.append(f"{r['name']:<{width}}  {shape:<16} {stored:<12} {r['bytes']:>12,}")
    lines.append("")
    lines.append(
        f"total: {len(rows)} tensors, {numel:,} values, payload {payload:,} bytes "
        f"({format_bytes(payload)}; fp32 would be {format_bytes(4 * numel)})"
    )
    if full:
        lines.append(
            f"full model {args.model}: payload {full['payload_bytes']:,} bytes "
            f"({format_bytes(full['payload_bytes'])}); the signature is {full['ratio']:.1f}x smaller "
            f"({100 / full['ratio'] if full['ratio'] else 0:.2f}% of it)"
        )
    print("\n".join(lines))
    return 0


# -- patch --------------------------------------------------------------------------------
def _split_alpha(spec: str) -> tuple[str, float | None]:
    """``path[:alpha]`` -> (path, alpha or None)."""
    if ":" in spec:
        path, _, tail = spec.rpartition(":")
        try:
            return path, float(tail)
        except ValueError:
            pass
    return spec, None


def _patch(args: argparse.Namespace) -> int:
    from rws_hub.core.patching import patched_tensors
    from rws_hub.core.signature import Signature
    from rws_hub.io.files import load_state_dict, read_raw_header, save_state_dict

    mix: dict[Any, float] = {}
    applied = []
    for spec in args.signature:
        path, alpha = _split_alpha(spec)
        sig = Signature.load(path)
        a = sig.default_alpha if alpha is None else alpha
        mix[sig] = a
        applied.append(
            {"name": sig.name, "alpha": a, "file": Path(path).name, "lineage": sig.lineage}
        )
    header, _ = read_raw_header(args.model)
    base = load_state_dict(args.model)
    meta = dict(header.get("__metadata__") or {})
    lineage = meta.get("rws_lineage")
    patched = patched_tensors(base, mix, lineage=lineage, force=args.force)
    out = {k: patched.get(k, v) for k, v in base.items()}
    meta.pop("rws_tensor_order", None)
    meta["rws_patched_with"] = json.dumps(applied)
    save_state_dict(out, args.output, metadata=meta)
    desc = ", ".join(f"{a['name']}:{a['alpha']:g}" for a in applied)
    print(f"wrote {args.output}: {len(patched)} of {len(base)} tensors patched with {desc}")
    return 0


# -- registration -------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "extract",
        help="extract a signature from pretrained/clean/robust checkpoints",
        description="Extract the Robust Weight Signature of one corruption.",
        epilog=EXTRACT_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "--pretrained", required=True, metavar="PRETRAINED", help="theta_pre (.safetensors)"
    )
    p.add_argument("--clean", required=True, metavar="CLEAN", help="clean fine-tune (.safetensors)")
    p.add_argument(
        "--robust", required=True, metavar="ROBUST", help="robust fine-tune (.safetensors)"
    )
    p.add_argument(
        "--name", required=True, help="signature name, a lower-case identifier (e.g. fog)"
    )
    p.add_argument(
        "--layers", type=int, default=7, metavar="K", help="first K conv layers (default 7)"
    )
    p.add_argument(
        "--quantize", choices=list(_QUANT), default="none", help="storage (default none = fp32)"
    )
    p.add_argument(
        "--granularity",
        choices=["tensor", "channel"],
        default="tensor",
        help="scales per tensor or per output channel (default tensor)",
    )
    p.add_argument(
        "--architecture", help="architecture id to record (a name of rws_hub.archs.list_models())"
    )
    p.add_argument("--kind", default="corruption", help="signature kind (default corruption)")
    p.add_argument(
        "--default-alpha", type=float, default=1.0, help="alpha used when none is given (default 1)"
    )
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.set_defaults(func=_extract)

    p = subparsers.add_parser(
        "quantize",
        help="quantize a signature file to int8 / int4",
        description="Quantize a signature file (linear or log, per tensor or per output channel).",
        epilog=QUANTIZE_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("input", help="signature .safetensors")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument(
        "--bits",
        type=int,
        choices=[8, 4, 32],
        default=8,
        help="8 (int8), 4 (packed int4) or 32 (fp32: dequantize, or fp32 factors); default 8",
    )
    p.add_argument(
        "--scheme",
        choices=list_schemes(),
        default="linear",
        help="a registered quantization scheme; default linear",
    )
    low = p.add_mutually_exclusive_group()
    low.add_argument(
        "--rank", type=int, help="low-rank: truncate each conv delta to this rank (SVD)"
    )
    low.add_argument(
        "--energy",
        type=float,
        help="low-rank: per tensor, the smallest rank keeping this share of the squared "
        "singular values (e.g. 0.9)",
    )
    p.add_argument(
        "--granularity", choices=["tensor", "channel"], default="tensor", help="default tensor"
    )
    p.set_defaults(func=_quantize_cmd)

    p = subparsers.add_parser(
        "info",
        help="show a signature file's metadata, tensors and size",
        description="Show a signature file's metadata, a tensor table and its size.",
        epilog=INFO_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "file",
        help="signature .safetensors, or a model (folder or state-dict .safetensors) to show "
        "which tensors the first K units cover",
    )
    p.add_argument(
        "--model", metavar="FULL_MODEL", help="full-model .safetensors to compare sizes with"
    )
    p.add_argument(
        "--layers", type=int, metavar="K", help="for a model: the first K units (default all)"
    )
    p.add_argument(
        "--bn",
        choices=["stats", "affine", "none"],
        default="stats",
        help="for a model: what a unit's batch norm contributes (default stats)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_info)

    p = subparsers.add_parser(
        "patch",
        help="write a full model with signatures added",
        description="Write MODEL + sum(alpha * signature) as a full-model .safetensors.",
        epilog=PATCH_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "--model", required=True, metavar="MODEL", help="full-model .safetensors (state dict)"
    )
    p.add_argument(
        "--signature",
        required=True,
        action="append",
        metavar="FILE[:ALPHA]",
        help="signature file, optionally with its alpha; repeat to compose",
    )
    p.add_argument(
        "--force", action="store_true", help="patch even if the lineage recorded in MODEL differs"
    )
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.set_defaults(func=_patch)
