"""Tiny zoo pipelines for tests: a :class:`ZooSpec` that trains in seconds on tiny data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rws_hub.zoo.pipeline import ZooSpec

#: Fast settings: an eighth-width model, one pretraining epoch, half-epoch fine-tunes, 64 test
#: images, one fine-tuning job at a time, a detector from 200 samples and 2 epochs.
FAST: dict[str, Any] = {
    "width": 0.125,
    "pretrain_epochs": 1,
    "clean_epochs": 0.5,
    "robust_epochs": 0.5,
    "eval_limit": 64,
    "jobs": 1,
    "detector_images": 200,
    "detector_epochs": 2,
    "detector_per_cell": 1,
}


def tiny_spec(root: Path, data: Path, name: str = "tiny", **overrides: Any) -> ZooSpec:
    """A zoo spec on ``data`` working in ``root/work`` and exporting to ``root/folder``, with
    :data:`FAST` settings; ``overrides`` replace any field."""
    base = {"name": name, "data": str(data), "work": str(root / "work")}
    base["export"] = str(root / "folder")
    return ZooSpec(**(base | FAST | overrides))
