"""The project's hostile-input suite, against a real TorchServe started by ``rws_hub.launch``.

Every hostile kind (images, bodies, encodings, JSON, names, alpha, top_k, headers, auth) is
sent TOGETHER with good requests so that they share a batch: waves of 8 concurrent clients
(4 hostile, 4 good) released by a barrier, batch size 8, 100 ms batch delay. For each hostile
request the suite asserts its status (a 4xx, never a 5xx; or 200 for odd but acceptable input,
equal to the in-process answer), that its body is valid JSON naming the problem, and that every
good request of its wave got 200 with the in-process reference answer. Answers from the handler
carry the batch size: each hostile kind the handler answered must have shared a batch (a kind
answered alone is sent again, at most 3 times). The server runs with NO bound on alpha
(``max_alpha`` infinite) so that overflowing strengths reach the weight build: they must be
refused per request (422), never fail the batch. The worker must be the same process at the
end (no restart).

Tampered artifacts are checked in process (``Engine.from_folder`` / ``ModelFolder.load``), and
the handler itself is checked in process with a fake TorchServe context (describe detection,
answers per row, the response-size guard). ``CI=true`` turning skips into failures is checked
with pytester.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import struct
import threading
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from helpers.images import big_png, encode, rgb
from helpers.serving import (
    b64,
    expected,
    make_serving_folder,
    needs_server,
    png,
    running_server,
    same_answer,
    session,
    workers,
)
from PIL import Image

from rws_hub.errors import ArtifactError, RequestError
from rws_hub.inference.engine import Engine
from rws_hub.inference.parsing import RequestLimits, RequestParser
from rws_hub.io.folder import MANIFEST_FILE, ModelFolder, sha256_file
from rws_hub.launch import torchserve as serving

MAX_BODY = 8 * 1024 * 1024
"""The handler's body limit here: large enough that 5 MB names reach the handler."""

WAVE = 8
BAD_PER_WAVE = 4


# --------------------------------------------------------------------------------------------
# images


@cache
def float_tiff(fill: float | None = None, where: float = float("nan")) -> bytes:
    """A 32-bit float (mode F) TIFF in [0, 1]; one pixel set to ``where`` (or all to ``fill``)."""
    arr = np.random.default_rng(5).random((24, 24), dtype=np.float32)
    if fill is not None:
        arr[:] = fill
    else:
        arr[3, 4] = where
    return encode(Image.fromarray(arr, "F"), "TIFF")


def bomb_gif() -> bytes:
    """A GIF whose logical screen and frame say 60000 x 60000 (a few bytes of data)."""
    gif = bytearray(encode(rgb(1, (16, 16)).convert("P"), "GIF"))
    gif[6:10] = struct.pack("<HH", 60000, 60000)
    pos = gif.index(b"\x2c")  # the image descriptor
    gif[pos + 5 : pos + 9] = struct.pack("<HH", 60000, 60000)
    return bytes(gif)


def bomb_tiff() -> bytes:
    """A TIFF whose header says 50000 x 50000 pixels."""
    data = bytearray(encode(rgb(2, (16, 16)), "TIFF"))
    img = Image.open(io.BytesIO(bytes(data)))
    assert img.size == (16, 16)
    # rewrite ImageWidth (256) and ImageLength (257) entries of the first IFD
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for i in range(count):
        off = ifd + 2 + 12 * i
        tag, typ = struct.unpack("<HH", data[off : off + 4])
        if tag in (256, 257):
            if typ == 3:
                data[off + 8 : off + 10] = struct.pack("<H", 50000)
            else:
                data[off + 8 : off + 12] = struct.pack("<I", 50000)
    return bytes(data)


def bad_crc_png() -> bytes:
    data = bytearray(png(6))
    data[29:33] = b"\0\0\0\0"  # the IHDR CRC
    return bytes(data)


