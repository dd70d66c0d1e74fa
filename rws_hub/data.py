"""Data loading: image sets held in memory as uint8 tensors (CIFAR scale)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rws_hub.models import CIFAR10_CLASSES


@dataclass
class ImageArrays:
    """A labelled image set in memory: ``x`` uint8 (N, 3, H, W), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...] = CIFAR10_CLASSES

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None) -> ImageArrays:
        """The first ``n`` images (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return ImageArrays(self.x[:n], self.y[:n], self.classes)


def load_images(path: str | Path, split: str = "train") -> ImageArrays:
    """Load a labelled image set into memory.

    ``path`` is a ``.npz`` file with ``x`` (N, H, W, 3) uint8 and ``y`` (N,), or a folder with
    ``train.npz`` / ``test.npz`` (then ``split`` picks one).
    """
    p = Path(path)
    if p.is_dir():
        p = p / f"{split}.npz"
    if not p.exists():
        raise FileNotFoundError(f"no data set at {p}")
    with np.load(p, allow_pickle=False) as d:
        x, y = d["x"], d["y"]
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return ImageArrays(xt, torch.from_numpy(y.astype(np.int64)))
