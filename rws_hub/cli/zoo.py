"""``rws zoo build``: the whole pipeline for a zoo entry, step by step, resumable."""

from __future__ import annotations

import argparse
from dataclasses import fields

from rws_hub.zoo.entries import DEFAULT_ENTRY, ENTRIES
from rws_hub.zoo.pipeline import STEPS, ZooBuilder, ZooSpec

EPILOG = f"""The embedded default {DEFAULT_ENTRY.folder} is rebuilt with:
  rws zoo build --jobs 2
Another registered entry ({", ".join(e for e in ENTRIES if e != DEFAULT_ENTRY.name) or "none"}) with its recipe:
  rws zoo build --name ENTRY
Any option overrides the entry's recipe; an unregistered --name starts from the base values
shown in parentheses (where they differ from the default entry's recipe).
Each step is skipped when its output exists and resumes from its checkpoint when killed; run
the same command again to continue. Run only some steps with --steps, e.g.
  rws zoo build --steps extract,evaluate,export
"""


def _parse_value(name: str, raw: str):
    f = {f.name: f for f in fields(ZooSpec)}[name]
    if name == "corruptions":
        return [c for c in raw.split(",") if c]
    if name == "eval_limit":
        return None if raw in ("none", "all", "0") else int(raw)
    kind = str(f.type)
    if "None" in kind and raw.lower() in ("none", "all"):
        return None
    if "float" in kind:
        return float(raw)
    if "int" in kind:
        return int(raw)
    return raw


def _shown(value: object) -> object:
    """An option's value as ``--help`` shows it (lists comma-joined)."""
    return ",".join(value) if isinstance(value, list) else value


def _build(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name, None) for f in fields(ZooSpec)}
    options = {k: _parse_value(k, str(v)) for k, v in given.items() if v is not None}
    spec = ZooSpec.for_entry(options.pop("name", None), **options)
    steps = tuple(s for s in args.steps.split(",") if s)
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown step(s) {sorted(unknown)}; steps are {', '.join(STEPS)}")
    ZooBuilder(spec).run(steps)
    print(f"zoo entry {spec.name}: steps {', '.join(steps)} done; folder: {spec.export}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="build a zoo entry (train, extract, evaluate, export)")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    b = zsub.add_parser(
        "build",
        help="run the pipeline pretrain → clean → robust → extract → evaluate → export",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    entry, base = ZooSpec.for_entry(), ZooSpec()
    b.add_argument("--steps", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    for f in fields(ZooSpec):
        value, plain = _shown(getattr(entry, f.name)), _shown(getattr(base, f.name))
        text = f"default: {value}"
        if value != plain and f.name not in ("name", "work", "export"):
            text += f" (the default entry's recipe; an unregistered --name: {plain})"
        b.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, help=text)
    b.set_defaults(func=_build)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