def apng() -> bytes:
    frames = [rgb(7), rgb(8)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


GOOD = png(2025)


# --------------------------------------------------------------------------------------------
# the cases


@dataclass
class Case:
    """One hostile kind.

    ``kind``: ``json`` (``body`` encoded with ``json=``), ``raw`` (``body`` bytes with ``ctype``).
    ``status``: what must come back; None means: what the in-process parser and engine answer
    (200 with the same answer, or the same 4xx). ``match``: a substring (case-insensitive) of
    the JSON error text. ``auth``: None (the session's inference key), ``"none"`` (no
    Authorization header) or a full Authorization header value. ``frontend``: refused before
    any handler, by the gateway or TorchServe's frontend (no batch to share).
    """

    name: str
    group: str
    kind: str
    body: Any
    status: int | None
    match: str = ""
    ctype: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    auth: str | None = None
    frontend: bool = False


def _with(image: bytes = GOOD, **extra: Any) -> dict[str, Any]:
    return {"image": b64(image), **extra}


def _raw_json(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _sig(signatures_json: str, image: bytes = GOOD) -> bytes:
    return _raw_json('{"image":"' + b64(image) + '","signatures":' + signatures_json + "}")


def _topk(top_k_json: str) -> bytes:
    return _raw_json('{"image":"' + b64(GOOD) + '","top_k":' + top_k_json + "}")


def cases(keys: dict[str, str]) -> list[Case]:  # noqa: PLR0915 - a catalogue
    """Every hostile kind; ``keys`` are the server's keys (for the auth cases)."""
    g = b64(GOOD)
    big_name = "x" * (5 * 1024 * 1024)
    out: list[Case] = []

    def img(name: str, data: bytes, status: int | None, match: str = "", raw: bool = False):
        if raw:
            out.append(Case(name, "images", "raw", data, status, match, ctype="image/png"))
        else:
            out.append(Case(name, "images", "json", _with(data, top_k=3), status, match))

    # -- images ----------------------------------------------------------------------------
    img("PNG bomb 40000x40000 1-bit", big_png(40000, 40000, 1), 413, "pixels", raw=True)
    img("PNG 10000x10000", big_png(10000, 10000), 413, "pixels")
    img("GIF bomb 60000x60000", bomb_gif(), 413, "pixels")
    img("TIFF bomb 50000x50000", bomb_tiff(), 413, "pixels")
    img("float TIFF with a NaN pixel", float_tiff(), 400, "nan")
    img("float TIFF with +inf", float_tiff(where=float("inf")), 400, "inf")
    img("float TIFF with -inf", float_tiff(where=float("-inf")), 400, "inf")
    img("float TIFF all NaN", float_tiff(fill=float("nan")), 400, "nan")
    img("float TIFF NaN as raw body", float_tiff(), 400, "nan", raw=True)
    img("float TIFF 3e38 values", float_tiff(fill=3e38), None)
    img("float TIFF in [0, 1]", float_tiff(where=0.5), None)
    img(
        "mode I (32-bit) TIFF",
        encode(Image.fromarray(np.full((20, 20), 70000, np.int32)), "TIFF"),
        None,
    )
    img("mode 1 (bilevel) PNG", encode(rgb(3).convert("1"), "PNG"), None)
    img("mode LA PNG", encode(rgb(4).convert("LA"), "PNG"), None)
    img("palette PNG with transparency", encode(rgb(5).convert("P"), "PNG", transparency=0), None)
    img("mode LAB TIFF", encode(rgb(6).convert("LAB"), "TIFF"), None)
    img("mode YCbCr JPEG", encode(rgb(7).convert("YCbCr"), "JPEG"), None)
    img("mode I;16 TIFF", encode(Image.fromarray(np.full((20, 20), 900, np.uint16)), "TIFF"), None)
    img("animated PNG", apng(), None)
    img("ICO file", encode(rgb(9, (32, 32)), "ICO"), None)
    img("huge strip 30000x8", png(10, (30000, 8)), None)
    img("huge strip 8x30000", png(11, (8, 30000)), None)
    img("strip 4x30000 (side under 8)", png(12, (4, 30000)), 400, "smallest side")
    img("truncated PNG", GOOD[: len(GOOD) // 3], 400)
    img("truncated JPEG", encode(rgb(13), "JPEG")[:150], 400)
    img("truncated GIF", encode(rgb(14).convert("P"), "GIF")[:60], 400)
    img("truncated TIFF", encode(rgb(15), "TIFF")[:300], 400)
    img("truncated WebP", encode(rgb(16), "WEBP")[:40], 400)
    img("truncated BMP", encode(rgb(17), "BMP")[:100], 400)
    img("PNG with a bad CRC", bad_crc_png(), None)
    img("PNG signature then garbage", b"\x89PNG\r\n\x1a\n" + os.urandom(300), 400)
    img("random bytes", np.random.default_rng(1).bytes(2000), 400, "not an image")
    img("gzip posing as image", zlib.compress(GOOD), 400)
    img("PDF posing as image", b"%PDF-1.4\n1 0 obj <<>> endobj\n", 400)
    img("HTML posing as PNG", b"<html><script>alert(1)</script></html>", 400, raw=True)

    # -- bodies and encodings ---------------------------------------------------------------
    def body(name: str, data: bytes, ctype: str | None, status: int | None, match: str = ""):
        out.append(Case(name, "bodies", "raw", data, status, match, ctype=ctype))

    body("octet-stream empty body", b"", "application/octet-stream", 400, "empty")
    body("octet-stream random bytes", os.urandom(500), "application/octet-stream", 400)
    body("JSON in UTF-16", json.dumps(_with()).encode("utf-16"), "application/json", None)
    body(
        "JSON with a UTF-8 BOM",
        b"\xef\xbb\xbf" + json.dumps(_with()).encode(),
        "application/json",
        None,
    )
    body(
        "JSON with invalid UTF-8 in a string",
        b'{"image": "' + g.encode() + b'", "signatures": "\xc3\x28"}',
        "application/json",
        400,
    )
    body(
        "JSON with trailing garbage",
        json.dumps(_with()).encode() + b" }}}",
        "application/json",
        400,
        "json",
    )
    body(
        "JSON with a comment",
        b'{"image": "' + g.encode() + b'" /* hi */}',
        "application/json",
        400,
        "json",
    )
    body(
        "JSON with single quotes",
        ("{'image': '" + g + "'}").encode(),
        "application/json",
        400,
        "json",
    )
    body("JSON true", b"true", "application/json", 400, "object")
    body("JSON number", b"123", "application/json", 400, "object")
    body(
        "JSON padded with 1 MB of spaces",
        b" " * (1 << 20) + json.dumps(_with()).encode(),
        "application/json",
        None,
    )
    body("base64 text as JSON", g.encode(), "application/json", 400)
    body(
        "gzip-compressed JSON", zlib.compress(json.dumps(_with()).encode()), "application/json", 400
    )
    body("Content-Type with odd parameters", GOOD, "image/png; boundary=zzz; q=0.1", None)
    body(
        "Content-Type application/json; charset=latin-1",
        json.dumps(_with()).encode(),
        "application/json; charset=latin-1",
        None,
    )
    body("Content-Type text/html", b"<p>hi</p>", "text/html", 415, "content-type")
    body("Content-Type image/svg+xml", b"<svg/>", "image/svg+xml", None)
    body("Content-Type garbage", GOOD, ";;;==", None)
    body("body over the handler limit", b"\0" * (MAX_BODY + 1), "image/png", 413)

    # -- JSON -----------------------------------------------------------------------------------
    def js(name: str, obj: Any, status: int | None, match: str = ""):
        kind = "raw" if isinstance(obj, bytes) else "json"
        out.append(
            Case(
                name,
                "json",
                kind,
                obj,
                status,
                match,
                ctype="application/json" if kind == "raw" else None,
            )
        )

    js(
        "nesting 100000 deep",
        _raw_json('{"image":"' + g + '","x":' + "[" * 100000 + "]" * 100000 + "}"),
        400,
    )
    js("nesting 50 deep in signatures", _sig("{" + '"a":{' * 49 + "}" * 50), 400, "nested")
    js(
        "duplicate image keys",
        _raw_json('{"image":"' + g + '","image":"' + g + '"}'),
        400,
        "duplicate",
    )
    js(
        "duplicate top_k keys",
        _raw_json('{"image":"' + g + '","top_k":1,"top_k":2}'),
        400,
        "duplicate",
    )
    js("image null", {"image": None}, 400, "image")
    js("image true", {"image": True}, 400, "image")
    js("image an object", {"image": {"b64": g}}, 400, "image")
    js("signatures true", _with(signatures=True), 400)
    js("signatures null (clean)", _with(signatures=None), None)
    js("top_k null (default)", _with(top_k=None), None)
    js("top_k 1e400 (inf)", _topk("1e400"), 400)
    js("top_k NaN", _topk("NaN"), 400)
    js("top_k a 5000-digit integer", _topk("9" * 5000), 400)
    js("alpha a 5000-digit integer", _sig('{"fog":' + "9" * 5000 + "}"), 400)
    js("alpha 1e309 (inf)", _sig('{"fog":1e309}'), 400, "finite")
    js("1000 unknown fields", _with(**{f"f{i}": i for i in range(1000)}), 400, "unknown field")
    js("unknown field holding 1 MB", _with(junk="j" * (1 << 20)), 400, "unknown field")
    js("key with NUL", _raw_json('{"image":"' + g + '","\\u0000":1}'), 400)
    js("lone surrogate in a name", _sig('{"\\ud800":1}'), 400, "unknown")
    js("empty object", {}, 400, "image")

    # -- names ----------------------------------------------------------------------------------
    def nm(name: str, obj: Any, status: int | None = 400, match: str = "unknown"):
        kind = "raw" if isinstance(obj, bytes) else "json"
        out.append(
            Case(
                name,
                "names",
                kind,
                obj,
                status,
                match,
                ctype="application/json" if kind == "raw" else None,
            )
        )

    nm("5 MB name (object)", _with(signatures={big_name: 1.0}))
    nm("5 MB name (list)", _with(signatures=[big_name]))
    nm("5 MB name (text)", _with(signatures=big_name + ":1"), 400, "")
    nm("Cyrillic look-alike fоg", _with(signatures={"f\u043eg": 1}))
    nm("right-to-left override", _with(signatures={"\u202egof": 1}))
    nm("ANSI escape in a name", _with(signatures={"\x1b[31mfog": 1}))
    nm("newline in a name", _with(signatures=["fog\n"]), None, "")
    nm("CRLF header injection in a name", _with(signatures=["fog\r\nX-Evil: 1"]), 400, "")
    nm("__proto__", _with(signatures={"__proto__": 1}))
    nm("path traversal name", _with(signatures={"../../etc/passwd": 1}))
    nm("empty name", _with(signatures={"": 1}), 400, "")
    nm("upper-case FOG", _with(signatures={"FOG": 1}), None, "")
    nm("name padded with spaces", _with(signatures={" fog ": 1}), None, "")
    nm("10000 names in text", _with(signatures=",".join(f"s{i}:1" for i in range(10000))), 400, "")
    nm("zero-width joiner in fog", _with(signatures={"fo\u200dg": 1}))

    # -- alpha (no bound on the server) -------------------------------------------------------
    def al(name: str, obj: Any, status: int | None, match: str = ""):
        kind = "raw" if isinstance(obj, bytes) else "json"
        out.append(
            Case(
                name,
                "alpha",
                kind,
                obj,
                status,
                match,
                ctype="application/json" if kind == "raw" else None,
            )
        )

    al("alpha 1e308", _with(signatures={"fog": 1e308}), 422, "lower the strengths")
    al("alpha -1e308", _with(signatures={"fog": -1e308}), 400, "negative")
    al("alpha 3.4e38 (float32 max)", _with(signatures={"fog": 3.4e38}), 422, "")
    al("alpha 5e6", _with(signatures={"fog": 5e6}), None, "")
    al("alpha 1e20 on two signatures", _with(signatures={"fog": 1e20, "contrast": 1e20}), None, "")
    al("one sane, one overflowing alpha", _with(signatures={"fog": 1, "contrast": 1e308}), 422, "")
    al("alpha the string NaN", _with(signatures={"fog": "NaN"}), 400, "number")
    al("alpha the string Infinity", _with(signatures={"fog": "Infinity"}), 400, "number")
    al("text fog:nan", _with(signatures="fog:nan"), 400, "")
    al("text fog:-inf", _with(signatures="fog:-inf"), 400, "")
    al("text fog:1e308", _with(signatures="fog:1e308"), 422, "")
    al("text fog:1_000", _with(signatures="fog:1_000"), None, "")
    al("text fog:0x10", _with(signatures="fog:0x10"), 400, "")
    al("alpha -0.0", _with(signatures={"fog": -0.0}), None, "")
    al("alpha 1e-310 (subnormal)", _with(signatures={"fog": 1e-310}), None, "")
    al("alpha a list", _with(signatures={"fog": [1]}), 400, "number")
    al("raw NaN literal", _sig('{"fog":NaN}'), 400, "finite")
    al("raw -Infinity literal", _sig('{"contrast":-Infinity}'), 400, "finite")
    al("X-RWS-Signatures fog:1e308", GOOD, 422, "")
    out[-1].ctype, out[-1].headers = "image/png", {"X-RWS-Signatures": "fog:1e308"}
    al("auto without a detector", _with(signatures="auto"), 400, "detector")

    # -- top_k --------------------------------------------------------------------------------
    def tk(name: str, obj: Any, status: int | None, match: str = "top_k", headers=None):
        if headers is not None:
            out.append(Case(name, "top_k", "raw", GOOD, status, match, "image/png", headers))
            return
        kind = "raw" if isinstance(obj, bytes) else "json"
        out.append(
            Case(
                name,
                "top_k",
                kind,
                obj,
                status,
                match,
                ctype="application/json" if kind == "raw" else None,
            )
        )

    tk("top_k 2**63", _with(top_k=2**63), 400)
    tk("top_k 3.0", _with(top_k=3.0), None, "")
    tk("top_k an empty list", _with(top_k=[]), 400)
    tk("top_k an object", _with(top_k={"k": 3}), 400)
    tk("top_k ' 3'", _with(top_k=" 3"), 400)
    tk("X-RWS-Top-K: -1", None, 400, headers={"X-RWS-Top-K": "-1"})
    tk("X-RWS-Top-K: 1e3", None, 400, headers={"X-RWS-Top-K": "1e3"})
    tk("X-RWS-Top-K: 99999999999999999999", None, 400, headers={"X-RWS-Top-K": "9" * 20})
    tk("X-RWS-Top-K: 0x3", None, 400, headers={"X-RWS-Top-K": "0x3"})
    tk("X-RWS-Top-K: '3 '", None, None, "", headers={"X-RWS-Top-K": "3 "})

    # -- headers ------------------------------------------------------------------------------
    def hd(
        name: str,
        headers: dict[str, str],
        status: int | None,
        match: str = "",
        data=None,
        frontend=False,
    ):
        if data is None:
            out.append(
                Case(
                    name,
                    "headers",
                    "json",
                    _with(top_k=4),
                    status,
                    match,
                    headers=headers,
                    frontend=frontend,
                )
            )
        else:
            out.append(
                Case(
                    name,
                    "headers",
                    "raw",
                    data,
                    status,
                    match,
                    "image/png",
                    headers,
                    frontend=frontend,
                )
            )

    hd("describe: True on inference", {"describe": "True"}, None)
    hd("Describe: True on inference", {"Describe": "True"}, None)
    hd("describe: true on inference", {"describe": "true"}, None)
    hd("describe: True with an empty body", {"describe": "True"}, 400, "empty", data=b"")
    hd("describe: True on a bad image", {"describe": "True"}, 400, "", data=b"not an image at all")
    hd("explain: True", {"explain": "True"}, None)
    hd(
        "X-RWS-Signatures with a 5 MB name",
        {"X-RWS-Signatures": "x" * (5 << 20)},
        431,  # the gateway: over TorchServe's 8 KiB of headers
        "headers",
        data=GOOD,
        frontend=True,
    )
    hd("100 KB junk header", {"X-Junk": "j" * 100_000}, 431, "headers", frontend=True)
    hd(
        "300 small headers (9 KB)",
        {f"X-H{i}": "v" * 20 for i in range(300)},
        431,  # the gateway: over TorchServe's 8 KiB of headers
        "headers",
        frontend=True,
    )
    # header values must be ASCII: the gateway refuses the rest (the parser's own guard against
    # Unicode digits is a unit test, tests/unit/inference/test_parsing.py)
    for name, value in (("X-RWS-Signatures", "f\u00f8g:1"), ("X-RWS-Top-K", "\u00b2")):
        hd(f"{name} non-ASCII", {name: value}, 400, "non-ASCII", data=GOOD, frontend=True)

    # -- auth -------------------------------------------------------------------------------------
    def au(name: str, auth: str, match: str = "token", status: int = 400):
        out.append(Case(name, "auth", "json", _with(), status, match, auth=auth, frontend=True))

    au("no key", "none")
    au("wrong key", "Bearer wrong-key")
    au("management key on inference", f"Bearer {keys['management']}")
    au("API key on inference", f"Bearer {keys['API']}")
    au("empty bearer", "Bearer ")
    au("basic auth", "Basic dXNlcjpwYXNz")
    au("10 KB bearer", "Bearer " + "k" * 10_000, "headers", 431)  # over TorchServe's limit
    au("inference key with a trailing word", f"Bearer {keys['inference']} extra")
    return out


# --------------------------------------------------------------------------------------------
# the reference: the in-process parser and engine, as the handler uses them


def reference(parser: RequestParser, engine: Engine, case: Case) -> tuple[int, dict[str, Any]]:
    """(status, answer or error) the in-process parser + ``Engine.classify_rows`` give."""
    try:
        if case.kind == "json":
            data = json.dumps(case.body).encode()
            req = parser.parse(data, content_type="application/json")
        else:
            query = {}
            for key, header in (("signatures", "X-RWS-Signatures"), ("top_k", "X-RWS-Top-K")):
                if header in case.headers:
                    query[key] = case.headers[header]
            req = parser.parse(case.body, content_type=case.ctype, query=query)
    except RequestError as exc:
        return exc.status, {"error": str(exc)}
    (answer,) = engine.classify_rows(req.image[None], [req.mix], top_k=[req.top_k])
    if isinstance(answer, RequestError):
        return answer.status, {"error": str(answer)}
    return 200, answer


# --------------------------------------------------------------------------------------------
# the server


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_serving_folder(tmp_path_factory.mktemp("hostile") / "tiny-vgg")


@pytest.fixture(scope="module")
def engine(folder: Path) -> Engine:
    return Engine.from_folder(folder, device="cpu", max_alpha=math.inf)


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(
        folder,
        tmp_path_factory.mktemp("serve"),
        batch_size=WAVE,
        max_batch_delay=400,  # a batch fills when the wave's 8 requests arrive; the wait only
        # bounds stragglers such as an 8 MB body still being read by the frontend
        max_body_bytes=MAX_BODY,
        settings={"max_alpha": math.inf, "threads": 1},
    ) as srv:
        yield srv


def _send(srv: serving.Server, case: Case) -> tuple[int, str, str]:
    headers = dict(case.headers)
    if case.ctype is not None:
        headers["Content-Type"] = case.ctype
    kwargs: dict[str, Any] = {"headers": headers, "timeout": 120}
    if case.kind == "json":
        kwargs["json"] = case.body
    else:
        kwargs["data"] = case.body
    try:
        if case.auth is None:
            r = session(srv).post(srv.inference_url, **kwargs)
        else:
            if case.auth != "none":
                headers["Authorization"] = case.auth
            r = requests.post(srv.inference_url, **kwargs)
    except requests.ConnectionError as exc:  # e.g. the frontend closed on an oversized header
        return -1, "", repr(exc)
    return r.status_code, r.headers.get("Content-Type", ""), r.text


def _good(wave: int, j: int) -> tuple[Case, bytes, Any, int]:
    mixes = [None, {"fog": 1.0}, ["contrast", "pixelate"], "gaussian_noise:0.7,fog:0.2"]
    data = png(20_000 + wave * 8 + j)
    mix, k = mixes[(wave + j) % len(mixes)], 1 + (wave + j) % 10
    body = {"image": b64(data), "signatures": mix, "top_k": k}
    return Case(f"good {wave}.{j}", "good", "json", body, 200), data, mix, k


def same_allowing_ties(answer: dict[str, Any], want: dict[str, Any]) -> bool:
    """:func:`same_answer`, except that classes with tied probabilities (e.g. saturated
    outputs of huge strengths: 1.0 and several 0.0) may come in any order among themselves."""
    if same_answer(answer, want):
        return True
    if answer.get("mix") != want["mix"] or len(answer["predictions"]) != len(want["predictions"]):
        return False
    got = np.array([p["probability"] for p in answer["predictions"]])
    ref = np.array([p["probability"] for p in want["predictions"]])
    if not np.allclose(got, ref, atol=1e-5, rtol=1e-4):
        return False
    for i, p in enumerate(answer["predictions"]):
        tied = [
            q["class"] for j, q in enumerate(want["predictions"]) if abs(ref[j] - got[i]) <= 1e-5
        ]
        if p["class"] not in tied and not np.isclose(got[i], ref[-1], atol=1e-5):
            return False
    return True


def _problem(case: Case, got: tuple[int, str, str], ref: tuple[int, dict] | None) -> str | None:
    status, ctype, text = got
    want = case.status if case.status is not None else (ref[0] if ref else None)
    if status != want:
        return f"{case.name}: status {status}, want {want}: {text[:300]}"
    if status >= 500 or status < 200:
        return f"{case.name}: status {status}"
    try:
        payload = json.loads(text)
    except ValueError:
        return f"{case.name}: body is not JSON ({ctype}): {text[:300]}"
    if not isinstance(payload, dict):
        return f"{case.name}: body is not a JSON object: {text[:300]}"
    if status == 200:
        if ref is None or ref[0] != 200:
            return f"{case.name}: 200 but the in-process reference says {ref}"
        if not same_allowing_ties(payload, ref[1]):
            return f"{case.name}: answer differs: {payload} vs {ref[1]}"
        return None
    message = str(payload.get("error") or payload.get("message") or "")
    if not message:
        return f"{case.name}: error body names no problem: {text[:300]}"
    if len(text) > 10_000:
        return f"{case.name}: error body of {len(text)} bytes (messages must be bounded)"
    if case.match.lower() not in message.lower():
        return f"{case.name}: message {message[:300]!r} lacks {case.match!r}"
    if not case.frontend and payload.get("status") != status:
        return f"{case.name}: error body {payload}"
    return None


@pytest.mark.server
@needs_server
def test_hostile_requests_share_batches_with_good_ones(server, engine) -> None:
    """Each hostile kind gets its own 4xx (or the in-process answer) with a JSON body naming the
    problem, inside a batch whose good requests are all answered exactly; no worker restart."""
    parser = RequestParser.for_engine(engine, limits=RequestLimits(max_body_bytes=MAX_BODY))
    all_cases = cases(server.keys())
    assert len({c.name for c in all_cases}) == len(all_cases), "duplicate case names"
    assert len(all_cases) >= 100, len(all_cases)
    refs = {c.name: reference(parser, engine, c) for c in all_cases if not c.frontend}
    before = workers(server)
    pending = list(all_cases)
    problems: list[str] = []
    outcome: dict[str, int] = {}
    shared: dict[str, int] = {}
    tries: Counter[str] = Counter()
    good_sent = 0
    with ThreadPoolExecutor(WAVE) as pool:
        for wave in range(4 * len(all_cases)):  # bounded
            if not pending:
                break
            bad, pending = pending[:BAD_PER_WAVE], pending[BAD_PER_WAVE:]
            goods = [_good(wave, j) for j in range(WAVE - len(bad))]
            batch = [c for pair in zip(bad + [None] * WAVE, goods, strict=False) for c in pair if c]
            batch_cases = [c if isinstance(c, Case) else c[0] for c in batch]
            barrier = threading.Barrier(len(batch_cases))

            def go(case: Case, barrier=barrier) -> tuple[int, str, str]:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=30)
                return _send(server, case)

            results = list(pool.map(go, batch_cases))
            for item, got in zip(batch, results, strict=True):
                if not isinstance(item, Case):  # a good request
                    case, data, mix, k = item
                    good_sent += 1
                    if got[0] != 200:
                        problems.append(
                            f"{case.name} (wave with {[b.name for b in bad]}): {got[0]} {got[2][:200]}"
                        )
                    elif not same_answer(json.loads(got[2]), expected(engine, data, mix, k)):
                        problems.append(
                            f"{case.name}: wrong answer next to {[b.name for b in bad]}"
                        )
                    continue
                case = item
                problem = _problem(case, got, refs.get(case.name))
                outcome[case.name] = got[0]
                if problem:
                    problems.append(problem)
                    continue
                if case.frontend:
                    continue
                size = json.loads(got[2]).get("batch_size", 0)
                if size > 1:
                    shared[case.name] = size
                else:  # answered alone (timing): send it again in a later wave
                    tries[case.name] += 1
                    if tries[case.name] < 6:
                        pending.append(case)
    after = workers(server)
    statuses = Counter(outcome.values())
    print(
        f"\nhostile suite: {len(all_cases)} kinds "
        f"({dict(Counter(c.group for c in all_cases))}), statuses {dict(sorted(statuses.items()))}, "
        f"{len(shared)} shared a batch in the handler, {good_sent} good requests next to them, "
        f"{len(problems)} problems"
    )
    assert not problems, "\n".join(problems)
    alone = [c.name for c in all_cases if not c.frontend and c.name not in shared]
    assert not alone, f"never shared a batch with good requests: {alone}"
    assert not any(s >= 500 for s in outcome.values())
    assert [(w["pid"], w["startTime"]) for w in after] == [
        (w["pid"], w["startTime"]) for w in before
    ], "the worker was restarted"


@pytest.mark.server
@needs_server
def test_describe_stays_a_management_call(server, engine) -> None:
    """The management describe still answers the engine's description; the same header on the
    inference API is an ordinary inference request, also when alone in its batch."""
    r = requests.get(
        f"{server.opts.management_url}/models/{server.opts.model_name}",
        params={"customized": "true"},
        headers=server.headers("management"),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    meta = r.json()[0]["customizedMetadata"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    assert "signatures" in meta
    for headers in ({"describe": "True"}, {"describe": "True", "explain": "False"}):
        r = session(server).post(
            server.inference_url, json=_with(top_k=2), headers=headers, timeout=60
        )
        assert r.status_code == 200, r.text
        assert same_answer(r.json(), expected(engine, GOOD, None, 2))
        assert "signatures" not in r.json()


# --------------------------------------------------------------------------------------------
# tampered artifacts (in process)


def _relist(folder: Path, rel: str) -> None:
    """Give ``rel`` its true digest and size in the manifest (refused for what it holds)."""
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    f = folder / rel
    manifest["files"][rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    path.write_text(json.dumps(manifest, indent=2))


def _rewrite_signature(path: Path, tensors=None, metadata=None) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
        held = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if tensors is not None:
        held = tensors(held)
    if metadata is not None:
        meta = metadata(meta)
    save_file(held, str(path), metadata=meta)


class _Marker:
    """A pickle payload that would create a file when unpickled (it must never be)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _nan_first(held: dict) -> dict:
    k = sorted(held)[0]
    t = held[k].clone()
    t.view(-1)[0] = float("nan")
    return {**held, k: t}


def _inf_first(held: dict) -> dict:
    k = sorted(held)[0]
    t = held[k].clone()
    t.view(-1)[0] = float("inf")
    return {**held, k: t}


def _huge_first(held: dict) -> dict:
    k = sorted(held)[0]
    return {**held, k: held[k] * 1e37}


def _transposed_first(held: dict) -> dict:
    k = next(k for k in sorted(held) if held[k].dim() == 4)
    return {**held, k: held[k].transpose(0, 1).contiguous()}


SIG = "signatures/fog.safetensors"

TAMPERS: dict[str, Any] = {
    "bytes flipped (digest mismatch)": lambda p, m: p.write_bytes(
        p.read_bytes()[:200]
        + bytes(b ^ 0xFF for b in p.read_bytes()[200:264])
        + p.read_bytes()[264:]
    ),
    "truncated (size mismatch)": lambda p, m: p.write_bytes(
        p.read_bytes()[: p.stat().st_size // 3]
    ),
    "header length 2**63": lambda p, m: p.write_bytes(
        struct.pack("<Q", 2**63) + p.read_bytes()[8:]
    ),
    "header not JSON": lambda p, m: p.write_bytes(struct.pack("<Q", 8) + b"{not js}" + b"\0" * 64),
    "header offsets past the end": lambda p, m: p.write_bytes(
        (lambda h: struct.pack("<Q", len(h)) + h)(
            json.dumps(
                {"x": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}
            ).encode()
        )
        + b"\0" * 16
    ),
    "empty file": lambda p, m: p.write_bytes(b""),
    "a tensor holding NaN": lambda p, m: _rewrite_signature(p, tensors=_nan_first),
    "a tensor holding inf": lambda p, m: _rewrite_signature(p, tensors=_inf_first),
    "a tensor scaled by 1e37": lambda p, m: _rewrite_signature(p, tensors=_huge_first),
    "a tensor with the wrong shape": lambda p, m: _rewrite_signature(p, tensors=_transposed_first),
    "default_alpha nan": lambda p, m: _rewrite_signature(
        p, metadata=lambda d: {**d, "default_alpha": "nan"}
    ),
    "default_alpha 1e30": lambda p, m: _rewrite_signature(
        p, metadata=lambda d: {**d, "default_alpha": "1e30"}
    ),
    "a torch.save pickle": lambda p, m: torch.save({"w": _Marker(m)}, p),
    "a raw pickle": lambda p, m: p.write_bytes(pickle.dumps(_Marker(m))),
}
LISTED = {"bytes flipped (digest mismatch)", "truncated (size mismatch)"}
"""Tampers left with their old manifest entry (refused by digest/size); the others are
re-listed with their true digest so they are refused for what they hold."""


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_signature_is_refused(tmp_path: Path, tamper: str) -> None:
    """A tampered signature file is refused with a bounded reason; the other signatures serve
    finite answers; nothing is unpickled."""
    folder = make_serving_folder(tmp_path / "tiny-vgg")
    marker = tmp_path / "UNPICKLED"
    TAMPERS[tamper](folder / SIG, marker)
    if tamper not in LISTED:
        _relist(folder, SIG)
    eng = Engine.from_folder(folder, device="cpu")
    assert SIG in eng.refused, (tamper, eng.refused)
    reason = eng.refused[SIG]
    assert isinstance(reason, str) and 0 < len(reason) <= 2100
    assert "fog" not in eng.defaults
    images = torch.rand(2, 3, 32, 32)
    answers = eng.classify_rows(images, [{"contrast": 1.0}, {"fog": 1.0}], top_k=3)
    assert isinstance(answers[0], dict)
    assert all(math.isfinite(p["probability"]) for p in answers[0]["predictions"])
    assert isinstance(answers[1], RequestError) and answers[1].status == 400
    assert not marker.exists()


FOLDER_TAMPERS: dict[str, Any] = {
    "config.json not JSON": lambda f: (f / "config.json").write_text("{nope"),
    "config.json nested 10000 deep": lambda f: (f / "config.json").write_text(
        "[" * 10000 + "]" * 10000
    ),
    "model.safetensors truncated": lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:1000]
    ),
    "model.safetensors a pickle": lambda f: (f / "model.safetensors").write_bytes(
        pickle.dumps({"a": 1})
    ),
}


@pytest.mark.parametrize("tamper", list(FOLDER_TAMPERS))
def test_tampered_folder_is_refused(tmp_path: Path, tamper: str) -> None:
    folder = make_serving_folder(tmp_path / "tiny-vgg")
    FOLDER_TAMPERS[tamper](folder)
    if tamper.startswith("config.json"):
        _relist(folder, "config.json")
    elif tamper.startswith("model.safetensors a"):
        _relist(folder, "model.safetensors")
    with pytest.raises((ArtifactError, ValueError)) as info:
        ModelFolder.load(folder)
    assert str(info.value) and len(str(info.value)) <= 5000


# --------------------------------------------------------------------------------------------
# the handler in process (fake TorchServe context)


class FakeContext:
    """What the handler uses of TorchServe's ``Context``: per-row headers and statuses."""

    def __init__(self, headers: list[dict[str, str]]) -> None:
        self.headers = headers
        self.status: dict[int, tuple[int, str]] = {}
        self.ctype: dict[int, str] = {}
        self.metrics = None

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.headers[idx].get(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.headers[idx]

    def set_response_status(self, code: int, phrase: str, idx: int = 0) -> None:
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, ctype: str) -> None:
        self.ctype[idx] = ctype


@pytest.fixture(scope="module")
def handler(folder: Path):
    pytest.importorskip("ts")
    from rws_hub.integrations import torchserve_handler as th

    h = th.RWSHandler()
    h.engine = Engine.from_folder(folder, device="cpu", max_alpha=math.inf)
    h.parser = RequestParser.for_engine(h.engine)
    h.initialized = True
    return h


def _row(body: dict[str, Any]) -> dict[str, Any]:
    return {"body": bytearray(json.dumps(body).encode())}


def test_handler_describe_only_for_the_management_call(handler) -> None:
    from rws_hub.integrations.torchserve_handler import is_describe_call

    mgmt = FakeContext([{"describe": "True", "Host": "x"}])
    assert is_describe_call(mgmt, [{}])
    out = handler.handle([{}], mgmt)
    assert len(out) == 1 and "signatures" in json.loads(out[0])
    # an inference request carries a body and the frontend's explain header
    for row, hdrs in (
        (_row(_with()), {"describe": "True", "explain": "False"}),
        (_row(_with()), {"describe": "True"}),
        ({}, {"describe": "True", "explain": "False"}),
    ):
        ctx = FakeContext([hdrs])
        assert not is_describe_call(ctx, [row])
    ctx = FakeContext([{"describe": "True", "explain": "False"}] * 3)
    rows = [_row(_with(top_k=2)), {}, _row(_with(signatures={"fog": 1e308}))]
    out = handler.handle(rows, ctx)
    assert len(out) == 3
    assert out[0]["predictions"] and ctx.status.get(0) is None
    assert ctx.status[1][0] == 400 and out[1]["status"] == 400
    assert ctx.status[2][0] == 422 and "lower the strengths" in out[2]["error"]


def test_handler_rows_are_isolated_and_answers_bounded(handler) -> None:
    rows = [
        _row(_with(top_k=3)),
        _row(_with(signatures={"fog": 1e308})),
        _row(_with(signatures={"x" * 100_000: 1})),
        _row(_with(float_tiff())),
        _row(_with(signatures="fog:0.5", top_k=2)),
    ]
    ctx = FakeContext([{"explain": "False"}] * len(rows))
    out = handler.handle(rows, ctx)
    assert len(out) == len(rows)
    assert [ctx.status.get(i, (200,))[0] for i in range(len(rows))] == [200, 422, 400, 400, 200]
    for a in out:
        json.dumps(a, allow_nan=False)  # valid JSON, no NaN
        assert len(json.dumps(a)) < 5000
    assert "characters" in out[2]["error"]  # the echoed name is cut
    assert all(ctx.ctype[i] == "application/json" for i in range(len(rows)))
    # the response-size guard: an answer over the limit becomes this row's 422
    limit = handler.max_response_bytes
    try:
        handler.max_response_bytes = 1500
        ctx = FakeContext([{"explain": "False"}] * 2)
        out = handler.handle([_row(_with(top_k=10)), _row(_with(top_k=1))], ctx)
        assert ctx.status[0][0] == 422 and "response limit" in out[0]["error"]
        assert ctx.status.get(1) is None and len(out[1]["predictions"]) == 1
    finally:
        handler.max_response_bytes = limit


# --------------------------------------------------------------------------------------------
# CI=true: skipped server/browser tests fail


def test_ci_turns_server_and_browser_skips_into_failures(tmp_path: Path) -> None:
    """Under CI=true, a skipped test marked server or browser fails (other skips stay skips);
    otherwise all three are skips. Runs the suite's conftest in a separate pytest."""
    import subprocess
    import sys

    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    server: s\n    browser: b\n")
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.server\n"
        "@pytest.mark.skipif(True, reason='no java')\n"
        "def test_server():\n    pass\n\n"
        "@pytest.mark.browser\n"
        "def test_browser():\n    pytest.skip('no chromium')\n\n"
        "@pytest.mark.skipif(True, reason='no gpu')\n"
        "def test_other():\n    pass\n"
    )
    counts = {}
    for ci in ("true", "false"):
        env = {**os.environ, "CI": ci}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        counts[ci] = (done.returncode, done.stdout[-600:])
    rc, out = counts["true"]
    # the server test is skipped in its setup: reported as an error, the browser one as failed
    assert rc == 1 and "1 failed, 1 skipped, 1 error" in out, out
    assert out.count("may not be skipped") >= 2, out
    rc, out = counts["false"]
    assert rc == 0 and "3 skipped" in out, out
