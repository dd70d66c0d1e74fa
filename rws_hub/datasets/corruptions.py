"""The 19 common corruptions of the corruption-robustness benchmark (Hendrycks & Dietterich,
2019: the "-C" test sets) as batched torch operations.

Every corruption takes float images ``(N, 3, H, W)`` in ``[0, 1]`` on any device and returns a
tensor of the same shape, dtype and device, clamped to ``[0, 1]``. Randomness comes from an
optional :class:`torch.Generator`; with one, the output is reproducible (random numbers are drawn
on the generator's device and moved to the images' device, so a CPU generator gives the same
corruption on CPU and CUDA). Parameters per severity follow the benchmark's recipe for 32×32 images;
see ``docs/corruptions.md`` for the table and the documented deviations.

>>> x = torch.rand(8, 3, 32, 32)
>>> y = corrupt(x, "fog", severity=5, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = [
    "ALL_CORRUPTIONS",
    "CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "SEVERITY_PARAMS",
    "STANDARD_CORRUPTIONS",
    "corrupt",
    "corrupt_uint8",
    "register_corruption",
    "resolve_corruptions",
]

CorruptionFn = Callable[[torch.Tensor, int, "torch.Generator | None"], torch.Tensor]

ALL_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "gaussian_blur",
    "glass_blur",
    "defocus_blur",
    "motion_blur",
    "zoom_blur",
    "fog",
    "frost",
    "snow",
    "spatter",
    "contrast",
    "brightness",
    "saturate",
    "jpeg_compression",
    "pixelate",
    "elastic_transform",
)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
STANDARD_CORRUPTIONS: tuple[str, ...] = tuple(
    c for c in ALL_CORRUPTIONS if c not in EXTRA_CORRUPTIONS
)

#: Parameters for severities 1..5 (index 0 is severity 1), the benchmark's values for 32×32 images.
SEVERITY_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # sigma
    "shot_noise": (500, 250, 100, 75, 50),  # lambda (photons per unit intensity)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper amount
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),  # sigma
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma
    # (sigma, max_delta, iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # (disk radius, alias blur sigma)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (radius, sigma); angle uniform in [-45, 45] degrees
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": (1.05, 1.10, 1.15, 1.20, 1.25),  # largest zoom; factors 1.00..max step 0.01
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # (strength, wibble decay)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # (image, frost)
    # (mean, std, zoom, threshold, blur radius, blur sigma, blend)
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # (mean, std, sigma, threshold, intensity or mud sigma, mud?) — 1..3 water, 4..5 mud
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor around the per-channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),  # HSV saturation * a + b
    "jpeg_compression": (80, 65, 58, 50, 40),  # quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # box-resize factor of the side
    # (alpha, sigma, affine jitter) as fractions of the side: x32 gives the pixel values
    "elastic_transform": (
        (0.0, 0.0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
}

CORRUPTIONS: dict[str, CorruptionFn] = {}


def register_corruption(name: str) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator adding ``fn(images, severity, generator) -> images`` to :data:`CORRUPTIONS`;
    a name registered twice raises ``ValueError``."""

    def deco(fn: CorruptionFn) -> CorruptionFn:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is already registered")
        CORRUPTIONS[name] = fn
        return fn

    return deco


