"""Hostile and odd input against a real TorchServe, and property tests of the request parser.

The catalogue: every kind of bad (or merely odd) request is sent INSIDE a batch together with
good requests (a barrier releases them at once; the server batches up to 8 within 150 ms).
Each bad request must get its own 4xx with a JSON ``{"error": ...}`` body, each good one the
single-request in-process answer, and the worker must be the same process afterwards. Odd but
acceptable images (grayscale, CMYK, RGBA, 16-bit, palette, animated GIF, BMP/WebP/TIFF, a
mislabelled format) are answered 200, equal to the in-process reference.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import threading
from collections.abc import Callable
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
    NAMES,
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rws_hub.core.mix import Mix
from rws_hub.errors import RequestError
from rws_hub.inference.engine import Engine
from rws_hub.inference.parsing import RequestLimits, RequestParser, decode_image
from rws_hub.launch import torchserve as serving

MAX_BODY = 512 * 1024
"""The handler's body limit in these tests (the frontend's is about 4/3 of it plus 64 KiB)."""


# --------------------------------------------------------------------------------------------
# images, good and bad


@cache
def jpeg(seed: int) -> bytes:
    return encode(rgb(seed, (64, 48)), "JPEG", quality=90)


def gray_png() -> bytes:
    return encode(rgb(11).convert("L"), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(rgb(12).convert("CMYK"), "JPEG")


def rgba_png() -> bytes:
    arr = np.random.default_rng(13).integers(0, 256, (36, 36, 4), dtype=np.uint8)
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def png16() -> bytes:
    arr = (np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    return encode(img, "PNG")


def palette_png() -> bytes:
    return encode(rgb(14).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")


def animated_gif() -> bytes:
    frames = [rgb(15), rgb(16), rgb(17)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


# --------------------------------------------------------------------------------------------
# the catalogue


@dataclass
class Case:
    """One kind of request: what is sent, and what must come back.

    ``kind``: ``"json"`` (``body`` is encoded with ``json=``), ``"raw"`` (``body`` bytes with
    ``ctype`` and ``headers``). ``status`` 200 means odd but acceptable: then ``image``/``mix``/
    ``top_k`` give the reference. ``match``: a substring of the error message.
    """

    name: str
    kind: str
    body: Any
    status: int
    match: str = ""
    ctype: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    image: bytes | None = None
    mix: Any = None
    top_k: int = 5


GOOD = png(2024)


def _with(extra: dict[str, Any], image: bytes = GOOD) -> dict[str, Any]:
    return {"image": b64(image), **extra}


def _sig_json(image_b64: str, signatures: str) -> bytes:
    """A JSON body written by hand (for what json.dumps will not write): the image and the
    ``signatures`` value given as JSON text."""
    return ('{"image":"' + image_b64 + '","signatures":' + signatures + "}").encode()


def catalogue() -> list[Case]:
    """Every kind of request the catalogue sends (statuses decided per kind; see the docs)."""
    g = b64(GOOD)
    cases = [
        # -- the image field / body --------------------------------------------------------
        Case("not base64", "json", {"image": "this is %% not base64!"}, 400, "base64"),
        Case("base64 of text", "json", {"image": b64(b"hello, world")}, 400, "not an image"),
        Case("empty image string", "json", {"image": ""}, 400, "empty"),
        Case("truncated PNG", "json", {"image": b64(GOOD[: len(GOOD) // 2])}, 400, "truncated"),
        Case("truncated JPEG", "json", {"image": b64(jpeg(1)[:200])}, 400, "read"),
        Case("PNG header only", "json", {"image": b64(GOOD[:24])}, 400, ""),
        Case("EPS posing as image", "json", {"image": b64(b"%!PS-Adobe-3.0 EPSF-3.0\n")}, 400),
        Case(
            "SVG posing as PNG",
            "raw",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"/>',
            400,
            "not an image",
            ctype="image/png",
        ),
        Case("text posing as JPEG", "raw", b"GIF89a? no.", 400, ctype="image/jpeg"),
        Case("zero-byte image body", "raw", b"", 400, "empty", ctype="image/png"),
        Case("zero-byte JSON body", "raw", b"", 400, "empty", ctype="application/json"),
        Case("1x1 image", "json", {"image": b64(png(3, (1, 1)))}, 400, "smallest side"),
        Case("10000x10000 image", "json", {"image": b64(big_png(10000, 10000))}, 413, "pixels"),
        Case("decompression bomb", "raw", big_png(40000, 40000, 1), 413, "", ctype="image/png"),
        Case("body over the handler limit", "raw", b"\0" * (MAX_BODY + 1), 413, ctype="image/png"),
        Case("image is a number", "json", {"image": 12345}, 400, "base64 string"),
        Case("image is a list", "json", {"image": [g]}, 400, "base64 string"),
        Case("missing image", "json", {"signatures": "fog"}, 400, "missing 'image'"),
        Case("data URL without base64", "json", {"image": "data:image/png," + g}, 400, "data URL"),
        # -- JSON shape -----------------------------------------------------------------------
        Case("JSON array body", "json", [g], 400, "object"),
        Case("JSON string body", "json", g, 400, "object"),
        Case("JSON null body", "raw", b"null", 400, "object", ctype="application/json"),
        Case("unknown field", "json", _with({"alpha": 1}), 400, "unknown field"),
        Case("invalid JSON", "raw", b'{"image": "abc",', 400, "not valid JSON", "application/json"),
        Case("JSON not UTF-8", "raw", b'{"image": "\xff\xfe"}', 400, "UTF-8", "application/json"),
        Case("PNG sent as JSON", "raw", GOOD, 400, "", ctype="application/json"),
        Case(
            "deep JSON (5000 levels)",
            "raw",
            _sig_json(g, "[" * 5000 + "]" * 5000),
            400,
            "nested",
            ctype="application/json",
        ),
        Case(
            "nested JSON (20 levels)",
            "raw",
            _sig_json(g, "[" * 20 + "]" * 20),
            400,
            "nested",
            ctype="application/json",
        ),
        Case(
            "huge JSON (20000 names)",
            "json",
            _with({"signatures": {f"sig{i}": 1.0 for i in range(20000)}}),
            400,
            "unknown signature",
        ),
        Case(
            "duplicate JSON keys",
            "raw",
            _sig_json(g, '{"fog":1,"fog":2}'),
            400,
            "duplicate key",
            ctype="application/json",
        ),
        # -- the mix ----------------------------------------------------------------------------
        Case("unknown signature", "json", _with({"signatures": {"snow": 1}}), 400, "known:"),
        Case("duplicate names (list)", "json", _with({"signatures": ["fog", "fog"]}), 400, "twice"),
        Case("duplicate names (text)", "json", _with({"signatures": "fog:1,fog:2"}), 400, "twice"),
        Case(
            "NaN alpha",
            "raw",
            _sig_json(g, '{"fog":NaN}'),
            400,
            "finite",
            ctype="application/json",
        ),
        Case(
            "Infinity alpha",
            "raw",
            _sig_json(g, '{"fog":-Infinity}'),
            400,
            "finite",
            ctype="application/json",
        ),
        Case(
            "1e400 alpha (overflows to inf)",
            "raw",
            _sig_json(g, '{"fog":1e400}'),
            400,
            "finite",
            ctype="application/json",
        ),
        Case("huge alpha", "json", _with({"signatures": {"fog": 1e300}}), 400, "maximum"),
        Case("negative alpha", "json", _with({"signatures": {"fog": -0.5}}), 400, "negative"),
        Case("alpha as string", "json", _with({"signatures": {"fog": "1"}}), 400, "number"),
        Case("alpha as boolean", "json", _with({"signatures": {"fog": True}}), 400, "number"),
        Case("alpha as object", "json", _with({"signatures": {"fog": {"a": 1}}}), 400, "number"),
        Case("signatures a number", "json", _with({"signatures": 5}), 400, "must be an object"),
        Case("signatures list of numbers", "json", _with({"signatures": [1, 2]}), 400, "names"),
        Case("alpha text not a number", "json", _with({"signatures": "fog:abc"}), 400, "number"),
        Case("unicode name", "json", _with({"signatures": {"føg": 1}}), 400, "unknown signature"),
        Case("emoji name", "json", _with({"signatures": "\U0001f600:1"}), 400, "unknown"),
        Case("name with NUL", "json", _with({"signatures": ["fog\x00"]}), 400, ""),
        Case("auto without a detector", "json", _with({"signatures": "auto"}), 400, "detector"),
        # -- top_k ---------------------------------------------------------------------------------
        Case("top_k 0", "json", _with({"top_k": 0}), 400, "between 1 and 10"),
        Case("top_k 11", "json", _with({"top_k": 11}), 400, "between 1 and 10"),
        Case("top_k negative", "json", _with({"top_k": -3}), 400, "between"),
        Case("top_k 1e30", "json", _with({"top_k": 10**30}), 400, "between"),
        Case("top_k 2.5", "json", _with({"top_k": 2.5}), 400, "integer"),
        Case("top_k string", "json", _with({"top_k": "3"}), 400, "integer"),
        Case("top_k boolean", "json", _with({"top_k": True}), 400, "integer"),
        Case(
            "X-RWS-Top-K not a number",
            "raw",
            GOOD,
            400,
            "top_k",
            ctype="image/png",
            headers={"X-RWS-Top-K": "three"},
        ),
        Case(
            "X-RWS-Signatures unknown",
            "raw",
            GOOD,
            400,
            "unknown signature",
            ctype="image/png",
            headers={"X-RWS-Signatures": "snow:1"},
        ),
        # -- Content-Type ---------------------------------------------------------------------
        Case(
            "Content-Type application/xml", "raw", b"<a/>", 415, "Content-Type", "application/xml"
        ),
        Case(
            "Content-Type text/plain", "raw", json.dumps(_with({})).encode(), 415, "", "text/plain"
        ),
        Case("Content-Type video/mp4", "raw", GOOD, 415, "Content-Type", ctype="video/mp4"),
    ]
    odd = [
        ("grayscale PNG", gray_png(), None, 5),
        ("CMYK JPEG", cmyk_jpeg(), {"fog": 1.0}, 3),
        ("RGBA PNG", rgba_png(), ["contrast"], 5),
        ("16-bit grayscale PNG", png16(), "gaussian_noise:2", 2),
        ("palette PNG", palette_png(), None, 10),
        ("animated GIF (first frame)", animated_gif(), {"pixelate": 0.3, "fog": 0.2}, 4),
        ("8x400 strip", png(5, (8, 400)), None, 1),
        ("BMP", encode(rgb(18), "BMP"), None, 5),
        ("WebP", encode(rgb(19), "WEBP"), None, 5),
        ("TIFF", encode(rgb(20), "TIFF"), None, 5),
        ("subnormal alpha", GOOD, {"fog": 1e-320}, 5),
        ("zero alpha", GOOD, {"fog": 0.0}, 5),
    ]
    for name, data, mix, k in odd:
        cases.append(
            Case(
                name,
                "json",
                {"image": b64(data), "signatures": mix, "top_k": k},
                200,
                image=data,
                mix=mix,
                top_k=k,
            )
        )
    jpg = jpeg(4)
    cases.append(
        Case(
            "JPEG labelled image/png",
            "raw",
            jpg,
            200,
            ctype="image/png",
            headers={"X-RWS-Signatures": "fog:0.5", "X-RWS-Top-K": "3"},
            image=jpg,
            mix="fog:0.5",
            top_k=3,
        )
    )
    cases.append(
        Case(
            "data URL image",
            "json",
            {"image": "data:image/png;base64," + b64(GOOD), "top_k": 2},
            200,
            image=GOOD,
            top_k=2,
        )
    )
    return cases


# --------------------------------------------------------------------------------------------
# the server


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_serving_folder(tmp_path_factory.mktemp("folder") / "tiny-vgg")


@pytest.fixture(scope="module")
def engine(folder: Path) -> Engine:
    return Engine.from_folder(folder, device="cpu")


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("serve")
    with running_server(folder, run_dir, max_batch_delay=150, max_body_bytes=MAX_BODY) as srv:
        yield srv


def _send(srv: serving.Server, case: Case) -> tuple[int, str, Any]:
    s = session(srv)
    if case.kind == "json":
        r = s.post(srv.inference_url, json=case.body, timeout=60)
    else:
        headers = dict(case.headers)
        if case.ctype is not None:
            headers["Content-Type"] = case.ctype
        r = s.post(srv.inference_url, data=case.body, headers=headers, timeout=60)
    try:
        payload = r.json()
    except ValueError:
        payload = r.text
    return r.status_code, r.headers.get("Content-Type", ""), payload


def _good_cases(wave: int, n: int) -> list[Case]:
    mixes = [None, {"fog": 1.0}, ["contrast", "pixelate"], "gaussian_noise:0.7,fog:0.2"]
    out = []
    for j in range(n):
        data = png(10_000 + wave * 8 + j)
        mix, k = mixes[j % len(mixes)], 1 + (wave + j) % 10
        body = {"image": b64(data), "signatures": mix, "top_k": k}
        out.append(Case(f"good {wave}.{j}", "json", body, 200, image=data, mix=mix, top_k=k))
    return out


def _wave(
    pool: ThreadPoolExecutor, srv: serving.Server, batch: list[Case]
) -> list[tuple[int, str, Any]]:
    """Send ``batch`` at once (a barrier releases all threads together)."""
    barrier = threading.Barrier(len(batch))

    def go(case: Case) -> tuple[int, str, Any]:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        return _send(srv, case)

    return list(pool.map(go, batch))


def _check(case: Case, got: tuple[int, str, Any], engine: Engine) -> str | None:
    """The problem with an answer, or None when it is what ``case`` must get."""
    status, ctype, payload = got
    if status != case.status:
        return f"{case.name}: status {status}, want {case.status}: {str(payload)[:200]}"
    if not isinstance(payload, dict) or "application/json" not in ctype:
        return f"{case.name}: not a JSON object ({ctype}): {str(payload)[:200]}"
    if status == 200:
        want = expected(engine, case.image, case.mix, case.top_k)
        if not same_answer(payload, want):
            return f"{case.name}: answer differs from the reference: {payload} vs {want}"
        return None
    if payload.get("status") != status or not isinstance(payload.get("error"), str):
        return f"{case.name}: error body {payload}"
    if case.match not in payload["error"]:
        return f"{case.name}: message {payload['error']!r} lacks {case.match!r}"
    return None


@pytest.mark.server
@needs_server
def test_bad_input_catalogue_inside_batches(server, engine) -> None:
    """Each kind gets its own status and JSON message while sharing a batch with good requests;
    the good ones are answered exactly; the worker is never restarted."""
    cases = catalogue()
    assert len({c.name for c in cases}) == len(cases)
    assert sum(c.status >= 400 for c in cases) >= 30
    before = workers(server)
    pending = list(cases)
    problems: list[str] = []
    shared: dict[str, int] = {}
    tries: dict[str, int] = {}
    with ThreadPoolExecutor(8) as pool:
        for wave in range(3 * len(cases)):  # bounded: a case unbatched 3 times is reported
            if not pending:
                break
            bad = pending[:4]
            pending = pending[4:]
            good = _good_cases(wave, 8 - len(bad))
            batch = [x for pair in zip(bad + [None] * 4, good, strict=False) for x in pair if x]
            results = _wave(pool, server, batch)
            for case, got in zip(batch, results, strict=True):
                problem = _check(case, got, engine)
                if problem:
                    problems.append(problem)
                    continue
                if any(case is b for b in bad):
                    size = got[2].get("batch_size", 0)
                    if size > 1:
                        shared[case.name] = size
                    else:  # answered alone (timing): send it again in a later wave
                        tries[case.name] = tries.get(case.name, 0) + 1
                        if tries[case.name] < 3:
                            pending.append(case)
    assert not problems, "\n".join(problems)
    alone = [c.name for c in cases if c.name not in shared]
    assert not alone, f"never shared a batch with other requests: {alone}"
    after = workers(server)
    assert [(w["pid"], w["startTime"]) for w in after] == [
        (w["pid"], w["startTime"]) for w in before
    ], "the worker was restarted"
    assert {w["status"] for w in after} == {"READY"}
    print(f"\ncatalogue: {len(cases)} kinds, {sum(c.status >= 400 for c in cases)} refused")


@pytest.mark.server
@needs_server
def test_body_over_the_frontend_limit_is_413(server, engine) -> None:
    """A body above TorchServe's max_request_size is refused by the gateway with a JSON 413
    before it reaches TorchServe; the server keeps answering."""
    limit = MAX_BODY * 4 // 3 + 64 * 1024
    assert f"max_request_size={limit}" in (server.run_dir / "config.properties").read_text()
    r = requests.post(
        server.inference_url,
        data=b"\0" * (limit + 1024),
        headers={**server.headers(), "Content-Type": "image/png"},
        timeout=60,
    )
    assert r.status_code == 413 and f"limit of {limit} bytes" in r.json()["error"]
    r = session(server).post(server.inference_url, json={"image": b64(GOOD)}, timeout=60)
    assert r.status_code == 200
    assert same_answer(r.json(), expected(engine, GOOD, None, 5))


@pytest.mark.server
@needs_server
def test_multipart_and_form_bodies_are_refused(server) -> None:
    """Form encodings the handler does not speak get a 415 naming the fix, from the gateway in
    front of TorchServe, whatever their bytes (TorchServe's own form decoder would answer a
    bad %-escape with a 500); the worker is untouched."""
    s = session(server)
    for name in ("file", "data"):
        r = s.post(server.inference_url, files={name: ("x.png", GOOD, "image/png")}, timeout=60)
        assert r.status_code == 415 and "multipart/form-data" in r.json()["error"], r.text
    r = s.post(server.inference_url, data={"image": b64(GOOD)}, timeout=60)
    assert r.status_code == 415 and "sent as a form" in r.json()["error"]
    # curl --data-binary @x.png without a Content-Type sends the PNG as a form; this example's
    # bytes hold a '%' not followed by two hex digits
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    example = Path(__file__).resolve().parents[2] / "demo/examples/automobile-gaussian_noise.png"
    bad_escape = example.read_bytes()
    assert re.search(rb"%(?![0-9A-Fa-f]{2})", bad_escape)
    for body in (b"\x89PNG\r\n\x1a\n binary", bad_escape):
        r = s.post(server.inference_url, data=body, headers=form, timeout=60)
        assert r.status_code == 415 and "Content-Type: image/png" in r.json()["error"], r.text
    broken = {"Content-Type": "multipart/form-data; boundary=xyz"}
    r = s.post(server.inference_url, data=b"--xyz\r\nno headers", headers=broken, timeout=60)
    assert r.status_code == 415 and r.json()["status"] == 415
    assert {w["status"] for w in workers(server)} == {"READY"}
    r = s.post(server.inference_url, data=GOOD, headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200


@pytest.mark.server
@needs_server
def test_protocol_level_oddities(server, engine) -> None:
    """What the frontend refuses before the handler: an oversized header, unknown models and
    versions, a management call with the inference key, registering a model; a client that
    promises a body and hangs up; chunked bodies and PUT are served. The worker stays."""
    import socket

    before = workers(server)
    base, h = server.opts.inference_url, server.headers()
    r = requests.post(
        server.inference_url,
        data=GOOD,
        headers={**h, "Content-Type": "image/png", "X-RWS-Signatures": "fog:1," * 20000},
        timeout=30,
    )
    assert r.status_code == 431 and "headers" in r.json()["error"]  # the gateway
    for path, status in (("/predictions/nope", 404), ("/predictions/tiny/9.9", 404)):
        r = requests.post(base + path, json={"image": b64(GOOD)}, headers=h, timeout=30)
        assert r.status_code == status, (path, r.text)
    mgmt = server.opts.management_url
    r = requests.get(f"{mgmt}/models", headers=h, timeout=30)  # the inference key
    assert r.status_code in (400, 401, 403) and "Token" in r.text
    r = requests.post(
        f"{mgmt}/models",
        params={"url": "http://127.0.0.1:9/x.mar"},
        headers=server.headers("management"),
        timeout=30,
    )
    assert r.status_code == 405  # enable_model_api=false
    with socket.create_connection(("127.0.0.1", server.opts.port), timeout=5) as sock:
        sock.sendall(
            b"POST /predictions/tiny HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
            + h["Authorization"].encode()
            + b"\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\nabc"
        )
    want = expected(engine, GOOD, "fog:0.5", 3)
    chunks = iter([GOOD[:50], GOOD[50:]])
    hdrs = {**h, "Content-Type": "image/png", "X-RWS-Signatures": "fog:0.5", "X-RWS-Top-K": "3"}
    r = requests.post(server.inference_url, data=chunks, headers=hdrs, timeout=30)
    assert r.status_code == 200 and same_answer(r.json(), want)
    r = requests.put(server.inference_url, data=GOOD, headers=hdrs, timeout=30)
    assert r.status_code == 200 and same_answer(r.json(), want)
    after = workers(server)
    assert [(w["pid"], w["startTime"]) for w in after] == [
        (w["pid"], w["startTime"]) for w in before
    ]


@pytest.mark.server
@needs_server
def test_token_auth_is_on_and_addresses_are_loopback(server) -> None:
    """Token auth guards inference and management; every address in config.properties is
    loopback."""
    props = dict(
        line.split("=", 1)
        for line in (server.run_dir / "config.properties").read_text().splitlines()
        if "=" in line
    )
    assert props["disable_token_authorization"] == "false"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), (key, props[key])
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert props[key] == "127.0.0.1"
    for url in (server.inference_url, f"{server.opts.management_url}/models"):
        r = requests.get(url, timeout=30)
        assert r.status_code in (400, 401, 403) and "Token" in r.text
    r = requests.post(server.inference_url, json={"image": b64(GOOD)}, timeout=30)
    assert r.status_code in (400, 401, 403)


def test_defaults_bind_loopback_with_auth(tmp_path: Path) -> None:
    """`rws serve`, `rws demo`, `rws up` and the demo app default to 127.0.0.1 and token auth
    (checked without starting anything)."""
    import argparse
    import ast

    from rws_hub.cli import build_parser

    opts = serving.ServeOptions(folder=tmp_path, run_dir=tmp_path / "run", model_name="m")
    assert opts.host == "127.0.0.1" and opts.auth is True and opts.gateway is True
    cfg, _ = serving.write_configs(opts)
    text = cfg.read_text()
    # TorchServe's inference API sits on a private loopback port behind the gateway (8080)
    assert f"inference_address=http://127.0.0.1:{opts.backend_port}" in text
    assert opts.inference_url == "http://127.0.0.1:8080"
    direct = serving.ServeOptions(
        folder=tmp_path, run_dir=tmp_path / "direct", model_name="m", gateway=False
    )
    assert "inference_address=http://127.0.0.1:8080" in serving.write_configs(direct)[0].read_text()
    assert "management_address=http://127.0.0.1:8081" in text
    assert "metrics_address=http://127.0.0.1:8082" in text
    assert "grpc_inference_address=127.0.0.1" in text
    assert "disable_token_authorization=false" in text

    hosts: dict[str, Any] = {}
    subs = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for verb, sub in subs[0].choices.items():
        for action in sub._actions:
            if "--host" in action.option_strings:
                hosts[verb] = action.default
            if "--no-auth" in action.option_strings:
                assert action.default is False, verb
    assert "serve" in hosts, hosts
    assert set(hosts.values()) == {"127.0.0.1"}, hosts

    # the Gradio app's launch() (rws_hub/integrations/gradio_app.py; demo/app.py re-exports
    # it): read its default without importing gradio
    app = Path(__file__).resolve().parents[2] / "rws_hub" / "integrations" / "gradio_app.py"
    assert app.is_file(), app
    tree = ast.parse(app.read_text())
    launch = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "launch"]
    assert launch, f"{app} has no launch()"
    args = launch[0].args
    positional = args.posonlyargs + args.args
    named = {
        a.arg: d
        for a, d in zip(
            positional[len(positional) - len(args.defaults) :], args.defaults, strict=True
        )
    }
    named.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d})
    assert ast.literal_eval(named["host"]) == "127.0.0.1"


# --------------------------------------------------------------------------------------------
# property tests of rws_hub.inference.parsing (no server)


PARSER = RequestParser(
    known={"gaussian_noise": 0.5, "fog": 0.75, "contrast": 1.0, "pixelate": 1.25},
    num_classes=10,
    max_alpha=3.0,
    limits=RequestLimits(max_body_bytes=MAX_BODY),
)
SMALL = b64(png(7, (12, 10)))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=30,
)
content_types = st.sampled_from(
    [
        None,
        "",
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "image/png",
        "image/jpeg",
        "application/octet-stream",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
        ";;;",
        "IMAGE/PNG",
    ]
)
queries = st.dictionaries(
    st.sampled_from(["signatures", "top_k", "other"]),
    st.one_of(
        st.text(max_size=20),
        st.text(st.characters(categories=("Nd", "No")), max_size=4),  # '²', '３', '٣' ...
        st.binary(max_size=20),
        st.lists(st.text(max_size=5)),
    ),
    max_size=3,
)


def _parse_or_refuse(call: Callable[[], Any]) -> Any:
    """Run a parse; it must succeed or raise RequestError with a 4xx status and a message."""
    try:
        return call()
    except RequestError as exc:
        assert 400 <= exc.status < 500, exc.status
        assert str(exc)
        return None


def _valid(req: Any) -> None:
    """A successful parse is well-formed: image (3, 32, 32) in [0, 1], a checked mix, top_k."""
    if req is None:
        return
    assert req.image.shape == (3, 32, 32) and req.image.dtype == torch.float32
    assert torch.isfinite(req.image).all() and 0 <= req.image.min() <= req.image.max() <= 1
    assert isinstance(req.mix, Mix)
    for name, alpha in req.mix.items():
        assert name in PARSER.known and math.isfinite(alpha) and 0 < alpha <= 3.0
    assert 1 <= req.top_k <= 10


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(body=st.binary(max_size=300), ctype=content_types, query=queries)
def test_property_any_bytes(body: bytes, ctype: str | None, query: dict) -> None:
    _valid(_parse_or_refuse(lambda: PARSER.parse(body, content_type=ctype, query=query)))


@FAST
@given(value=json_values, ctype=content_types)
def test_property_any_json_value(value: Any, ctype: str | None) -> None:
    _valid(_parse_or_refuse(lambda: PARSER.parse(value, content_type=ctype)))
    text = json.dumps(value)  # NaN/Infinity as JSON's extension literals
    _valid(_parse_or_refuse(lambda: PARSER.parse(text.encode(), content_type=ctype)))
    _valid(_parse_or_refuse(lambda: PARSER.parse(text, content_type=ctype)))


@FAST
@given(
    signatures=json_values
    | st.dictionaries(
        st.sampled_from([*NAMES, "snow", "FOG", " fog "]),
        st.floats(allow_nan=True) | st.integers(-5, 5),
        max_size=4,
    )
    | st.lists(st.sampled_from([*NAMES, "snow", ""]), max_size=5)
    | st.text(alphabet=st.sampled_from("fogcntrast_:,.-0123456789e auto"), max_size=30),
    top_k=json_values | st.integers(-20, 20),
    extra=st.dictionaries(st.sampled_from(["image", "x", "signatures"]), json_values, max_size=1),
)
def test_property_request_objects(signatures: Any, top_k: Any, extra: dict) -> None:
    body = {"image": SMALL, "signatures": signatures, "top_k": top_k, **extra}
    _valid(_parse_or_refuse(lambda: PARSER.parse(body)))
    raw = json.dumps(body).encode()
    _valid(_parse_or_refuse(lambda: PARSER.parse(raw, content_type="application/json")))


@FAST
@given(
    top_k=st.text(
        st.characters(categories=("Nd", "No")).filter(str.isdigit), min_size=1, max_size=3
    )
    | st.text(max_size=8),
    signatures=st.text(max_size=16) | st.binary(max_size=16),
    ctype=st.sampled_from(["image/png", "application/octet-stream", "image/x-anything"]),
)
def test_property_query_parameters(top_k: str, signatures: Any, ctype: str) -> None:
    """A valid image with arbitrary query parameters / X-RWS-* header values (Unicode digits
    such as '\u00b2' or '\u1369' included): parsed or refused with a 4xx, never another error."""
    query = {"top_k": top_k, "signatures": signatures}
    _valid(_parse_or_refuse(lambda: PARSER.parse(GOOD, content_type=ctype, query=query)))


@FAST
@given(
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]),
)
def test_property_damaged_images(cut: int, flips: list, fmt: str) -> None:
    """Truncated or bit-flipped images decode to a valid tensor or are refused with a 4xx."""
    data = bytearray(encode(rgb(3, (20, 16)), fmt))
    for pos, byte in flips:
        data[pos % len(data)] = byte
    data = data[: max(0, len(data) - cut)]
    out = _parse_or_refuse(lambda: decode_image(bytes(data), (32, 32)))
    if out is not None:
        assert out.shape == (3, 32, 32) and torch.isfinite(out).all()
        assert 0 <= out.min() <= out.max() <= 1


def test_property_strategies_reach_success() -> None:
    """The parser accepts the good forms the property tests mutate (so they test something)."""
    for sig in (None, ["fog"], {"fog": 1.5, "contrast": 0.5}, "pixelate:2", ""):
        req = PARSER.parse({"image": SMALL, "signatures": sig, "top_k": 3})
        _valid(req)
    assert base64.b64decode(SMALL)[:4] == b"\x89PNG"
