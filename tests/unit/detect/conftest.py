"""Shared fixtures of the detector tests: a tiny backbone, tiny detectors on its conv1 and
made-up signatures for it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rws_hub.archs import create_model
from rws_hub.core.signature import Signature
from rws_hub.detect.model import CorruptionDetector


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vgg16_cifar", width=0.125).eval()


def make_tiny_detector(backbone: torch.nn.Module, prefer: str | None = None) -> CorruptionDetector:
    """An untrained detector on ``backbone``'s conv1; ``prefer`` biases it to one class."""
    torch.manual_seed(1)
    det = CorruptionDetector(conv_channels=8, hidden=16)
    det.set_backbone_conv(backbone)
    if prefer is not None:
        with torch.no_grad():
            det.head[-1].bias[det.classes.index(prefer)] = 50.0
    return det.eval()


def make_signatures(model: torch.nn.Module, names: tuple[str, ...]) -> dict[str, Signature]:
    """Random small signatures (first two conv layers) named ``names`` for ``model``."""
    gen = torch.Generator().manual_seed(3)
    sd = model.state_dict()
    tensors = ("features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias")
    return {
        n: Signature(
            n, {t: 0.1 * torch.randn(sd[t].shape, generator=gen) for t in tensors}, layers=2
        )
        for n in names
    }


@pytest.fixture
def tiny_detector() -> Callable[..., CorruptionDetector]:
    """``tiny_detector(backbone, prefer=None)``: see :func:`make_tiny_detector`."""
    return make_tiny_detector


@pytest.fixture
def signatures_for() -> Callable[..., dict[str, Signature]]:
    """``signatures_for(model, names)``: see :func:`make_signatures`."""
    return make_signatures
