"""Soak a running server: concurrent requests of random mixes, every answer checked.

:func:`run_soak` sends requests from several client threads (persistent sessions, see
:mod:`rws_hub.launch.client`) in the wire forms the handler accepts (JSON with the mix as an
object, list or text; raw image bytes with the mix in ``X-RWS-*`` headers; ``"auto"`` when the
model has a corruption detector) and compares every answer with the single-request in-process
reference of an :class:`~rws_hub.inference.engine.Engine` on the same model folder
(:func:`expected`, :func:`same_answer`). ``benchmarks/soak.py`` (thousands of requests) and
``tests/integration/test_soak.py`` (a few hundred) run it. Needs ``requests`` (the ``serve``
extra).
"""

from __future__ import annotations

import io
import json
import random
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from rws_hub.inference.engine import Engine
from rws_hub.inference.parsing import RequestParser
from rws_hub.launch.client import b64, describe, predict
from rws_hub.launch.torchserve import Server

__all__ = [
    "SoakResult",
    "expected",
    "make_images",
    "png",
    "random_mix",
    "run_soak",
    "same_answer",
]


@dataclass
class SoakResult:
    """What a soak measured. Latencies are client-side, in milliseconds."""

    requests: int = 0
    answered: int = 0
    mismatches: int = 0
    errors: int = 0
    error_statuses: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    wall_s: float = 0.0
    reference_s: float = 0.0
    throughput_rps: float = 0.0
    clients: int = 0
    distinct_mixes: int = 0
    auto_requests: int = 0
    batch_sizes: dict[str, int] = field(default_factory=dict)
    forms: dict[str, int] = field(default_factory=dict)
    mismatch_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, latencies, throughput, mixes and batch sizes."""
        return (
            f"{self.requests} requests, {self.clients} clients, {self.mismatches} mismatches, "
            f"{self.errors} errors, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"{self.throughput_rps:.0f} req/s, {self.distinct_mixes} distinct mixes, "
            f"{self.auto_requests} auto, batch sizes {self.batch_sizes}"
        )


def png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """A random RGB PNG of ``size`` (width, height)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def expected(engine: Engine, data: bytes, mix: Any, top_k: int) -> dict[str, Any]:
    """The single-request in-process answer for one image and mix (the reference)."""
    req = RequestParser.for_engine(engine).parse(
        {"image": b64(data), "signatures": mix, "top_k": top_k}
    )
    return engine.classify(req.image[None], [req.mix], top_k=req.top_k)[0]


def same_answer(
    answer: dict[str, Any], want: dict[str, Any], atol: float = 1e-5, rtol: float = 1e-4
) -> bool:
    """Whether a served answer equals the reference: same mix, classes and probabilities."""
    if answer.get("mix") != want["mix"]:
        return False
    if [p["class"] for p in answer["predictions"]] != [p["class"] for p in want["predictions"]]:
        return False
    got = np.array([p["probability"] for p in answer["predictions"]])
    ref = np.array([p["probability"] for p in want["predictions"]])
    return bool(np.allclose(got, ref, atol=atol, rtol=rtol))


