"""Toy model folders: tiny, random, made in a second, for smoke runs, soaks and tests.

:func:`make_toy_folder` writes a complete model folder (the format of
:func:`rws_hub.io.folder.save_model_folder`) with random weights: the small-image VGG-16 at width 0.125
and random signatures on its first conv layers. :func:`add_toy_detector` gives it an untrained
corruption detector so that ``"auto"`` is served. The answers are meaningless; they are
deterministic (fixed seeds), so a served answer can be compared with an in-process one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rws_hub.archs import create_model
from rws_hub.core.signature import Signature
from rws_hub.detect import CorruptionDetector, detector_classes
from rws_hub.io.folder import ModelFolder, add_detector, save_model_folder

ARCHITECTURE = "vgg16_cifar"
"""Toy folders use the first entry's architecture (no batch norm) at a tiny width; the shipped
entries themselves, batch norm included, are served in ``tests/integration/test_entries.py``."""

__all__ = ["TOY_SIGNATURES", "add_toy_detector", "make_toy_folder"]

TOY_SIGNATURES: tuple[str, ...] = ("gaussian_noise", "fog", "contrast", "pixelate")
"""The signatures of a toy folder (default alphas 0.5, 0.75, 1.0, 1.25)."""


def make_toy_folder(
    path: str | Path,
    names: Sequence[str] = TOY_SIGNATURES,
    *,
    width: float = 0.125,
    layers: int = 3,
    seed: int = 0,
) -> Path:
    """Write a tiny model folder at ``path`` and return it: the small-image VGG-16 at ``width`` with
    random weights (seed ``seed``) and one random signature per name on the first ``layers``
    conv layers, default alphas 0.5, 0.75, 1.0, ... in order."""
    torch.manual_seed(seed)
    model = create_model(ARCHITECTURE, width=width).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][:layers]
    sd = model.state_dict()
    sigs = []
    for i, name in enumerate(names):
        tensors = {
            f"{c}.{t}": torch.randn(sd[f"{c}.{t}"].shape, generator=gen) * 0.1
            for c in convs
            for t in ("weight", "bias")
        }
        sigs.append(Signature(name, tensors, layers=layers, default_alpha=0.5 + 0.25 * i))
    config = {"architecture": ARCHITECTURE, "width": width, "lineage": "test-lineage"}
    return save_model_folder(path, model=model, config=config, signatures=sigs)


def add_toy_detector(folder: str | Path, seed: int = 3) -> Path:
    """Give ``folder`` an untrained corruption detector (so ``"auto"`` is served): the
    backbone's conv1 and a random head sharpened so that different images get different mixes
    (rule: up to two corruptions with probability >= 0.1, alpha = default x probability)."""
    loaded = ModelFolder.load(folder)
    torch.manual_seed(seed)
    conv1 = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d))
    det = CorruptionDetector(
        classes=detector_classes(list(loaded.signatures)),
        hidden=32,
        conv_channels=conv1.out_channels,
    )
    det.set_backbone_conv(loaded.model)
    with torch.no_grad():
        det.head[-1].weight.mul_(30)
    config = det.spec() | {"rule": {"kind": "weighted", "threshold": 0.1, "top_k": 2}}
    return add_detector(folder, det.state_dict(), config)
