"""Make the demo's example images: a few real CIFAR-10 test images, some corrupted.

Writes ``rws_hub/integrations/examples/<class>-<corruption|clean>.png`` (package data of the web
demo; ``demo/examples`` links there), 32x32 RGB PNGs, about 3 KB each.
By default the images are fixed test indices; with ``--model FOLDER`` each corrupted example is
the first test image of its class (from a fixed start) that the folder's clean backbone gets
wrong under that corruption and the matching signature gets right, so that the examples show
what a patch does.

    python demo/make_examples.py [--data ../shared/data/cifar10/test.npz] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rws_hub.datasets import get_dataset
from rws_hub.datasets.corruptions import corrupt

CIFAR10_CLASSES = get_dataset("cifar10").classes
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cifar10" / "test.npz"
EXAMPLES = REPO_ROOT / "rws_hub" / "integrations" / "examples"
SEVERITY = 5

# (class, corruption or None, default test index). Clean first, then corrupted.
PLAN: tuple[tuple[str, str | None, int], ...] = (
    ("cat", None, 0),
    ("ship", None, 1),
    ("frog", None, 4),
    ("automobile", "gaussian_noise", 6),
    ("airplane", "fog", 3),
    ("horse", "contrast", 13),
    ("dog", "motion_blur", 12),
    ("truck", "snow", 11),
)


def _pick(
    x: torch.Tensor, y: np.ndarray, cls: str, corruption: str, engine, start: int = 0
) -> tuple[int, torch.Tensor]:
    """First image of ``cls`` (from ``start``) that the backbone misses under ``corruption``
    and the signature of the same name gets right; falls back to the first of the class."""
    label = CIFAR10_CLASSES.index(cls)
    idx = [int(i) for i in np.nonzero(y == label)[0] if i >= start][:200]
    batch = x[idx].float().div(255.0)
    gen = torch.Generator().manual_seed(label)
    bad = corrupt(batch, corruption, SEVERITY, generator=gen)
    bad = bad.mul(255).round().div(255)  # what the PNG will hold
    clean_pred = engine.predict(bad, None).argmax(1)
    patched_pred = engine.predict(bad, {corruption: engine.defaults[corruption]}).argmax(1)
    for j, i in enumerate(idx):
        if int(clean_pred[j]) != label and int(patched_pred[j]) == label:
            return i, bad[j]
    return idx[0], bad[0]


def make_examples(data: Path, out: Path, model: Path | None = None) -> list[Path]:
    """Write the example PNGs into ``out``; returns their paths."""
    arrays = np.load(data)
    x = torch.from_numpy(arrays["x"]).permute(0, 3, 1, 2).contiguous()
    y = arrays["y"]
    engine = None
    if model is not None:
        from rws_hub.inference.engine import Engine

        engine = Engine.from_folder(model, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    written = []
    for cls, corruption, index in PLAN:
        if int(y[index]) != CIFAR10_CLASSES.index(cls):
            raise SystemExit(f"test image {index} is not a {cls}")
        if corruption is None:
            image = x[index].float().div(255.0)
        elif engine is not None and corruption in engine.signatures:
            index, image = _pick(x, y, cls, corruption, engine)
        else:
            gen = torch.Generator().manual_seed(CIFAR10_CLASSES.index(cls))
            image = corrupt(x[index].float().div(255.0)[None], corruption, SEVERITY, generator=gen)[
                0
            ]
        pixels = image.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        path = out / f"{cls}-{corruption or 'clean'}.png"
        Image.fromarray(pixels, "RGB").save(path, optimize=True)
        written.append(path)
        print(f"{path.relative_to(REPO_ROOT)}  (test image {index})")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAR-10 test.npz")
    parser.add_argument("--out", type=Path, default=EXAMPLES)
    parser.add_argument("--model", type=Path, help="model folder used to pick telling examples")
    args = parser.parse_args(argv)
    make_examples(args.data, args.out, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
