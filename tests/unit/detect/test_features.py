"""The detector's input features (rws_hub.detect.features)."""

from __future__ import annotations

import torch

from rws_hub.datasets.corruptions import corrupt
from rws_hub.detect.features import N_IMAGE_FEATURES, conv_features, image_features


def test_feature_shapes_and_finiteness() -> None:
    x = torch.rand(3, 3, 32, 32)
    f = image_features(x)
    assert f.shape == (3, N_IMAGE_FEATURES) and torch.isfinite(f).all()
    # constant images (zero variance, no high-pass) stay finite too
    assert torch.isfinite(image_features(torch.full((2, 3, 32, 32), 0.5))).all()
    y = torch.randn(3, 8, 16, 16)
    c = conv_features(y)
    assert c.shape == (3, 4 * 8) and torch.isfinite(c).all()
    assert torch.allclose(c[:, :8], y.mean((2, 3)))
    assert torch.allclose(c[:, 24:], y.relu().mean((2, 3)))


def test_image_features_see_corruptions() -> None:
    """Noise raises the Laplacian energy; blur lowers it (features 11: log mean |laplacian|)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 0.2 + 0.4
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # smooth-ish images
    lap = image_features(x)[:, 11]
    noisy = image_features(corrupt(x, "gaussian_noise", 5, generator=g))[:, 11]
    blurred = image_features(corrupt(x, "defocus_blur", 5, generator=g))[:, 11]
    assert (noisy > lap).all() and (blurred < lap).all()
