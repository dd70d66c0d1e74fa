"""A toy data set, registered by importing this one module (its arrays are written to a
temporary folder at import)."""

from __future__ import annotations

import tempfile

import numpy as np

from rws_hub.datasets import DatasetSpec, register_dataset

ROOT = tempfile.mkdtemp(prefix="rws-toy-data-")
_rng = np.random.default_rng(0)
for _split, _n in (("train", 24), ("test", 12)):
    np.savez(
        f"{ROOT}/{_split}.npz",
        x=_rng.integers(0, 256, (_n, 16, 16, 3), dtype=np.uint8),
        y=np.arange(_n) % 4,
    )

SPEC = register_dataset(
    DatasetSpec(
        name="toy4_ext",
        title="Toy-4",
        classes=("circle", "square", "star", "wave"),
        mean=(0.5, 0.5, 0.5),
        std=(0.3, 0.3, 0.3),
        image_size=16,
        root=ROOT,
    )
)
