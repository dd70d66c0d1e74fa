"""``rws eval``: clean and robust accuracy of a backbone, optionally patched."""

from __future__ import annotations

import argparse
from pathlib import Path

from rws_hub.cli.corrupt import parse_severities
from rws_hub.datasets import dataset_of
from rws_hub.zoo.entries import DEFAULT_ENTRY

EPILOG = f"""examples:
  # TA, and RA at severity 5 on every corruption, unpatched and with each own signature
  rws eval {DEFAULT_ENTRY.folder} --corruptions all --own --limit 2000 --json out.json
  # one fixed mix on two corruptions, every severity
  rws eval {DEFAULT_ENTRY.folder} --corruptions fog,snow --severities 1-5 --patch fog:1 --patch snow:0.5
"""


def data_for(config: dict, data: str | None) -> tuple[str, str | None]:
    """Where the evaluation images are, and the data set name to read them as: ``data`` when
    given, else where the spec of the data set the folder's config names lives."""
    spec = dataset_of(config)
    if data is not None:
        return data, spec.name if spec is not None else None
    if spec is None or spec.root is None:
        raise ValueError("the model folder's config names no registered data set: give --data")
    return spec.root, spec.name


def _run(args: argparse.Namespace) -> int:
    from rws_hub.datasets.arrays import load_images
    from rws_hub.datasets.corruptions import resolve_corruptions
    from rws_hub.io.folder import ModelFolder
    from rws_hub.zoo.evaluation import OWN, evaluate, save_report

    # parsed (and checked) before anything is loaded
    corruptions = resolve_corruptions(args.corruptions) if args.corruptions else ()
    severities = parse_severities(args.severities)
    folder = ModelFolder.load(args.model)
    mixes: dict[str, object] = {"none": None}
    if args.own:
        mixes[OWN] = OWN
    if args.patch:
        mixes[",".join(args.patch)] = ",".join(args.patch)
    where, dataset = data_for(folder.config, args.data)
    data = load_images(where, args.split, dataset=dataset).subset(args.limit)
    report = evaluate(
        folder.model,
        data,
        corruptions=corruptions,
        severities=severities,
        mixes=mixes,
        seed=args.seed,
    )
    print(report.to_markdown())
    save_report(report, args.json, args.markdown)
    for p in (args.json, args.markdown):
        if p:
            print(f"wrote {Path(p)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="clean (TA) and robust (RA) accuracy, optionally patched",
        description="Evaluate a model folder on clean test images and on corrupted copies "
        "made on the fly (deterministic for a seed), optionally patched with signatures.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help=f"model folder (e.g. {DEFAULT_ENTRY.folder})")
    p.add_argument(
        "--data",
        help="data set (rws_hub.datasets.arrays; default: where the data set named in the "
        "folder's config lives)",
    )
    p.add_argument("--split", default="test")
    p.add_argument(
        "--corruptions", help="all | standard | extra | comma list (default: clean only)"
    )
    p.add_argument("--severities", default="5", help="e.g. 5, 1-5 or 1,3,5")
    p.add_argument("--own", action="store_true", help="also patch each corruption's own signature")
    p.add_argument("--patch", action="append", help="name:alpha (repeatable): one fixed mix")
    p.add_argument("--limit", type=int, help="first N test images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--markdown", help="write the report as a markdown table")
    p.set_defaults(func=_run)
