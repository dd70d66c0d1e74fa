"""``rws train``: pretrain, clean fine-tune or robust fine-tune, resumable."""

from __future__ import annotations

import argparse
from dataclasses import fields

from rws_hub.datasets import default_dataset, list_datasets
from rws_hub.zoo.training import PRECISIONS, TrainConfig, train

_DATA = default_dataset()
EPILOG = f"""examples:
  # θ_pre: half-width VGG-16 from scratch on {_DATA.title}, one-cycle SGD
  rws train --stage pretrain --dataset {_DATA.name} --data {_DATA.root} --out runs/pre \\
      --epochs 8 --lr 0.05 --schedule onecycle
  # another registered data set, read from where its spec says it lives
  rws train --stage pretrain --dataset NAME --out runs/pre-NAME
  # θ_std: fine-tune θ_pre on clean data
  rws train --stage clean --init runs/pre/final.safetensors --out runs/clean --epochs 1
  # θ_c: fine-tune θ_pre on a clean/corrupted mix (half of every batch corrupted)
  rws train --stage robust --corruption fog --corrupt-fraction 0.5 \\
      --init runs/pre/final.safetensors --out runs/fog --epochs 1
  # a killed run continues exactly where it stopped
  rws train ... --resume
"""


def _run(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(TrainConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "severity" in kwargs:
        sev = [int(s) for s in str(kwargs["severity"]).split(",")]
        kwargs["severity"] = sev[0] if len(sev) == 1 else sev
    cfg = TrainConfig(**kwargs)
    final = train(cfg, resume=args.resume, max_seconds=args.max_minutes and args.max_minutes * 60)
    if final is None:
        print(f"stopped early; continue with the same command plus --resume ({cfg.out})")
    else:
        print(f"finished: {final}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train or fine-tune a backbone (pretrain / clean / robust)",
        description="Train a backbone with the published recipe (SGD, momentum 0.9, weight "
        "decay 5e-4, batch 128) and knobs. Writes config.json, metrics.jsonl, checkpoints "
        "and final.safetensors into --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stage", choices=("pretrain", "clean", "robust"), default=d.stage)
    p.add_argument(
        "--dataset",
        default=d.dataset,
        choices=list_datasets(),
        help="registered data set: class count, normalisation and default location",
    )
    p.add_argument(
        "--data",
        help="where the data set is (see rws_hub.datasets.arrays.load_images; default: where "
        "its spec says it lives)",
    )
    p.add_argument("--out", default=d.out, help="run folder")
    p.add_argument("--architecture", default=d.architecture)
    p.add_argument("--width", type=float, default=d.width, help="channel width multiplier")
    p.add_argument("--num-classes", type=int, help="default: the data set's")
    p.add_argument("--init", help="safetensors state dict to fine-tune from")
    p.add_argument("--epochs", type=float, default=d.epochs, help="may be fractional")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument(
        "--schedule", choices=("step", "onecycle", "cosine", "constant"), default=d.schedule
    )
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--no-augment", dest="augment", action="store_false", default=True)
    p.add_argument("--corruption", help="robust stage: corruption name")
    p.add_argument("--severity", default="5", help="severity, or a comma list to draw from")
    p.add_argument(
        "--corrupt-fraction",
        type=float,
        default=d.corrupt_fraction,
        help="robust stage: share of each batch corrupted (1 = corrupted only)",
    )
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--eval-limit", type=int, default=d.eval_limit)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--device", default=d.device, help="cpu, cuda, cuda:N or auto (CUDA when available)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="bf16: forward pass and loss under bfloat16 autocast (weights stay float32)",
    )
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--resume", action="store_true", help="continue a killed run")
    p.add_argument(
        "--max-minutes", type=float, help="stop (with a checkpoint) after this long; resume later"
    )
    p.set_defaults(func=_run)
