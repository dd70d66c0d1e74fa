"""The detector's input features, computed from images (no learned parameters).

* :func:`image_features`: 40 statistics per image: per-channel mean/std, saturation and value,
  clipped-pixel fractions, Laplacian energy and its tail weight, gradient energy, flat-step
  fraction, 8x8 block-boundary ratio (JPEG), radial log power spectrum (blur, noise,
  pixelation), local 4x4 contrast, cross-channel correlation of the high-pass (colour vs
  luminance noise).
* :func:`conv_features`: per-channel statistics of the backbone's first conv layer output
  (mean, log std, log mean absolute horizontal first difference, mean ReLU).

:data:`FEATURE_VERSION` names this feature set; a saved detector computed with another version
is refused (:mod:`rws_hub.detect.model`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["FEATURE_VERSION", "N_IMAGE_FEATURES", "conv_features", "image_features"]

FEATURE_VERSION = 1
"""Version of the feature set; bump it whenever a feature changes."""
N_IMAGE_FEATURES = 40
"""Length of :func:`image_features`' vector per image."""

_EPS = 1e-6


def _log(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t + _EPS)


@lru_cache(maxsize=8)
def _radial_bins(h: int, w: int, bins: int, device: torch.device) -> torch.Tensor:
    """(bins, H*(W//2+1)) ring-averaging weights over the ``rfft2`` frequency grid (no DC)."""
    fy = torch.fft.fftfreq(h, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=device).view(1, -1)
    r = torch.sqrt(fx**2 + fy**2).flatten() / math.sqrt(0.5)  # 0..1
    idx = torch.clamp((r * bins).long(), max=bins - 1)
    masks = torch.stack([(idx == b) for b in range(bins)]).float()
    masks[:, 0] = 0.0  # no DC
    return masks / masks.sum(1, keepdim=True).clamp_min(1.0)


def image_features(x: torch.Tensor) -> torch.Tensor:
    """40 statistics per image of float images ``(N, 3, H, W)`` in [0, 1] → ``(N, 40)``."""
    x = x.float()
    n, _, h, w = x.shape
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    feats: list[torch.Tensor] = []
    m1 = x.mean((2, 3))
    feats += [m1, 0.5 * _log((x * x).mean((2, 3)) - m1 * m1)]  # 6: mean, log std
    mx, mn = x.amax(1), x.amin(1)
    sat = (mx - mn) / mx.clamp_min(1e-3)
    s1 = sat.mean((1, 2))
    feats += [s1, (sat * sat).mean((1, 2)) - s1 * s1, mx.mean((1, 2))]  # 3
    feats += [(mn <= 2 / 255).float().mean((1, 2)), (mx >= 253 / 255).float().mean((1, 2))]  # 2
    sdx = gray[..., :, 1:] - gray[..., :, :-1]
    sdy = gray[..., 1:, :] - gray[..., :-1, :]
    lap = (sdx[..., 1:-1, 1:] - sdx[..., 1:-1, :-1]) + (sdy[..., 1:, 1:-1] - sdy[..., :-1, 1:-1])
    la = lap.abs().mean((1, 2, 3))
    a2 = (lap * lap).mean((1, 2, 3))
    feats += [_log(la), _log(a2), _log(lap.pow(4).mean((1, 2, 3)) / (a2 * a2 + _EPS))]  # 3
    dx, dy = sdx.abs(), sdy.abs()
    mdx, mdy = dx.mean((1, 2, 3)), dy.mean((1, 2, 3))
    feats += [_log(mdx), _log(mdy)]  # 2
    feats += [(dx < 0.5 / 255).float().mean((1, 2, 3)), (dy < 0.5 / 255).float().mean((1, 2, 3))]
    # 8x8 block boundaries (JPEG): steps across columns/rows 7|8, 15|16, ... vs all steps.
    feats += [
        dx[..., :, 7::8].mean((1, 2, 3)) / (mdx + 1e-4),
        dy[..., 7::8, :].mean((1, 2, 3)) / (mdy + 1e-4),
    ]  # 2
    g0 = gray[:, 0] - gray.mean((2, 3))[:, :, None]
    spec = torch.fft.rfft2(g0).abs().pow(2)  # (N, H, W//2+1)
    feats.append(_log(spec.flatten(1) @ _radial_bins(h, w, 12, x.device).T))  # 12
    blocks = F.avg_pool2d(gray, 4)
    bvar = (F.avg_pool2d(gray * gray, 4) - blocks * blocks).clamp_min(0).flatten(1)
    lbstd = 0.5 * _log(bvar)
    feats += [_log(bvar.sqrt().mean(1)), lbstd.std(1), (bvar < 1e-4).float().mean(1)]  # 3
    hp = (x[..., :, 2:] + x[..., :, :-2] - 2 * x[..., :, 1:-1]).flatten(2)  # per channel
    hp = hp - hp.mean(2, keepdim=True)
    hp = hp / (hp.norm(dim=2, keepdim=True) + 1e-6)
    feats += [(hp[:, i] * hp[:, j]).sum(1) for i, j in ((0, 1), (0, 2), (1, 2))]  # 3
    g1 = gray.mean((1, 2, 3))
    feats.append(0.5 * _log((gray * gray).mean((1, 2, 3)) - g1 * g1))  # 1 (luminance contrast)
    feats.append(_log(dx.amax((1, 2, 3))))  # 1 (largest step)
    out = torch.cat([f.reshape(n, -1) for f in feats], 1)
    assert out.shape[1] == N_IMAGE_FEATURES, out.shape
    return out


def conv_features(y: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics of a conv output ``(N, C, H, W)`` → ``(N, 4C)``: mean, log std,
    log mean |horizontal first difference| (a high-pass) and mean ReLU."""
    m1 = y.mean((2, 3))
    var = (y * y).mean((2, 3)) - m1 * m1
    hp = (y[..., :, 1:] - y[..., :, :-1]).abs().mean((2, 3))
    return torch.cat([m1, 0.5 * _log(var.clamp_min(0)), _log(hp), y.relu().mean((2, 3))], 1)
