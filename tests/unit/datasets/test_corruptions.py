"""The 19 corruptions: contract (shape, dtype, range, device, seeds, refusals) and severity order."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rws_hub.datasets.corruptions import (
    ALL_CORRUPTIONS,
    CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITY_PARAMS,
    STANDARD_CORRUPTIONS,
    corrupt,
    corrupt_uint8,
    register_corruption,
    resolve_corruptions,
)

# corruptions that draw no random numbers
DETERMINISTIC = {
    "gaussian_blur",
    "defocus_blur",
    "zoom_blur",
    "contrast",
    "brightness",
    "saturate",
    "jpeg_compression",
    "pixelate",
}


def synth(n: int = 32, seed: int = 0, size: int = 32) -> torch.Tensor:
    """Natural-ish images: smooth colour fields plus blocky mid-frequency detail, in [0.15, 0.85]."""
    g = torch.Generator().manual_seed(seed)
    low = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bicubic")
    mid = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="nearest")
    return (0.15 + 0.7 * (0.6 * low + 0.4 * mid)).clamp(0, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return synth()


# ---------------------------------------------------------------------------------------------
# registry


def test_names_and_groups() -> None:
    assert len(ALL_CORRUPTIONS) == 19 and len(set(ALL_CORRUPTIONS)) == 19
    assert set(CORRUPTIONS) >= set(ALL_CORRUPTIONS)
    assert len(STANDARD_CORRUPTIONS) == 15 and len(EXTRA_CORRUPTIONS) == 4
    assert set(STANDARD_CORRUPTIONS) | set(EXTRA_CORRUPTIONS) == set(ALL_CORRUPTIONS)
    assert set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert ALL_CORRUPTIONS[0] == "gaussian_noise" and ALL_CORRUPTIONS[-1] == "elastic_transform"
    assert all(len(SEVERITY_PARAMS[n]) == 5 for n in ALL_CORRUPTIONS)
    assert resolve_corruptions("standard") == STANDARD_CORRUPTIONS
    assert resolve_corruptions("all") == ALL_CORRUPTIONS
    assert resolve_corruptions("fog, snow") == ("fog", "snow")
    with pytest.raises(ValueError, match="known"):
        resolve_corruptions("fog,rain")


def test_register_corruption() -> None:
    @register_corruption("_invert_for_test")
    def _invert(x: torch.Tensor, severity: int, generator: torch.Generator | None) -> torch.Tensor:
        return 1 - x

    @register_corruption("_identity_for_test")
    def _identity(
        x: torch.Tensor, severity: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        return x

    try:
        x = torch.rand(2, 3, 8, 8)
        assert torch.allclose(corrupt(x, "_invert_for_test", 1), 1 - x)
        loud = x * 3  # out of range: the result is clamped, the caller's tensor is not
        assert float(corrupt(loud, "_identity_for_test", 1).max()) <= 1.0
        assert torch.equal(loud, x * 3)
    finally:
        del CORRUPTIONS["_invert_for_test"], CORRUPTIONS["_identity_for_test"]


def test_refusals() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="gaussian_noise"):  # lists the known names
        corrupt(x, "rain")
    for bad in (0, 6, -1, 2.5, "3", True, None):
        with pytest.raises(ValueError, match=r"1\.\.5"):
            corrupt(x, "fog", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float"):
        corrupt((x * 255).to(torch.uint8), "fog", 1)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        corrupt(torch.rand(2, 1, 8, 8), "fog", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt_uint8(x, "fog", 1)
    assert corrupt(x, "fog", np.int64(2)).shape == x.shape  # integer-like severities are fine


# ---------------------------------------------------------------------------------------------
# the contract, per corruption


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_contract(name: str, batch: torch.Tensor) -> None:
    x = batch[:8]
    before = x.clone()
    for severity in range(1, 6):
        y = corrupt(x, name, severity, generator=gen(1))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert torch.isfinite(y).all()
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert not torch.equal(y, x), f"{name} severity {severity} changed nothing"
    assert torch.equal(x, before), "the input must not be modified"
    # reproducible from a seed; different seeds differ (for the random corruptions)
    a = corrupt(x, name, 5, generator=gen(7))
    assert torch.equal(a, corrupt(x, name, 5, generator=gen(7)))
    b = corrupt(x, name, 5, generator=gen(8))
    assert torch.equal(a, b) == (name in DETERMINISTIC)
    # other dtypes, a single image, other sizes
    h = corrupt(x.double(), name, 3, generator=gen(1))
    assert h.dtype == torch.float64 and h.shape == x.shape
    assert corrupt(x[0], name, 3, generator=gen(1)).shape == x[0].shape
    odd = torch.rand(2, 3, 20, 36)
    assert corrupt(odd, name, 5, generator=gen(1)).shape == odd.shape
    u8 = (x * 255).round().to(torch.uint8)
    out = corrupt_uint8(u8, name, 3, generator=gen(1))
    assert out.dtype == torch.uint8 and out.shape == u8.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_cuda_matches_cpu(name: str, batch: torch.Tensor) -> None:
    x = batch[:8]
    y_cpu = corrupt(x, name, 5, generator=gen(3))
    y_gpu = corrupt(x.cuda(), name, 5, generator=gen(3))  # a CPU generator: same draws
    assert y_gpu.device.type == "cuda"
    tol = 2 / 255 if name == "jpeg_compression" else 1e-4
    # zero-width ties (e.g. thresholds) may flip a few pixels; almost all must agree
    close = (y_gpu.cpu() - y_cpu).abs() <= tol
    assert close.float().mean() > 0.99


# ---------------------------------------------------------------------------------------------
# severity order: a statistic that the published parameters make monotone


def mad(y: torch.Tensor, x: torch.Tensor) -> float:
    """Mean absolute difference from the clean images."""
    return float((y - x).abs().mean())


def stats(name: str, x: torch.Tensor, stat, seed: int = 0) -> list[float]:
    return [stat(corrupt(x, name, s, generator=gen(seed)), x) for s in range(1, 6)]


def strictly_increasing(v: list[float]) -> bool:
    return all(a < b for a, b in zip(v, v[1:], strict=False))


MAD_MONOTONE = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "gaussian_blur",
    "defocus_blur",
    "zoom_blur",
    "fog",
    "snow",
    "contrast",
    "brightness",
    "jpeg_compression",
)


@pytest.mark.parametrize("name", MAD_MONOTONE)
def test_severity_grows_mean_abs_difference(name: str, batch: torch.Tensor) -> None:
    v = stats(name, batch, mad)
    assert strictly_increasing(v), v


def test_severity_motion_blur(batch: torch.Tensor) -> None:
    # severities 3 and 4 differ only in radius (6 vs 8) at sigma 2, where the extra taps weigh
    # < 1e-7: equal up to float noise; the rest grows
    v = stats("motion_blur", batch, mad)
    assert v[0] < v[1] < v[2] and abs(v[3] - v[2]) < 1e-6 and v[3] < v[4], v


def test_severity_glass_blur(batch: torch.Tensor) -> None:
    # sigma grows within one pass (1 < 2 < 3) and within two passes (4 < 5): smoother images;
    # a second shuffling pass at the same sigma (2 -> 4, 3 -> 5) moves more pixels
    def roughness(y: torch.Tensor, x: torch.Tensor) -> float:
        return float((y[..., 1:] - y[..., :-1]).abs().mean())

    r = stats("glass_blur", batch, roughness)
    assert r[0] > r[1] > r[2] and r[3] > r[4], r
    d = stats("glass_blur", batch, mad)
    assert d[3] > d[1] and d[4] > d[2], d


def test_severity_frost(batch: torch.Tensor) -> None:
    # the frost-to-image weight ratio grows (0.2, 0.3, 0.44, 0.47, 0.6): less of the image remains
    def decorrelation(y: torch.Tensor, x: torch.Tensor) -> float:
        a, b = y - y.mean(), x - x.mean()
        return 1 - float((a * b).sum() / (a.norm() * b.norm()))

    v = stats("frost", batch, decorrelation)
    assert strictly_increasing(v), v


def test_severity_spatter(batch: torch.Tensor) -> None:
    # severities 1-3 are water, 4-5 mud: grows within each kind
    v = stats("spatter", batch, mad)
    assert v[0] < v[1] < v[2] and v[3] < v[4], v


def test_severity_saturate(batch: torch.Tensor) -> None:
    # saturation x0.3, x0.1 (duller), then x1.5, x2+0.1, x2.5+0.2 (more vivid)
    def mean_saturation(y: torch.Tensor, x: torch.Tensor | None = None) -> float:
        mx, mn = y.amax(1), y.amin(1)
        return float(((mx - mn) / mx.clamp_min(1e-6)).mean())

    s = stats("saturate", batch, mean_saturation)
    clean = mean_saturation(batch)
    assert s[1] < s[0] < clean < s[2] < s[3] < s[4], (clean, s)


def test_severity_pixelate() -> None:
    # a box resize to side int(32·f) and back leaves exactly 32 - int(32·f) repeated columns
    x = torch.rand(4, 3, 32, 32, generator=gen(0))

    def repeated_columns(y: torch.Tensor, x: torch.Tensor) -> float:
        return float((y[..., 1:] == y[..., :-1]).all(dim=-2).float().sum(-1).mean())

    v = stats("pixelate", x, repeated_columns)
    assert v == [32 - int(32 * f) for f in SEVERITY_PARAMS["pixelate"]], v


def test_severity_elastic() -> None:
    # on linear ramps an affine warp stays linear: the mean |Laplacian| measures the elastic part,
    # which grows with alpha / sigma (0 at severity 1)
    yy, xx = torch.meshgrid(
        torch.linspace(0.2, 0.8, 32), torch.linspace(0.2, 0.8, 32), indexing="ij"
    )
    ramp = torch.stack((xx, yy, (xx + yy) / 2)).unsqueeze(0).repeat(16, 1, 1, 1)

    def curvature(y: torch.Tensor, x: torch.Tensor) -> float:
        c = y[..., 1:-1, 1:-1]
        lap = 4 * c - y[..., :-2, 1:-1] - y[..., 2:, 1:-1] - y[..., 1:-1, :-2] - y[..., 1:-1, 2:]
        return float(lap[..., 7:-7, 7:-7].abs().mean())  # the centre: no border reflections

    v = stats("elastic_transform", ramp, curvature)
    # severity 1 is affine only; at 2 the field is so smooth (sigma 6.4 px, alpha 1.6 px) that it
    # is nearly affine too; from there on the elastic part grows
    assert v[0] < 1e-4 and v[1] < 1e-4 and strictly_increasing(v[1:]), v


# ---------------------------------------------------------------------------------------------
# against independent references


def test_pixelate_matches_pillow_box() -> None:
    from PIL import Image

    x = (torch.rand(4, 32, 32, 3, generator=gen(2)) * 255).to(torch.uint8).numpy()
    for s, f in enumerate(SEVERITY_PARAMS["pixelate"], 1):
        side = int(32 * f)
        ref = np.stack(
            [
                np.asarray(
                    Image.fromarray(im).resize((side, side), Image.BOX).resize((32, 32), Image.BOX)
                )
                for im in x
            ]
        )
        ours = corrupt_uint8(torch.from_numpy(x).permute(0, 3, 1, 2), "pixelate", s)
        diff = np.abs(ours.permute(0, 2, 3, 1).numpy().astype(int) - ref.astype(int))
        assert diff.max() <= 1, (s, diff.max())


def test_hsv_corruptions_match_colorsys() -> None:
    x = torch.rand(1, 3, 4, 4, generator=gen(4))
    px = x[0].permute(1, 2, 0).reshape(-1, 3).tolist()
    for name, severity in (("brightness", 5), ("saturate", 5), ("saturate", 1)):
        y = corrupt(x, name, severity)[0].permute(1, 2, 0).reshape(-1, 3)
        for (r, g, b), got in zip(px, y.tolist(), strict=True):
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            if name == "brightness":
                v = min(max(v + SEVERITY_PARAMS[name][severity - 1], 0), 1)
            else:
                a, c = SEVERITY_PARAMS[name][severity - 1]
                s = min(max(s * a + c, 0), 1)
            assert np.allclose(colorsys.hsv_to_rgb(h, s, v), got, atol=1e-5)


def test_glass_blur_equals_the_sequential_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    # the generator's pass: scan rows/cols 31..2 from the bottom right; x[h, w] = x[h+dy, w+dx]
    # with (dy, dx) in {-1, 0} (its "swap" of two array views is this copy). Feed both the same
    # offsets and compare exactly.
    import rws_hub.datasets.corruptions as C

    x = synth(3, 5)
    offsets = torch.randint(-1, 1, (3, 2, 32, 32), generator=gen(9))
    monkeypatch.setattr(C, "_randint", lambda low, high, shape, g, device: offsets.clone())
    sigma = SEVERITY_PARAMS["glass_blur"][0][0]
    ours = corrupt(x, "glass_blur", 1)

    start = torch.floor(C._gaussian_blur(x, sigma).clamp(0, 1) * 255) / 255
    ref = start.permute(0, 2, 3, 1).numpy().copy()
    d = offsets.numpy()
    for n in range(3):
        for h in range(31, 1, -1):
            for w in range(31, 1, -1):
                # a and b are views, as in the generator: this "swap" copies a into (h, w)
                a, b = ref[n, h + d[n, 0, h, w], w + d[n, 1, h, w]], ref[n, h, w]
                ref[n, h, w], ref[n, h + d[n, 0, h, w], w + d[n, 1, h, w]] = a, b
    expected = C._gaussian_blur(torch.from_numpy(ref).permute(0, 3, 1, 2), sigma).clamp(0, 1)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_jpeg_matches_pillow(batch: torch.Tensor) -> None:
    from rws_hub.datasets.corruptions import _jpeg_roundtrip_pil

    u8 = (batch[:4] * 255).round().to(torch.uint8)
    for s, q in enumerate(SEVERITY_PARAMS["jpeg_compression"], 1):
        ref = _jpeg_roundtrip_pil(u8, q)
        ours = corrupt_uint8(u8, "jpeg_compression", s)
        assert (ours.int() - ref.int()).abs().max() <= 1, s


def test_formulas_of_simple_corruptions(batch: torch.Tensor) -> None:
    x = batch[:4]
    c = SEVERITY_PARAMS["contrast"][4]
    m = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(corrupt(x, "contrast", 5), ((x - m) * c + m).clamp(0, 1), atol=1e-6)
    # gaussian noise: residual std equals sigma (no clipping in [0.15, 0.85] at 4 sigma)
    big = synth(64, 1)
    r = corrupt(big, "gaussian_noise", 3, generator=gen(0)) - big
    assert abs(float(r.std()) - SEVERITY_PARAMS["gaussian_noise"][2]) < 0.002
    # impulse noise: about `amount` of the values are set to 0 or 1
    y = corrupt(big, "impulse_noise", 5, generator=gen(0))
    frac = float(((y == 0) | (y == 1)).float().mean())
    assert abs(frac - SEVERITY_PARAMS["impulse_noise"][4]) < 0.005
    # shot noise is unbiased
    assert abs(float((corrupt(big, "shot_noise", 5, generator=gen(0)) - big).mean())) < 0.002
    # zoom blur keeps the centre pixel's neighbourhood and a constant image unchanged
    flat = torch.full((1, 3, 32, 32), 0.4)
    for name in ("zoom_blur", "gaussian_blur", "defocus_blur", "motion_blur", "pixelate"):
        assert torch.allclose(corrupt(flat, name, 5, generator=gen(0)), flat, atol=1e-5), name
