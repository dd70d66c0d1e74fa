"""Shared fixtures: small data sets made on the fly (tests never need the real CIFAR-10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def make_npz(path: Path, n: int, seed: int = 0) -> Path:
    """A learnable toy image set in the CIFAR .npz layout: the class sets the mean colour."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    base = np.stack([(y * 25) % 256, (y * 70) % 256, (255 - y * 25) % 256], axis=1)
    x = base[:, None, None, :] + rng.normal(0, 20, (n, 32, 32, 3))
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y.astype(np.int64))
    return path


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train.npz (256 images) and test.npz (128 images)."""
    d = tmp_path_factory.mktemp("tiny_cifar")
    make_npz(d / "train.npz", 256, seed=0)
    make_npz(d / "test.npz", 128, seed=1)
    return d
