"""``rws corrupt``: write corrupted arrays in the layout of the "-C" robustness benchmarks
(``<name>.npy`` uint8 NHWC + ``labels.npy``)."""

from __future__ import annotations

import argparse
import time

from rws_hub.datasets import default_dataset

_DATA = default_dataset()
EPILOG = f"""examples:
  # the 19 corruptions at severities 1..5 of the {_DATA.title} test set (its "-C" equivalent)
  rws corrupt --data {_DATA.root} --split test -o runs/{_DATA.name}-c
  # two corruptions, severity 5 only, the first 1,000 images
  rws corrupt --data test.npz --corruptions fog,snow --severities 5 --limit 1000 -o runs/c5
  # read one block back
  python -c "from rws_hub.datasets.arrays import load_images; \\
      d = load_images('runs/{_DATA.name}-c', corruption='fog', severity=5)"
"""


def parse_severities(text: str) -> tuple[int, ...]:
    """``"1-5"``, ``"5"`` or ``"1,3,5"`` -> severities (each in 1..5, order kept, no repeats)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-", 1))
            vals = list(range(lo, hi + 1))
        else:
            vals = [int(part)]
        for v in vals:
            if not 1 <= v <= 5:
                raise ValueError(f"severities must be in 1..5, got {v}")
            if v not in out:
                out.append(v)
    if not out:
        raise ValueError(f"no severity in {text!r}")
    return tuple(out)


def _run(args: argparse.Namespace) -> int:
    from rws_hub.datasets.arrays import load_images, save_corrupted_arrays
    from rws_hub.datasets.corruptions import resolve_corruptions

    names = resolve_corruptions(args.corruptions)
    sevs = parse_severities(args.severities)
    data = load_images(args.data, args.split, size=args.size).subset(args.limit)
    t0 = time.perf_counter()
    save_corrupted_arrays(data, args.out, names, sevs, seed=args.seed, progress=not args.quiet)
    dt = time.perf_counter() - t0
    total = len(names) * len(sevs) * len(data)
    print(
        f"wrote {len(names)} corruption(s) x {len(sevs)} severities x {len(data)} images "
        f"to {args.out} ({total / max(dt, 1e-9):,.0f} images/s)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corrupt",
        help='write corrupted arrays in the "-C" benchmark layout',
        description='Corrupt a data set with the 19 "-C" benchmark corruptions and write '
        "<name>.npy (uint8 N·S x H x W x 3, severities stacked in blocks of N), labels.npy and "
        "corruptions.json into the output folder. Reproducible from --seed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", required=True, help="data set (see rws_hub.datasets.arrays.load_images)"
    )
    p.add_argument("--split", default="test", help="train or test (default: test)")
    p.add_argument(
        "--corruptions",
        default="all",
        help="all (19), standard (15), extra (4) or a comma-separated list (default: all)",
    )
    p.add_argument("--severities", default="1-5", help="e.g. 1-5, 5 or 1,3,5 (default: 1-5)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image side for ImageFolder data")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
