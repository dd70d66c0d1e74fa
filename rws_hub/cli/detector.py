"""``rws detector train`` / ``rws detector eval``: the corruption detector behind ``"auto"``."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from rws_hub.datasets import dataset_of, default_dataset
from rws_hub.zoo.entries import DEFAULT_ENTRY

_FOLDER = DEFAULT_ENTRY.folder
_WORK = DEFAULT_ENTRY.work
EPILOG_TRAIN = f"""examples:
  # train on 40,000 corrupted training images of the folder's data set (all severities),
  # cache in runs/detector
  rws detector train --folder {_FOLDER} --images 40000 --epochs 30 --out runs/detector
  # a killed run resumes from its cached samples, features and last epoch: run it again
  # train against a backbone state instead of a folder, and add the result to a folder
  rws detector train --backbone {_WORK}/clean/final.safetensors \\
      --out {_WORK}/detector
  rws detector eval --folder {_FOLDER} --detector runs/detector --choose --install
  # add an already evaluated detector to a folder
  rws detector install --folder {_FOLDER} --detector runs/detector
"""

EPILOG_EVAL = f"""examples:
  # compare "auto" rules on held-out training images (not used to train the detector)
  rws detector eval --folder {_FOLDER} --detector runs/detector
  # pick the best rule (clean accuracy within 0.5 point of unpatched), store it, add the
  # detector to the folder (detector.safetensors, config["detector"], manifest)
  rws detector eval --folder {_FOLDER} --detector runs/detector --choose --install