def make_images(n: int, seed: int) -> list[bytes]:
    """``n`` random PNGs of assorted sizes (square and not, up to 64 px)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (32, 32) if i % 3 == 0 else (int(rng.integers(16, 65)), int(rng.integers(16, 65)))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def random_mix(rng: random.Random, names: list[str], max_alpha: float, auto: bool) -> Any:
    """A random mix in one of the accepted forms (None, dict, list, text, or "auto")."""
    if auto and rng.random() < 0.1:
        return "auto"
    chosen = rng.sample(names, rng.randint(0, min(3, len(names))))
    form = rng.choice(["dict", "dict", "list", "text", "none"])
    if not chosen or form == "none":
        return None
    if form == "list":
        return chosen
    alphas = {n: round(rng.uniform(0.05, max_alpha), 3) for n in chosen}
    if form == "text":
        return ",".join(f"{n}:{a}" for n, a in alphas.items())
    return alphas


def _same(answer: dict[str, Any], want: dict[str, Any], atol: float, rtol: float) -> bool:
    """:func:`same_answer`, and both agree on whether "auto" chose the mix."""
    if bool(answer.get("auto")) != bool(want.get("auto")):
        return False
    return same_answer(answer, want, atol=atol, rtol=rtol)


def run_soak(
    server: Server,
    engine: Engine,
    *,
    total: int = 300,
    clients: int = 8,
    seed: int = 0,
    max_seconds: float = 60.0,
    images: int = 24,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> SoakResult:
    """Send ``total`` requests from ``clients`` threads (persistent sessions) and compare every
    answer with the single-request in-process answer of ``engine``."""
    meta = describe(server)
    names = [s["name"] for s in meta["signatures"]]
    auto = bool(meta.get("auto")) and engine.detector is not None
    max_alpha = min(float(meta.get("max_alpha") or 2.0), 2.5)
    pool = make_images(images, seed)
    rng = random.Random(seed)
    jobs = []
    for i in range(total):
        mix = random_mix(rng, names, max_alpha, auto)
        jobs.append((i, rng.randrange(len(pool)), mix, rng.randint(1, len(engine.classes))))

    deadline = time.monotonic() + max_seconds

    def send(job: tuple[int, int, Any, int]) -> tuple[int, Any, float, str]:
        i, img, mix, k = job
        if time.monotonic() > deadline:
            return -2, "not sent (time bound)", 0.0, "none"
        raw = i % 4 == 3  # raw bytes with the mix in headers, else a JSON body
        form = "raw" if raw else "json"
        start = time.perf_counter()
        try:  # one persistent session per client thread
            r = predict(server, pool[img], mix, k, raw=raw)
            status, answer = r.status_code, r.json()
        except Exception as exc:  # noqa: BLE001 (counted as an error, never raised)
            status, answer, form = -1, repr(exc), "error"
        return status, answer, (time.perf_counter() - start) * 1000, form

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(send, jobs))
    wall = time.perf_counter() - t0

    # the reference, after the load (one image at a time through the in-process engine)
    t1 = time.perf_counter()
    refs: dict[tuple[int, str, int], dict[str, Any]] = {}
    out = SoakResult(clients=clients, wall_s=round(wall, 2))
    latencies, batches, errors, forms = [], Counter(), Counter(), Counter()
    mixes: set[str] = set()
    for (_i, img, mix, k), (status, answer, ms, form) in zip(jobs, results, strict=True):
        if status == -2:
            continue
        out.requests += 1
        forms[form] += 1
        out.auto_requests += mix == "auto"
        if status != 200 or not isinstance(answer, dict):
            errors[str(status)] += 1
            continue
        out.answered += 1
        latencies.append(ms)
        batches[str(answer.get("batch_size"))] += 1
        key = (img, json.dumps(mix, sort_keys=True), k)
        if key not in refs:
            refs[key] = expected(engine, pool[img], mix, k)
        mixes.add(json.dumps(answer.get("mix"), sort_keys=True))
        if not _same(answer, refs[key], atol, rtol):
            out.mismatches += 1
            if len(out.mismatch_examples) < 5:
                out.mismatch_examples.append(f"{mix!r} image {img}: {answer} vs {refs[key]}")
    out.errors = sum(errors.values())
    out.error_statuses = dict(errors)
    out.batch_sizes = dict(sorted(batches.items(), key=lambda kv: int(kv[0] or 0)))
    out.forms = dict(forms)
    out.distinct_mixes = len(mixes)
    if latencies:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        out.p50_ms, out.p99_ms = round(q[49], 2), round(q[98], 2)
        out.max_ms = round(max(latencies), 2)
    out.throughput_rps = round(out.requests / wall, 1) if wall > 0 else 0.0
    out.reference_s = round(time.perf_counter() - t1, 2)
    return out
