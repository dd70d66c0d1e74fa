"""Throughput of the batched torch corruptions against a plain per-image NumPy/PIL loop.

For every corruption: images/s of ``rws_hub.datasets.corruptions.corrupt`` on batches of 32×32 images
(default 128, severity 5) and of a straightforward per-image reference written here with NumPy
and Pillow (the way the corruptions are usually scripted: one image at a time, Python loops where
the algorithm has them, e.g. glass blur's pixel scan). ``--check`` also compares the two: the
deterministic corruptions must agree to rounding, the random ones in their mean effect.

    .venv/bin/python benchmarks/bench_corruptions.py --data ../shared/data/cifar10/test.npz \
        --threads 1 --markdown

Prints a table (``--markdown`` for docs/corruptions.md) and writes JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from rws_hub.datasets import corruptions as C
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS, SEVERITY_PARAMS, corrupt

# ---------------------------------------------------------------------------------------------
# per-image NumPy / Pillow reference (float HWC images in [0, 1])

Ref = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
REFS: dict[str, Ref] = {}


def ref(name: str) -> Callable[[Ref], Ref]:
    def deco(fn: Ref) -> Ref:
        REFS[name] = fn
        return fn

    return deco


def P(name: str, severity: int):
    return SEVERITY_PARAMS[name][severity - 1]


def pad_idx(n: int, r: int, mode: str) -> np.ndarray:
    return C._pad_index(n, r, mode).numpy()


def blur(im: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0):
    """Separable Gaussian blur of an (H, W, ...) array."""
    if sigma <= 0:
        return im
    r = int(truncate * sigma + 0.5)
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    h, w = im.shape[:2]
    p = im[:, pad_idx(w, r, mode)]
    im = sum(k[j] * p[:, j : j + w] for j in range(len(k)))
    p = im[pad_idx(h, r, mode)]
    return sum(k[j] * p[j : j + h] for j in range(len(k)))


def filter2d(im: np.ndarray, kernel: np.ndarray, mode: str = "mirror") -> np.ndarray:
    kh, kw = kernel.shape
    h, w = im.shape[:2]
    p = im[pad_idx(h, kh // 2, mode)][:, pad_idx(w, kw // 2, mode)]
    return sum(
        kernel[i, j] * p[i : i + h, j : j + w] for i in range(kh) for j in range(kw) if kernel[i, j]
    )


def bilinear(im: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at float coordinates (clamped to the image)."""
    h, w = im.shape[:2]
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    top = im[y0, x0] * (1 - fx) + im[y0, x1] * fx
    bot = im[y1, x0] * (1 - fx) + im[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def reflect_coord(c: np.ndarray, n: int, about_edge_pixel: bool) -> np.ndarray:
    if about_edge_pixel:  # d c b | a b c d
        period = 2 * (n - 1)
        c = np.mod(c, period)
        return np.where(c > n - 1, period - c, c)
    period = 2 * n  # d c b a | a b c d, pixel centres at integers
    c = np.mod(c + 0.5, period)
    return np.where(c > n, period - c, c) - 0.5


def centre_zoom(im: np.ndarray, z: float) -> np.ndarray:
    h, w = im.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys = cy + (np.arange(h) - cy) / z
    xs = cx + (np.arange(w) - cx) / z
    return bilinear(im, ys[:, None].repeat(w, 1), xs[None, :].repeat(h, 0))


def motion(im: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    h, w = im.shape[:2]
    i = np.arange(2 * math.ceil(radius) + 1)
    k = np.exp(-(i**2) / (2 * sigma**2))
    i, k = i[k >= k.max() * 1e-4], k[k >= k.max() * 1e-4]
    k /= k.sum()
    a = math.radians(angle)
    out = np.zeros_like(im)
    for ii, kk in zip(i, k, strict=True):
        oy, ox = math.ceil(ii * math.sin(a) - 0.5), math.ceil(ii * math.cos(a) - 0.5)
        ys = np.clip(np.arange(h) + oy, 0, h - 1)
        xs = np.clip(np.arange(w) + ox, 0, w - 1)
        out += kk * im[ys][:, xs]
    return out


def plasma(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    m = np.zeros((size, size))
    step, wib = size, 100.0
    while step >= 2:
        half = step // 2
        c = m[0::step, 0::step]
        sq = c + np.roll(c, -1, 0)
        sq = sq + np.roll(sq, -1, 1)
        m[half::step, half::step] = sq / 4 + wib * rng.uniform(-wib, wib, sq.shape)
        dr, ul = m[half::step, half::step], m[0::step, 0::step]
        s1 = dr + np.roll(dr, 1, 0) + ul + np.roll(ul, -1, 1)
        m[0::step, half::step] = s1 / 4 + wib * rng.uniform(-wib, wib, s1.shape)
        s2 = dr + np.roll(dr, 1, 1) + ul + np.roll(ul, -1, 0)
        m[half::step, 0::step] = s2 / 4 + wib * rng.uniform(-wib, wib, s2.shape)
        step //= 2
        wib /= decay
    m -= m.min()
    return m / m.max()


def rgb2hsv(im: np.ndarray):
    r, g, b = im[..., 0], im[..., 1], im[..., 2]
    v = im.max(-1)
    delta = v - im.min(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(v > 0, delta / v, 0)
        h = np.where(
            r == v, (g - b) / delta, np.where(g == v, 2 + (b - r) / delta, 4 + (r - g) / delta)
        )
    h = np.where(delta > 0, (h / 6) % 1, 0)
    return h, s, v


def hsv2rgb(h, s, v) -> np.ndarray:
    i = np.floor(h * 6)
    f = h * 6 - i
    i = i.astype(int) % 6
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


@ref("gaussian_noise")
def _(im, s, rng):
    return im + rng.normal(0, P("gaussian_noise", s), im.shape)


@ref("shot_noise")
def _(im, s, rng):
    lam = P("shot_noise", s)
    return rng.poisson(im * lam) / lam


@ref("impulse_noise")
def _(im, s, rng):
    a = P("impulse_noise", s)
    u = rng.random(im.shape)
    return np.where(u < a / 2, 1.0, np.where(u < a, 0.0, im))


@ref("speckle_noise")
def _(im, s, rng):
    return im + im * rng.normal(0, P("speckle_noise", s), im.shape)


@ref("gaussian_blur")
def _(im, s, rng):
    return blur(im, P("gaussian_blur", s))


@ref("glass_blur")
def _(im, s, rng):
    sigma, delta, iters = P("glass_blur", s)
    x = np.floor(np.clip(blur(im, sigma), 0, 1) * 255)
    h, w = x.shape[:2]
    for _ in range(iters):  # the sequential scan, bottom-right to top-left
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=2)
                x[hh, ww] = x[hh + dy, ww + dx]  # what the swap of two array views does
    return blur(x / 255, sigma)


@ref("defocus_blur")
def _(im, s, rng):
    return filter2d(im, C._defocus_kernel(*map(float, P("defocus_blur", s))).numpy())


@ref("motion_blur")
def _(im, s, rng):
    radius, sigma = P("motion_blur", s)
    return motion(im, radius, sigma, rng.uniform(-45, 45))


@ref("zoom_blur")
def _(im, s, rng):
    zooms = np.arange(1.0, P("zoom_blur", s) + 1e-6, 0.01)
    out = im.copy()
    for z in zooms:
        out += centre_zoom(im, z)
    return out / (len(zooms) + 1)


@ref("fog")
def _(im, s, rng):
    strength, decay = P("fog", s)
    h, w = im.shape[:2]
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    mx = im.max()
    return (im + strength * plasma(size, decay, rng)[:h, :w, None]) * mx / (mx + strength)


@ref("frost")
def _(im, s, rng):
    a, b = P("frost", s)
    bank = C._frost_bank(128).numpy()
    h, w = im.shape[:2]
    k, y0, x0 = rng.integers(len(bank)), rng.integers(0, 129 - h), rng.integers(0, 129 - w)
    tex = bank[k, y0 : y0 + h, x0 : x0 + w, None] * np.array([0.86, 0.93, 1.0])
    return a * im + b * tex


@ref("snow")
def _(im, s, rng):
    mean, std, zoom, thr, radius, sigma, blend = P("snow", s)
    h, w = im.shape[:2]
    layer = centre_zoom(rng.normal(mean, std, (h, w, 1)), zoom)
    layer = np.floor(np.clip(np.where(layer < thr, 0, layer), 0, 1) * 255) / 255
    layer = motion(layer, radius, sigma, rng.uniform(-135, -45))
    gray = (im @ np.array([0.299, 0.587, 0.114]))[..., None]
    x = blend * im + (1 - blend) * np.maximum(im, gray * 1.5 + 0.5)
    return x + layer + layer[::-1, ::-1]


@ref("spatter")
def _(im, s, rng):
    mean, std, sigma, thr, inten, mud = P("spatter", s)
    h, w = im.shape[:2]
    liquid = blur(rng.normal(mean, std, (h, w)), sigma)
    liquid[liquid < thr] = 0
    if mud:
        m = blur((liquid > thr).astype(float), inten)
        m[m < 0.8] = 0
        return im * (1 - m[..., None]) + np.array([63, 42, 20]) / 255 * m[..., None]
    lq = np.floor(np.clip(liquid, 0, 1) * 255)
    wet = lq > 0
    pw = np.pad(wet, 1, mode="edge")
    eroded = np.ones_like(wet)
    for dy in range(3):
        for dx in range(3):
            eroded &= pw[dy : dy + h, dx : dx + w]
    ey, ex = np.nonzero(wet & ~eroded)
    if len(ey):
        yy, xx = np.mgrid[0:h, 0:w]
        d = np.sqrt((yy[..., None] - ey) ** 2 + (xx[..., None] - ex) ** 2).min(-1)
    else:
        d = np.full((h, w), 1e4)
    d = np.floor(filter2d(np.minimum(d, 20.0), np.full((3, 3), 1 / 9)))
    vals, counts = np.unique(d, return_counts=True)  # histogram equalisation
    if len(vals) > 1:
        cdf = np.cumsum(counts) - counts[0]
        lut = np.round(cdf * 255.0 / (d.size - counts[0]))
        d = lut[np.searchsorted(vals, d)]
    emboss = np.array([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]])
    d = filter2d(np.clip(np.round(filter2d(d, emboss)), 0, 255), np.full((3, 3), 1 / 9))
    m = lq * d
    m = m / max(m.max(), 1e-12) * inten
    return im + m[..., None] * np.array([175, 238, 238]) / 255


@ref("contrast")
def _(im, s, rng):
    m = im.mean((0, 1), keepdims=True)
    return (im - m) * P("contrast", s) + m


@ref("brightness")
def _(im, s, rng):
    h, sat, v = rgb2hsv(im)
    return hsv2rgb(h, sat, np.clip(v + P("brightness", s), 0, 1))


@ref("saturate")
def _(im, s, rng):
    a, b = P("saturate", s)
    h, sat, v = rgb2hsv(im)
    return hsv2rgb(h, np.clip(sat * a + b, 0, 1), v)


@ref("jpeg_compression")
def _(im, s, rng):
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8)).save(
        buf, "JPEG", quality=P("jpeg_compression", s)
    )
    return np.asarray(Image.open(buf).convert("RGB")) / 255.0