"""


def _backbone(args: argparse.Namespace) -> Any:
    if args.backbone:
        from rws_hub.zoo.pipeline import ZooSpec, load_state_model

        return load_state_model(ZooSpec(), args.backbone)
    if not args.folder:
        raise ValueError("give --folder (a model folder) or --backbone (a zoo state file)")
    from rws_hub.io.folder import ModelFolder

    return ModelFolder.load(args.folder, signatures=None).model


def _data(args: argparse.Namespace, config: dict | None) -> str:
    """``--data``, else where the data set of the folder's config (or, without a folder, the
    default data set) lives."""
    if args.data:
        return args.data
    spec = dataset_of(config) if config is not None else default_dataset()
    if spec is None or spec.root is None:
        raise ValueError("the model folder's config names no registered data set: give --data")
    return spec.root


def _config(folder: str | None) -> dict | None:
    if not folder:
        return None
    from rws_hub.io.folder import ModelFolder

    return ModelFolder.read_config(folder)


def _train(args: argparse.Namespace) -> int:
    import torch

    from rws_hub.detect import DetectorTrainConfig
    from rws_hub.detect.build import train_and_record

    if args.threads:
        torch.set_num_threads(args.threads)
    names = {f.name for f in fields(DetectorTrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and v is not None}
    kwargs["data"] = _data(args, _config(args.folder if not args.backbone else None))
    cfg = DetectorTrainConfig(**kwargs)
    train_and_record(_backbone(args), args.out, cfg, source=args.backbone or args.folder)
    if args.install:
        _install(args.folder, args.out)
    return 0


def _install(folder: str | None, directory: str) -> None:
    from rws_hub.detect import load_detector
    from rws_hub.io.folder import add_detector

    if not folder:
        raise ValueError("--install needs --folder")
    det, config = load_detector(directory)
    add_detector(folder, det.state_dict(), config)
    print(f"added the detector to {folder} (detector.safetensors, config.json, manifest.json)")


def _eval(args: argparse.Namespace) -> int:
    import torch

    from rws_hub.datasets.arrays import load_images
    from rws_hub.detect import load_detector, save_detector
    from rws_hub.detect.build import RuleSelection, select_rule
    from rws_hub.inference.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.folder:
        raise ValueError("--folder is required (the backbone and its signatures)")
    engine = Engine.from_folder(args.folder, device="cpu", detector=None)
    det, config = load_detector(args.detector)
    data = load_images(_data(args, _config(args.folder)), args.split)
    selection = RuleSelection(
        split=args.split,
        start=args.start,
        per_cell=args.per_cell,
        clean=args.clean,
        seed=args.seed,
        clean_tolerance=args.clean_tolerance,
    )
    chosen = dict(config)  # the rule goes into the detector's config only with --choose
    best, summary, result = select_rule(
        engine, det, chosen, data, selection, log=print if args.verbose else None
    )
    labels = list(chosen["rule_selection"]["summary"])  # none, oracle, then every rule
    print(
        f"held-out {args.split} images from #{selection.first(data)}: {args.clean} clean, "
        f"{args.per_cell} per corruption and severity; accuracy in %"
    )
    print("| rule | clean | severity 5 | severities 1-5 |")
    print("| --- | --- | --- | --- |")
    for label in labels:
        row = [summary[g].get(label, float("nan")) for g in ("clean", "sev5", "all")]
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    print(
        f"detector accuracy: clean {summary['clean']['detector']:.1f}, severity 5 "
        f"{summary['sev5']['detector']:.1f}, severities 1-5 {summary['all']['detector']:.1f}"
    )
    print(f"best rule: {best}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, **result}, indent=2))
    if args.choose:
        save_detector(args.detector, det, chosen)
        print(f"stored rule {best} in {Path(args.detector) / 'detector.json'}")
    if args.install:
        _install(args.folder, args.detector)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detector",
        help='train / evaluate the corruption detector behind "auto"',
        description="The corruption detector: predicts clean or one of the 19 corruptions per "
        'image; "signatures": "auto" turns its output into a mix.',
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB")

    t = verbs.add_parser(
        "train",
        help="train a detector on corrupted training images (resumable)",
        description="Train the detector head on features of corrupted training images "
        "(every corruption, severities 1-5, and clean). Samples, features and checkpoints are "
        "cached in --out; running the same command again resumes.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--folder", help="model folder whose backbone's conv1 the detector reuses")
    t.add_argument("--backbone", help="or: a zoo state file (safetensors) of the backbone")
    t.add_argument(
        "--data",
        help="training data (rws_hub.datasets.arrays; default: where the data set of the "
        "folder's config lives)",
    )
    t.add_argument("--out", required=True, help="output / cache folder")
    t.add_argument("--images", type=int, help="training samples (default 40000)")
    t.add_argument("--heldout", type=int, help="held-out validation samples (default 2000)")
    t.add_argument("--epochs", type=int, help="head training epochs (default 30)")
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--hidden", type=int, help="head width (default 256)")
    t.add_argument("--clean-share", dest="clean_share", type=float, help="default 0.1")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--install", action="store_true", help="add the result to --folder")
    t.set_defaults(func=_train)

    i = verbs.add_parser(
        "install",
        help="add a trained detector to a model folder",
        description="Write detector.safetensors and config['detector'] (from detector.json) "
        "into a model folder and rewrite its manifest (the folder must verify first).",
    )
    i.add_argument("--folder", required=True, help="model folder")
    i.add_argument("--detector", required=True, help="detector folder (from rws detector train)")
    i.set_defaults(func=lambda a: _install(a.folder, a.detector) or 0)

    e = verbs.add_parser(
        "eval",
        help="compare auto rules on held-out images; choose and store one",
        description="Measure none / oracle / each candidate auto rule on held-out training "
        "images (clean, and every corruption at severities 1-5) and the detector's accuracy.",
        epilog=EPILOG_EVAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--folder", required=True, help="model folder (backbone + signatures)")
    e.add_argument("--detector", required=True, help="detector folder (from rws detector train)")
    e.add_argument("--data", help="default: where the data set of the folder's config lives")
    e.add_argument("--split", default="train", help="default train (held-out tail)")
    e.add_argument("--start", type=int, help="first held-out image (default 45000)")
    e.add_argument("--per-cell", dest="per_cell", type=int, default=20)
    e.add_argument("--clean", type=int, default=1000, help="clean held-out images")
    e.add_argument("--clean-tolerance", dest="clean_tolerance", type=float, default=0.5)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int)
    e.add_argument("--json", help="write every cell's numbers as JSON")
    e.add_argument("--choose", action="store_true", help="store the best rule in the detector")
    e.add_argument("--install", action="store_true", help="add the detector to --folder")
    e.add_argument("--verbose", action="store_true")
    e.set_defaults(func=_eval)
