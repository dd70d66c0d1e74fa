"""Request parsing: every accepted form, and every refusal with its status and message."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rws_hub.core.mix import Mix
from rws_hub.errors import RequestError
from rws_hub.inference.parsing import InferenceRequest, RequestLimits, RequestParser, decode_image

KNOWN = {"gaussian_noise": 1.0, "fog": 0.5, "contrast": 0.8}


@pytest.fixture
def parser() -> RequestParser:
    return RequestParser(known=KNOWN, num_classes=10, max_alpha=3.0)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb(w: int = 32, h: int = 32, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def status_of(parser: RequestParser, body, **kw) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        parser.parse(body, **kw)
    return info.value.status, str(info.value)


# -- accepted forms ----------------------------------------------------------------------


def test_json_dict_bytes_and_text_agree(parser):
    img = rgb()
    obj = {"image": b64(encode(img)), "signatures": {"fog": 1.0, "gaussian_noise": 0.5}, "top_k": 3}
    a = parser.parse(obj)
    b = parser.parse(json.dumps(obj).encode(), content_type="application/json; charset=utf-8")
    c = parser.parse(json.dumps(obj), content_type="application/json")
    d = parser.parse(json.dumps(obj).encode())  # no Content-Type: sniffed
    for r in (a, b, c, d):
        assert isinstance(r, InferenceRequest)
        assert r.mix == Mix({"fog": 1.0, "gaussian_noise": 0.5}) and r.top_k == 3
        torch.testing.assert_close(r.image, a.image, atol=0, rtol=0)
    assert a.image.shape == (3, 32, 32) and a.image.dtype == torch.float32
    want = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(a.image, want, atol=0, rtol=0)  # 32x32 is not resampled


@pytest.mark.parametrize(
    ("signatures", "want"),
    [
        (None, {}),
        ([], {}),
        ({}, {}),
        (["fog", "contrast"], {"fog": 0.5, "contrast": 0.8}),  # default alphas
        ("fog:1,gaussian_noise:0.25", {"fog": 1.0, "gaussian_noise": 0.25}),
        ({"fog": 0}, {}),  # zero alpha = not applied
    ],
)
def test_signature_forms(parser, signatures, want):
    r = parser.parse({"image": b64(encode(rgb())), "signatures": signatures})
    assert r.mix == Mix(want)
    assert r.top_k == 5


def test_missing_signatures_is_clean_and_data_url(parser):
    r = parser.parse({"image": "data:image/png;base64," + b64(encode(rgb()))})
    assert r.mix == Mix() and r.top_k == 5


def test_raw_bytes_with_query(parser):
    data = encode(rgb(), "JPEG", quality=90)
    r = parser.parse(
        bytearray(data),
        content_type="image/jpeg",
        query={"signatures": b"gaussian_noise:1,fog:0.5", "top_k": "2"},
    )
    assert r.mix == Mix({"gaussian_noise": 1.0, "fog": 0.5}) and r.top_k == 2
    r = parser.parse(data, content_type="application/octet-stream")
    assert r.mix == Mix() and r.top_k == 5
    r = parser.parse(data)  # no Content-Type: image sniffed
    assert r.image.shape == (3, 32, 32)


def test_auto_only_with_detector(parser):
    obj = {"image": b64(encode(rgb())), "signatures": "auto"}
    status, msg = status_of(parser, obj)
    assert status == 400 and "detector" in msg
    with_detector = RequestParser(known=KNOWN, num_classes=10, auto=True)
    assert with_detector.parse(obj).mix == "auto"


@pytest.mark.parametrize(
    "mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "I;16", "I", "F", "PA", "YCbCr"]
)
def test_any_mode_becomes_rgb(parser, mode):
    base = rgb(40, 40)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        assert img.mode.startswith("I;16")
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.float32) / 255.0, "F")
    elif mode == "PA":
        img = base.convert("P")
        img = img.convert("PA") if hasattr(Image, "Palette") else img
    else:
        img = base.convert(mode)
    fmt = "TIFF" if mode in ("I;16", "I", "F", "CMYK", "YCbCr", "PA") else "PNG"
    if mode == "YCbCr":
        fmt = "JPEG"
    r = parser.parse(encode(img, fmt), content_type="image/" + fmt.lower())
    assert r.image.shape == (3, 32, 32)
    assert float(r.image.min()) >= 0 and float(r.image.max()) <= 1
    if mode in ("L", "I;16", "I", "F", "1"):
        torch.testing.assert_close(r.image[0], r.image[1])  # gray replicated
    if mode in ("I;16", "F"):
        gray = decode_image(encode(base.convert("L")), (32, 32))
        torch.testing.assert_close(r.image, gray, atol=2 / 255, rtol=0)


def test_animated_gif_first_frame(parser):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r = parser.parse(buf.getvalue(), content_type="image/gif")
    assert r.image[0].mean() > 0.9 and r.image[2].mean() < 0.1


def test_resize_shorter_side_and_center_crop():
    # 64x32 (w x h): left half black, middle white, right black -> the crop keeps the middle
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, 16:48] = 255
    img = decode_image(encode(Image.fromarray(arr)), (32, 32))
    assert img.shape == (3, 32, 32) and img.min() > 0.99
    big = decode_image(encode(rgb(320, 200)), (32, 32))
    assert big.shape == (3, 32, 32)


# -- refusals ----------------------------------------------------------------------------


def test_bad_images(parser):
    png = encode(rgb())
    cases = {
        "not base64": ({"image": "%%%not-base64%%%"}, {}, 400, "base64"),
        "empty image": ({"image": ""}, {}, 400, "empty"),
        "not an image": ({"image": b64(b"hello, I am text")}, {}, 400, "not an image"),
        "truncated png": ({"image": b64(png[: len(png) // 2])}, {}, 400, "truncated"),
        "zero-byte body": (b"", {"content_type": "image/png"}, 400, "0 bytes"),
        "tiny image": ({"image": b64(encode(rgb(1, 1)))}, {}, 400, "at least"),
        "image not str": ({"image": [1, 2, 3]}, {}, 400, "base64 string"),
        "missing image": ({"signatures": None}, {}, 400, "missing 'image'"),
    }
    for name, (body, kw, want, text) in cases.items():
        status, msg = status_of(parser, body, **kw)
        assert status == want and text in msg, (name, status, msg)
    jpeg = encode(rgb(64, 64), "JPEG")
    status, msg = status_of(parser, jpeg[: len(jpeg) // 2], content_type="image/jpeg")
    assert status == 400 and "truncated" in msg


def test_size_limits():
    small = RequestParser(
        known=KNOWN, num_classes=10, limits=RequestLimits(max_body_bytes=2000, max_pixels=100_000)
    )
    big_png = encode(rgb(64, 64))  # ~12 KB of noise
    assert status_of(small, big_png, content_type="image/png")[0] == 413
    status, msg = status_of(small, {"image": b64(big_png) * 2})
    assert status == 413 and "base64" in msg
    # decompression bomb: a tiny file that claims many pixels is refused before decoding
    bomb = encode(Image.new("L", (2000, 2000)), optimize=True)
    assert len(bomb) < 20_000
    few_pixels = RequestParser(
        known=KNOWN, num_classes=10, limits=RequestLimits(max_pixels=100_000)
    )
    status, msg = status_of(few_pixels, bomb, content_type="image/png")
    assert status == 413 and "pixels" in msg
    default = RequestParser(known=KNOWN, num_classes=10)
    huge = encode(Image.new("1", (10000, 10000)))
    status, msg = status_of(default, huge, content_type="image/png")
    assert status == 413 and "pixels" in msg


@pytest.mark.parametrize(
    ("signatures", "text"),
    [
        ({"snow": 1.0}, "unknown signature 'snow'; known: contrast, fog, gaussian_noise"),
        ({"fog": float("nan")}, "finite"),
        ({"fog": float("inf")}, "finite"),
        ({"fog": -1.0}, "negative"),
        ({"fog": 3.5}, "above the maximum"),
        ({"fog": "1"}, "must be a number"),
        ({"fog": True}, "must be a number"),
        (["fog", "fog"], "twice"),
        (42, "must be an object"),
        ([["fog"]], "pairs"),
        ("fog:abc", "not a number"),
        ("\u00e9t\u00e9:1", "unknown signature"),
    ],
)
def test_bad_mixes(parser, signatures, text):
    status, msg = status_of(parser, {"image": b64(encode(rgb())), "signatures": signatures})
    assert status == 400 and text in msg, msg


def test_bad_mix_in_query(parser):
    status, msg = status_of(
        parser, encode(rgb()), content_type="image/png", query={"signatures": "fog:nan"}
    )
    assert status == 400 and "finite" in msg


@pytest.mark.parametrize(
    ("top_k", "text"),
    [
        (0, "between 1 and 10"),
        (11, "between 1 and 10"),
        (-3, "between"),
        ("3", "integer"),
        (2.5, "integer"),
        (True, "integer"),
        (None, None),
    ],
)
def test_top_k(parser, top_k, text):
    obj = {"image": b64(encode(rgb())), "top_k": top_k}
    if text is None:
        assert parser.parse(obj).top_k == 5
    else:
        status, msg = status_of(parser, obj)
        assert status == 400 and text in msg
    assert parser.parse({"image": b64(encode(rgb())), "top_k": 10.0}).top_k == 10
    status, msg = status_of(parser, encode(rgb()), content_type="image/png", query={"top_k": "x"})
    assert status == 400 and "integer" in msg
    # digits that str.isdigit() accepts but int() does not (the gateway refuses non-ASCII
    # headers before they get here; under KServe or --no-gateway they reach the parser)
    for digits in ("\u00b2", "\u0663", "1\u00b2"):
        status, msg = status_of(
            parser, encode(rgb()), content_type="image/png", query={"top_k": digits}
        )
        assert status == 400 and "top_k" in msg, (digits, msg)


def test_a_form_decoded_by_the_server_is_415(parser):
    """TorchServe decodes a form-encoded body itself and hands the handler no body: the answer
    names the cause (behind rws serve's gateway such bodies never get here; under KServe or
    --no-gateway they do)."""
    status, msg = status_of(parser, None, content_type="application/x-www-form-urlencoded")
    assert status == 415 and "sent as a form" in msg and "Content-Type: image/png" in msg
    status, msg = status_of(parser, None, content_type="image/png")
    assert status == 400 and "no body" in msg


def test_bad_json(parser):
    png64 = b64(encode(rgb()))
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "must be an object"),
        (b'"just a string"', "application/json", 400, "must be an object"),
        (b"\xff\xfe{}", "application/json", 400, "UTF-8"),
        (
            f'{{"image": "{png64}", "image": "{png64}"}}'.encode(),
            "application/json",
            400,
            "duplicate key",
        ),
        (
            json.dumps({"image": png64, "extra": 1}).encode(),
            "application/json",
            400,
            "unknown field",
        ),
        (
            b'{"image": "x", "signatures": ' + b"[" * 50 + b"]" * 50 + b"}",
            "application/json",
            400,
            "nested",
        ),
        (b"[" * 100000 + b"]" * 100000, "application/json", 400, "JSON"),
    ]
    for body, ctype, want, text in cases:
        status, msg = status_of(parser, body, content_type=ctype)
        assert status == want and text in msg, (body[:40], msg)


def test_content_types(parser):
    png = encode(rgb())
    for ctype in ("text/plain", "application/xml", "multipart/form-data; boundary=x"):
        body = "hello" if ctype == "text/plain" else png
        status, msg = status_of(parser, body, content_type=ctype)
        assert status == 415 and "Content-Type" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float_tiff_with_non_finite_pixels_is_refused(bad: float) -> None:
    arr = np.full((32, 32), 0.5, dtype=np.float32)
    arr[4, 7] = bad
    buf = io.BytesIO()
    Image.fromarray(arr, "F").save(buf, format="TIFF")
    with pytest.raises(RequestError, match="NaN or infinite") as info:
        decode_image(buf.getvalue())
    assert info.value.status == 400