@ref("pixelate")
def _(im, s, rng):
    h, w = im.shape[:2]
    f = P("pixelate", s)
    pil = Image.fromarray(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8))
    pil = pil.resize((int(w * f), int(h * f)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(pil) / 255.0


@ref("elastic_transform")
def _(im, s, rng):
    fa, fs, fj = P("elastic_transform", s)
    h, w = im.shape[:2]
    side = min(h, w)
    alpha, sigma, jitter = fa * side, fs * side, fj * side
    cx, cy, sq = w // 2, h // 2, side // 3
    pts1 = np.array([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], float)
    pts2 = pts1 + rng.uniform(-jitter, jitter, pts1.shape)
    inv = np.linalg.solve(np.c_[pts2, np.ones(3)], pts1)  # output -> source
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    src = np.stack([xx, yy, np.ones_like(xx)], -1) @ inv
    x = bilinear(im, reflect_coord(src[..., 1], h, True), reflect_coord(src[..., 0], w, True))
    if alpha > 0:
        dx = blur(rng.uniform(-1, 1, (h, w)), sigma, "reflect", 3.0) * alpha
        dy = blur(rng.uniform(-1, 1, (h, w)), sigma, "reflect", 3.0) * alpha
        x = bilinear(x, reflect_coord(yy + dy, h, False), reflect_coord(xx + dx, w, False))
    return x


def reference(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """The per-image loop: uint8 NHWC in, float NHWC in [0, 1] out."""
    rng = np.random.default_rng(seed)
    fn = REFS[name]
    return np.stack([np.clip(fn(im / 255.0, severity, rng), 0, 1) for im in images])


# ---------------------------------------------------------------------------------------------


def rate(fn: Callable[[], object], n_images: int, min_seconds: float) -> float:
    fn()  # warm-up (caches, lazy imports)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds and reps >= 2:
            return reps * n_images / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/cifar10/test.npz")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--severity", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum timing per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=None, help="comma-separated subset")
    ap.add_argument("--check", action="store_true", help="also compare torch and reference")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rws_hub.datasets.arrays import load_images

    data = load_images(args.data, split="test").subset(args.batch)
    u8 = data.x
    x = (u8.float() / 255).to(args.device)
    nhwc = u8.permute(0, 2, 3, 1).numpy()
    names = args.only.split(",") if args.only else list(ALL_CORRUPTIONS)
    rows = []
    for name in names:
        g = torch.Generator().manual_seed(0)

        def run_torch(name: str = name, g: torch.Generator = g) -> None:
            corrupt(x, name, args.severity, generator=g)
            if x.is_cuda:
                torch.cuda.synchronize()

        def run_reference(name: str = name) -> None:
            reference(nhwc, name, args.severity)

        t = rate(run_torch, len(x), args.seconds)
        r = rate(run_reference, len(x), args.seconds)
        row = {"corruption": name, "torch_img_s": t, "reference_img_s": r, "ratio": t / r}
        if args.check:
            ours = corrupt(x, name, args.severity, generator=torch.Generator().manual_seed(0))
            ours = ours.cpu().permute(0, 2, 3, 1).numpy()
            theirs = reference(nhwc, name, args.severity)
            clean = nhwc / 255.0
            row["max_abs_diff"] = float(np.abs(ours - theirs).max())
            row["effect_torch"] = float(np.abs(ours - clean).mean())
            row["effect_reference"] = float(np.abs(theirs - clean).mean())
        rows.append(row)
        msg = f"{name:18s} torch {t:9,.0f} img/s   reference {r:8,.0f} img/s   x{t / r:6.1f}"
        if args.check:
            msg += (
                f"   max|diff| {row['max_abs_diff']:.3f}   mean|y-x| "
                f"{row['effect_torch']:.4f} vs {row['effect_reference']:.4f}"
            )
        print(msg, flush=True)

    if args.markdown:
        check = args.check
        head = "| corruption | torch batched (img/s) | per-image NumPy/PIL (img/s) | ratio |"
        head += " mean abs change: torch / reference |" if check else ""
        print("\n" + head)
        print("|" + " --- |" * (5 if check else 4))
        for r in rows:
            line = (
                f"| {r['corruption']} | {r['torch_img_s']:,.0f} | {r['reference_img_s']:,.0f} "
                f"| {r['ratio']:.1f}× |"
            )
            if check:
                line += f" {r['effect_torch']:.4f} / {r['effect_reference']:.4f} |"
            print(line)
    if args.json:
        meta = {
            "batch": args.batch,
            "severity": args.severity,
            "threads": args.threads,
            "device": args.device,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "python": platform.python_version(),
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
