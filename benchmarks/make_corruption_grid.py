"""Render docs/corruptions_grid.png: every corruption at every severity on CIFAR-10 test images.

Rows are the 19 corruptions, columns the clean image and severities 1..5; each row uses one of a
few real test images (cycled), upscaled with nearest-neighbour for visibility.

    .venv/bin/python benchmarks/make_corruption_grid.py \
        --data ../shared/data/cifar10/test.npz -o docs/corruptions_grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rws_hub.datasets.arrays import load_images
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS, corrupt

# test-set indices of the images shown (cycled over the rows)
DEFAULT_INDICES = (3, 7, 12, 25, 31, 47)


def make_grid(
    data: str | Path,
    out: str | Path,
    indices: tuple[int, ...] = DEFAULT_INDICES,
    upscale: int = 4,
    seed: int = 0,
    names: tuple[str, ...] = ALL_CORRUPTIONS,
) -> Path:
    """Write the grid PNG to ``out`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = load_images(data, split="test")
    x = images.x[list(indices)].float() / 255
    cols = ["clean"] + [f"severity {s}" for s in range(1, 6)]
    fig, axes = plt.subplots(
        len(names), 6, figsize=(6 * 1.25, len(names) * 1.3), squeeze=False, dpi=100
    )
    for r, name in enumerate(names):
        img = x[r % len(indices)].unsqueeze(0)
        row = [img] + [
            corrupt(img, name, s, generator=torch.Generator().manual_seed(seed + 97 * r + s))
            for s in range(1, 6)
        ]
        for c, t in enumerate(row):
            big = t[0].repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
            ax = axes[r][c]
            ax.imshow(big.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/cifar10/test.npz")
    ap.add_argument("-o", "--out", default="docs/corruptions_grid.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated subset of corruptions")
    args = ap.parse_args()
    names = tuple(args.only.split(",")) if args.only else ALL_CORRUPTIONS
    print(make_grid(args.data, args.out, seed=args.seed, names=names))


if __name__ == "__main__":
    main()