def resolve_corruptions(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Names from ``"all"``, ``"standard"``, ``"extra"`` or a comma-separated list / sequence."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "all":
            return ALL_CORRUPTIONS
        if key == "standard":
            return STANDARD_CORRUPTIONS
        if key == "extra":
            return EXTRA_CORRUPTIONS
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    names = tuple(spec)
    for n in names:
        check_corruption(n)
    if not names:
        raise ValueError("no corruption named")
    return names


def check_corruption(name: str) -> None:
    """Raise ``ValueError`` (listing the known names) unless ``name`` is a registered corruption."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int = 5,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to float images in ``[0, 1]``.

    ``images`` is ``(N, 3, H, W)`` (a single ``(3, H, W)`` image is accepted too) on CPU or CUDA.
    Returns a tensor of the same shape, dtype and device, clamped to ``[0, 1]``. Pass a seeded
    ``generator`` for reproducible output. Raises ``ValueError`` for an unknown name, a severity
    outside 1..5, or images that are not float RGB.
    """
    check_corruption(name)
    try:
        sev = operator.index(severity)
    except TypeError:
        sev = 0
    if isinstance(severity, bool) or not 1 <= sev <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise ValueError("images must be a float tensor in [0, 1]; use corrupt_uint8 for uint8")
    single = images.dim() == 3
    x = images.unsqueeze(0) if single else images
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    if x.shape[0] == 0:
        return images.clone()
    xf = x.float()
    out = CORRUPTIONS[name](xf, sev, generator)
    if out.data_ptr() == xf.data_ptr():  # never clamp the caller's tensor in place
        out = out.clone()
    out = out.clamp_(0.0, 1.0).to(images.dtype)
    return out[0] if single else out


def corrupt_uint8(
    images: torch.Tensor,
    name: str,
    severity: int = 5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`corrupt` for uint8 images ``(N, 3, H, W)`` in 0..255; returns uint8 (rounded)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    y = corrupt(images.float().div_(255.0), name, severity, generator=generator)
    return y.mul_(255.0).round_().to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# random numbers: drawn on the generator's device, moved to the images' device


def _dev(gen: torch.Generator | None, device: torch.device) -> torch.device:
    return gen.device if gen is not None else device


def _rand(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device):
    return torch.rand(shape, generator=gen, device=_dev(gen, device)).to(device)


def _randn(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device):
    return torch.randn(shape, generator=gen, device=_dev(gen, device)).to(device)


def _uniform(shape, low: float, high: float, gen, device) -> torch.Tensor:
    return _rand(shape, gen, device) * (high - low) + low


def _randint(low: int, high: int, shape, gen, device) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=gen, device=_dev(gen, device)).to(device)


# ---------------------------------------------------------------------------------------------
# filtering helpers


@lru_cache(maxsize=256)
def _pad_index(n: int, pad: int, mode: str) -> torch.Tensor:
    """Source indices for ``pad`` pixels either side of a length-``n`` axis.

    ``nearest`` repeats the edge, ``reflect`` mirrors including the edge (d c b a | a b c d),
    ``mirror`` mirrors about the edge pixel (d c b | a b c d).
    """
    idx = torch.arange(-pad, n + pad)
    if mode == "nearest" or n == 1:
        return idx.clamp(0, n - 1)
    if mode == "reflect":
        period = 2 * n
        idx = idx % period
        return torch.where(idx >= n, period - 1 - idx, idx)
    if mode == "mirror":
        period = 2 * n - 2
        idx = idx % period
        return torch.where(idx >= n, period - idx, idx)
    raise ValueError(mode)


def _pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad the last two dims by (ph, pw) each side with a border mode of :func:`_pad_index`."""
    if ph:
        x = x.index_select(-2, _pad_index(x.shape[-2], ph, mode).to(x.device))
    if pw:
        x = x.index_select(-1, _pad_index(x.shape[-1], pw, mode).to(x.device))
    return x


@lru_cache(maxsize=128)
def _gauss1d(sigma: float, truncate: float) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def _gaussian_blur(
    x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0
) -> torch.Tensor:
    """Separable Gaussian blur over the last two dims (per channel), radius ``truncate·σ``."""
    if sigma <= 0:
        return x
    k = _gauss1d(float(sigma), float(truncate)).tolist()
    r = (len(k) - 1) // 2
    h, w = x.shape[-2:]
    # small separable kernels: a sum of shifted slices beats conv2d on CPU
    p = _pad(x, 0, r, mode)
    y = sum(kk * p[..., j : j + w] for j, kk in enumerate(k))
    p = _pad(y, r, 0, mode)
    return sum(kk * p[..., j : j + h, :] for j, kk in enumerate(k))


def _filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "mirror") -> torch.Tensor:
    """Correlate every channel with one odd-sized 2-D kernel (border ``mode``)."""
    kh, kw = kernel.shape
    shape = x.shape
    y = _pad(x.reshape(-1, 1, shape[-2], shape[-1]), kh // 2, kw // 2, mode)
    y = F.conv2d(y, kernel.to(x.device, x.dtype).view(1, 1, kh, kw))
    return y.reshape(shape)


def _grid(coords_x: torch.Tensor, coords_y: torch.Tensor, w: int, h: int, align: bool):
    """A ``grid_sample`` grid from pixel coordinates (pixel centres at integers)."""
    if align:
        gx = coords_x * (2.0 / max(w - 1, 1)) - 1.0
        gy = coords_y * (2.0 / max(h - 1, 1)) - 1.0
    else:
        gx = (2.0 * coords_x + 1.0) / w - 1.0
        gy = (2.0 * coords_y + 1.0) / h - 1.0
    return torch.stack((gx, gy), dim=-1)


def _motion_blur(
    x: torch.Tensor, radius: float, sigma: float, angles_deg: torch.Tensor
) -> torch.Tensor:
    """One-sided linear motion blur with a Gaussian profile, one angle per image.

    Output pixel p is ``Σ_i k_i · x(p + round(i·(cos a, sin a)))`` for ``i = 0..2·radius`` and
    ``k_i ∝ exp(-i²/2σ²)``: integer taps along the direction, edge pixels repeated.
    """
    n, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float32, device=x.device)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    keep = k >= k.max() * 1e-4  # drop taps that cannot change a uint8 pixel
    i, k = i[keep], k[keep] / k[keep].sum()
    a = torch.deg2rad(angles_deg.to(x.device, torch.float32))
    ox = torch.ceil(i[None] * torch.cos(a)[:, None] - 0.5).long()  # (N, T)
    oy = torch.ceil(i[None] * torch.sin(a)[:, None] - 0.5).long()
    ys = (torch.arange(h, device=x.device)[None, None, :, None] + oy[:, :, None, None]).clamp(
        0, h - 1
    )
    xs = (torch.arange(w, device=x.device)[None, None, None, :] + ox[:, :, None, None]).clamp(
        0, w - 1
    )
    t = k.numel()
    idx = (ys * w + xs).reshape(n, 1, t * h * w).expand(n, c, t * h * w)
    g = x.reshape(n, c, h * w).gather(2, idx).view(n, c, t, h * w)
    return torch.einsum("nctp,t->ncp", g, k).view(n, c, h, w)


@lru_cache(maxsize=64)
def _zoom_matrix(n: int, zoom: float) -> torch.Tensor:
    """(n, n) linear-interpolation matrix zooming a 1-D signal about its centre by ``zoom``."""
    centre = (n - 1) / 2
    src = centre + (torch.arange(n, dtype=torch.float64) - centre) / zoom
    src = src.clamp(0, n - 1)
    lo = src.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = src - lo
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def _center_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Zoom into the centre by ``zoom`` (bilinear), keeping the size."""
    if zoom == 1:
        return x
    h, w = x.shape[-2:]
    a = _zoom_matrix(h, float(zoom)).to(x.device, x.dtype)
    b = _zoom_matrix(w, float(zoom)).to(x.device, x.dtype)
    return a @ x @ b.T


def _plasma(n: int, size: int, decay: float, gen, device) -> torch.Tensor:
    """``n`` diamond-square plasma fractals (size×size, size a power of 2), each in [0, 1]."""
    m = torch.zeros(n, size, size, device=device)
    step, wibble = size, 100.0

    def wibbled_mean(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * _uniform(a.shape, -wibble, wibble, gen, device)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        sq = corners + corners.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = wibbled_mean(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled_mean(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= decay
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    mn, _ = x.min(1)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    dsafe = delta.clamp_min(1e-12)
    h = torch.where(
        r == v, (g - b) / dsafe, torch.where(g == v, 2.0 + (b - r) / dsafe, 4.0 + (r - g) / dsafe)
    )
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return h, s, v


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    r = torch.stack((v, q, p, p, t, v), 1).gather(1, i.unsqueeze(1))
    g = torch.stack((t, v, v, q, p, p), 1).gather(1, i.unsqueeze(1))
    b = torch.stack((p, p, t, v, v, q), 1).gather(1, i.unsqueeze(1))
    return torch.cat((r, g, b), 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601), shape (N, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return torch.einsum("nchw,c->nhw", x, w).unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# noise


@register_corruption("gaussian_noise")
def _gaussian_noise(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    sigma = SEVERITY_PARAMS["gaussian_noise"][severity - 1]
    return x + sigma * _randn(tuple(x.shape), gen, x.device)


@register_corruption("shot_noise")
def _shot_noise(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    lam = float(SEVERITY_PARAMS["shot_noise"][severity - 1])
    rates = (x.clamp(0, 1) * lam).to(_dev(gen, x.device))
    return torch.poisson(rates, generator=gen).to(x.device) / lam


@register_corruption("impulse_noise")
def _impulse_noise(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    amount = SEVERITY_PARAMS["impulse_noise"][severity - 1]
    r = _rand(tuple(x.shape), gen, x.device)
    x = torch.where(r < amount / 2, torch.ones_like(x), x)  # salt
    return torch.where((r >= amount / 2) & (r < amount), torch.zeros_like(x), x)  # pepper


@register_corruption("speckle_noise")
def _speckle_noise(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    sigma = SEVERITY_PARAMS["speckle_noise"][severity - 1]
    return x + x * sigma * _randn(tuple(x.shape), gen, x.device)


# ---------------------------------------------------------------------------------------------
# blur


@register_corruption("gaussian_blur")
def _gaussian_blur_c(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    return _gaussian_blur(x, SEVERITY_PARAMS["gaussian_blur"][severity - 1], "nearest")


@register_corruption("glass_blur")
def _glass_blur(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    # The benchmark's generator scans rows/columns max_delta+1 .. side-max_delta from the bottom
    # right, draws (dy, dx) from {-max_delta, .., max_delta-1} and "swaps" two numpy views, which
    # copies the neighbour's pixel into the scanned one. The neighbour (up/left) is not yet
    # visited, so one pass equals a parallel gather from the pre-pass image: vectorised exactly.
    sigma, delta, iterations = SEVERITY_PARAMS["glass_blur"][severity - 1]
    n, c, h, w = x.shape
    x = torch.floor(_gaussian_blur(x, sigma, "nearest").clamp(0, 1) * 255) / 255  # uint8 step
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    scanned = (rows > delta) & (rows <= h - delta) & (cols > delta) & (cols <= w - delta)
    scanned = scanned.long().unsqueeze(1)
    for _ in range(iterations):
        d = _randint(-delta, delta, (n, 2, h, w), gen, x.device) * scanned
        ys = (rows + d[:, 0]).clamp(0, h - 1)
        xs = (cols + d[:, 1]).clamp(0, w - 1)
        idx = (ys * w + xs).view(n, 1, h * w).expand(n, c, h * w)
        x = x.reshape(n, c, h * w).gather(2, idx).view(n, c, h, w)
    return _gaussian_blur(x, sigma, "nearest")


@lru_cache(maxsize=16)
def _defocus_kernel(radius: float, alias_sigma: float) -> torch.Tensor:
    """Disk of ``radius`` (normalised) smoothed by a 3×3 Gaussian of ``alias_sigma``."""
    r = math.ceil(radius)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).double()
    disk /= disk.sum()
    g = torch.exp(-0.5 * (torch.arange(-1, 2, dtype=torch.float64) / alias_sigma) ** 2)
    g /= g.sum()
    # the full convolution (support grows by one pixel each side)
    k = F.conv2d(
        F.pad(disk.view(1, 1, 2 * r + 1, 2 * r + 1), (1, 1, 1, 1)),
        torch.outer(g, g).view(1, 1, 3, 3),
        padding=1,
    )
    return k[0, 0].float()


@register_corruption("defocus_blur")
def _defocus_blur(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    radius, alias = SEVERITY_PARAMS["defocus_blur"][severity - 1]
    return _filter2d(x, _defocus_kernel(float(radius), float(alias)), "mirror")


@register_corruption("motion_blur")
def _motion_blur_c(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    radius, sigma = SEVERITY_PARAMS["motion_blur"][severity - 1]
    angles = _uniform((x.shape[0],), -45.0, 45.0, gen, x.device)
    return _motion_blur(x, radius, sigma, angles)


@lru_cache(maxsize=32)
def _zoom_blur_operator(h: int, w: int, max_zoom: float) -> torch.Tensor:
    """(H·W, H·W) matrix: mean of the image and its centre zooms 1.00..max_zoom (step 0.01)."""
    zooms = torch.arange(1.0, max_zoom + 1e-6, 0.01, dtype=torch.float64).tolist()
    a = torch.stack([_zoom_matrix(h, z) for z in zooms])  # (Z, H, H)
    b = torch.stack([_zoom_matrix(w, z) for z in zooms])  # (Z, W, W)
    op = torch.einsum("zij,zkl->ikjl", a, b).reshape(h * w, h * w)  # sum of kron(a_z, b_z)
    op += torch.eye(h * w, dtype=torch.float64)
    return (op / (len(zooms) + 1)).float()


@register_corruption("zoom_blur")
def _zoom_blur(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    max_zoom = SEVERITY_PARAMS["zoom_blur"][severity - 1]
    n, c, h, w = x.shape
    if h * w <= 64 * 64:  # one GEMM with the whole (linear) operator
        op = _zoom_blur_operator(h, w, max_zoom).to(x.device)
        return (x.reshape(n * c, h * w) @ op.T).view(n, c, h, w)
    zooms = torch.arange(1.0, max_zoom + 1e-6, 0.01).tolist()
    out = x.clone()
    for z in zooms:
        out += _center_zoom(x, z)
    return out / (len(zooms) + 1)


# ---------------------------------------------------------------------------------------------
# weather


@register_corruption("fog")
def _fog(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    strength, decay = SEVERITY_PARAMS["fog"][severity - 1]
    n, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    plasma = _plasma(n, size, decay, gen, x.device)[:, None, :h, :w]
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * plasma) * max_val / (max_val + strength)


def _needles(seeds: torch.Tensor, direction: torch.Tensor, length: int = 7) -> torch.Tensor:
    """Draw a needle of ``length`` pixels through every seed (N, H, W) along its direction.

    ``direction`` (N, H, W) picks one of 8 angles (multiples of 22.5°); intensity falls off
    linearly towards the tips; overlapping needles keep the brightest value (scatter-max).
    """
    n, h, w = seeds.shape
    dev = seeds.device
    r = length // 2
    t = torch.arange(-r, r + 1, device=dev, dtype=torch.float32)  # (T,)
    ang = torch.arange(8, device=dev, dtype=torch.float32) * (math.pi / 8)
    oy = torch.round(t[None] * torch.sin(ang)[:, None]).long()  # (8, T)
    ox = torch.round(t[None] * torch.cos(ang)[:, None]).long()
    weight = 1.0 - t.abs() / (r + 1)
    ys = torch.arange(h, device=dev).view(1, 1, h, 1) + oy[direction].permute(0, 3, 1, 2)
    xs = torch.arange(w, device=dev).view(1, 1, 1, w) + ox[direction].permute(0, 3, 1, 2)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)  # (N, T, H, W)
    idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).reshape(n, -1)
    val = (seeds.unsqueeze(1) * weight.view(1, -1, 1, 1) * inside).reshape(n, -1)
    out = torch.zeros(n, h * w, device=dev)
    return out.scatter_reduce_(1, idx, val, reduce="amax").view(n, 1, h, w)


_FROST_BANK_SIZE = 16  # textures in the bank (the original draws from 5 photographs)


@lru_cache(maxsize=4)
def _frost_bank(side: int) -> torch.Tensor:
    """A fixed bank of procedural frost textures (B, side, side) in [0, 1], made once (CPU).

    Ice needles grow along the ridges ("veins") of a plasma fractal: needle seeds are sown
    densest on the veins and each grows along one of 8 directions; a second, smoother plasma
    adds patchy ice. Generated from a fixed seed, so every run sees the same bank.
    """
    gen = torch.Generator().manual_seed(20230224)
    n, dev = _FROST_BANK_SIZE, torch.device("cpu")
    veins = (1 - (2 * _plasma(n, side, 1.45, gen, dev) - 1).abs()) ** 5
    seeds = (_rand((n, side, side), gen, dev) < 0.35 * veins).float()
    direction = _randint(0, 8, (n, side, side), gen, dev)
    needles = _needles(seeds, direction)[:, 0]
    patches = _plasma(n, side, 1.8, gen, dev)
    tex = 0.5 * torch.maximum(veins, needles) + 0.2 * needles + 0.3 * patches + 0.15
    return _gaussian_blur(tex, 0.35).clamp(0, 1)


def _frost_texture(n: int, h: int, w: int, gen, device: torch.device) -> torch.Tensor:
    """Frost (N, 3, H, W): random crops (and flips) of the texture bank, tinted bluish-white."""
    pow2 = 1 << max(1, math.ceil(math.log2(max(h, w))))
    side = max(4 * pow2, 128) if pow2 <= 64 else 2 * pow2
    bank = _frost_bank(side).to(device)
    b = _randint(0, bank.shape[0], (n,), gen, device)
    oy = _randint(0, side - h + 1, (n,), gen, device)
    ox = _randint(0, side - w + 1, (n,), gen, device)
    flip = _randint(0, 2, (n, 2), gen, device).bool()
    ar_h = torch.arange(h, device=device)
    ar_w = torch.arange(w, device=device)
    rows = oy[:, None] + torch.where(flip[:, :1], h - 1 - ar_h, ar_h)  # (N, H)
    cols = ox[:, None] + torch.where(flip[:, 1:], w - 1 - ar_w, ar_w)  # (N, W)
    tex = bank[b[:, None, None], rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    tint = torch.tensor([0.86, 0.93, 1.0], device=device).view(1, 3, 1, 1)
    return tex * tint


@register_corruption("frost")
def _frost(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    img_w, frost_w = SEVERITY_PARAMS["frost"][severity - 1]
    n, _, h, w = x.shape
    return img_w * x + frost_w * _frost_texture(n, h, w, gen, x.device)


@register_corruption("snow")
def _snow(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    mean, std, zoom, thr, radius, sigma, blend = SEVERITY_PARAMS["snow"][severity - 1]
    n, _, h, w = x.shape
    layer = mean + std * _randn((n, 1, h, w), gen, x.device)
    layer = _center_zoom(layer, zoom)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer).clamp(0, 1)
    layer = torch.floor(layer * 255) / 255
    angles = _uniform((n,), -135.0, -45.0, gen, x.device)
    layer = _motion_blur(layer, radius, sigma, angles)
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def _edt(edges: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance (N, H, W) to the nearest True pixel of ``edges`` (N, H, W)."""
    n, h, w = edges.shape
    big = float(h + w) * 4
    cols = torch.arange(w, device=edges.device, dtype=torch.float32)
    rows = torch.arange(h, device=edges.device, dtype=torch.float32)
    dw = (cols.view(w, 1) - cols.view(1, w)).abs()  # (w, w')
    g = (dw.view(1, 1, w, w) + (~edges).float().view(n, h, 1, w) * big).amin(-1)  # (N, H, W)
    dh = (rows.view(h, 1) - rows.view(1, h)) ** 2  # (h, h')
    d2 = (g.view(n, 1, h, w) ** 2 + dh.view(1, h, h, 1)).amin(2)  # (N, H, W)
    return d2.sqrt()


def _equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of integer-valued (0..255) float maps (N, H, W)."""
    n = x.shape[0]
    v = x.reshape(n, -1).long().clamp(0, 255)
    hist = torch.zeros(n, 256, device=x.device).scatter_add_(
        1, v, torch.ones_like(v, dtype=torch.float)
    )
    total = v.shape[1]
    first = (hist > 0).float().argmax(1, keepdim=True)
    first_count = hist.gather(1, first)
    cdf = hist.cumsum(1) - first_count  # the first occupied level maps to 0
    scale = 255.0 / (total - first_count).clamp_min(1)
    lut = torch.round(cdf * scale).clamp(0, 255)
    levels = torch.arange(256, device=x.device).view(1, 256)
    lut = torch.where(levels <= first, torch.zeros_like(lut), lut)
    const = first_count == total  # a flat map stays as it is
    lut = torch.where(const, levels.float().expand(n, 256), lut)
    return lut.gather(1, v).view_as(x)


_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
_BOX3 = torch.full((3, 3), 1.0 / 9)


@register_corruption("spatter")
def _spatter(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    mean, std, sigma, thr, intensity, mud = SEVERITY_PARAMS["spatter"][severity - 1]
    n, _, h, w = x.shape
    liquid = mean + std * _randn((n, 1, h, w), gen, x.device)
    liquid = _gaussian_blur(liquid, sigma, "nearest")
    liquid = torch.where(liquid < thr, torch.zeros_like(liquid), liquid)
    if mud:
        m = _gaussian_blur((liquid > thr).float(), intensity, "nearest")
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        brown = torch.tensor([63.0, 42.0, 20.0], device=x.device).view(1, 3, 1, 1) / 255
        return x * (1 - m) + brown * m
    # water: embossed distance-to-edge map of the liquid blobs, in pale turquoise
    lq = torch.floor(liquid.clamp(0, 1) * 255)
    wet = lq[:, 0] > 0
    eroded = -F.max_pool2d(-_pad(wet.float().unsqueeze(1), 1, 1, "nearest"), 3, 1)[:, 0]
    edges = wet & (eroded < 0.5)  # inner boundary of the blobs (stands in for Canny)
    dist = _edt(edges).clamp(max=20.0).unsqueeze(1)
    dist = torch.floor(_filter2d(dist, _BOX3, "mirror"))
    dist = _equalize_hist(dist[:, 0]).unsqueeze(1)
    dist = torch.round(_filter2d(dist, _EMBOSS, "mirror")).clamp(0, 255)
    dist = _filter2d(dist, _BOX3, "mirror")
    m = lq * dist
    m = m / m.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) * intensity
    turquoise = torch.tensor([175.0, 238.0, 238.0], device=x.device).view(1, 3, 1, 1) / 255
    return x + m * turquoise


# ---------------------------------------------------------------------------------------------
# digital


@register_corruption("contrast")
def _contrast(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    c = SEVERITY_PARAMS["contrast"][severity - 1]
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


@register_corruption("brightness")
def _brightness(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    c = SEVERITY_PARAMS["brightness"][severity - 1]
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(h, s, (v + c).clamp(0, 1))


@register_corruption("saturate")
def _saturate(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    a, b = SEVERITY_PARAMS["saturate"][severity - 1]
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(h, (s * a + b).clamp(0, 1), v)


def _jpeg_roundtrip_pil(u8: torch.Tensor, quality: int) -> torch.Tensor:
    """Per-image JPEG encode/decode with Pillow (uint8 NCHW on CPU)."""
    import io

    import numpy as np
    from PIL import Image

    out = []
    for im in u8.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as dec:
            out.append(np.asarray(dec.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


@register_corruption("jpeg_compression")
def _jpeg(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    # torchvision's libjpeg-turbo round trip: the same bytes as Pillow's (the generator's) at
    # the same quality here, about twice as fast; Pillow is the fallback. The first call pays
    # for importing torchvision (seconds).
    quality = SEVERITY_PARAMS["jpeg_compression"][severity - 1]
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg, encode_jpeg

            decoded = torch.stack(decode_jpeg(encode_jpeg(list(u8), quality=quality)))
    except (ImportError, AttributeError, RuntimeError):
        decoded = _jpeg_roundtrip_pil(u8, quality)
    return decoded.to(x.device, torch.float32) / 255


@lru_cache(maxsize=64)
def _box_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of a 1-D box-filter resize (Pillow's BOX rule, 0/1 taps)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            t = (j - centre + 0.5) / filterscale
            if -0.5 < t <= 0.5:
                m[i, j] = 1.0
        m[i] /= m[i].sum()
    return m.float()


@register_corruption("pixelate")
def _pixelate(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    factor = SEVERITY_PARAMS["pixelate"][severity - 1]
    h, w = x.shape[-2:]
    sh, sw = max(int(h * factor), 1), max(int(w * factor), 1)
    rh = (_box_resize_matrix(sh, h) @ _box_resize_matrix(h, sh)).to(x.device)
    rw = (_box_resize_matrix(sw, w) @ _box_resize_matrix(w, sw)).to(x.device)
    return rh @ x @ rw.T


@register_corruption("elastic_transform")
def _elastic(x: torch.Tensor, severity: int, gen) -> torch.Tensor:
    fa, fs, fj = SEVERITY_PARAMS["elastic_transform"][severity - 1]
    n, _, h, w = x.shape
    side = min(h, w)
    alpha, sigma, jitter = fa * side, fs * side, fj * side
    dev = x.device
    # random affine: three points around the centre moved by up to ±jitter pixels
    cx, cy, s = float(w // 2), float(h // 2), float(side // 3)
    pts1 = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], device=dev)
    pts2 = pts1 + _uniform((n, 3, 2), -jitter, jitter, gen, dev)
    # inverse map (output -> source): solve [pts2, 1] @ A = pts1 for A (3x2) per image
    p2h = torch.cat((pts2, torch.ones(n, 3, 1, device=dev)), -1)
    inv = torch.linalg.solve(p2h, pts1.expand(n, 3, 2))  # (N, 3, 2)
    yy, xx = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    ones = torch.ones_like(xx)
    src = torch.einsum("hwk,nkj->nhwj", torch.stack((xx, yy, ones), -1), inv)
    grid = _grid(src[..., 0], src[..., 1], w, h, align=True)  # border: reflect about edge pixel
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    if alpha > 0:
        d = _uniform((n, 2, h, w), -1.0, 1.0, gen, dev)
        d = _gaussian_blur(d, sigma, "reflect", truncate=3.0) * alpha
        grid = _grid(xx + d[:, 0], yy + d[:, 1], w, h, align=False)  # reflect incl. the edge
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x
