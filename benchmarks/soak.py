"""Soak a real TorchServe with concurrent requests of random mixes; every answer must equal the
single-request in-process reference (the same model folder through :class:`Engine`).

The same code runs in ``tests/test_soak.py`` (a few hundred requests) and here (thousands)::

    .venv/bin/python benchmarks/soak.py --requests 5000 --clients 8 --out soak.json
    .venv/bin/python benchmarks/soak.py --folder path/to/model-folder --requests 3000

Without ``--folder`` a tiny model folder is made on the fly (the tests' VGG-16 at width 0.125
with four random signatures and, unless ``--no-auto``, an untrained corruption detector). The server listens on loopback only, with token auth and
batching on (``--batch-size``, ``--batch-delay``). Requests use persistent sessions, one per
client thread, and mix three wire forms: JSON with the mix as an object, list or text, and raw
image bytes with the mix in ``X-RWS-*`` headers. ``"auto"`` is sent too when the server's model
has a corruption detector (``describe()["auto"]``). Bounded: at most ``--requests`` requests
and ``--max-seconds`` of sending.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rws_hub.inference.engine import Engine
from rws_hub.launch import torchserve as serving

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "tests") not in sys.path:  # the server tests' helpers (tiny folder, client side)
    sys.path.insert(0, str(REPO / "tests"))
from serving_helpers import (  # noqa: E402
    add_test_detector,
    b64,
    describe,
    expected,
    make_serving_folder,
    same_answer,
    session,
    start_server,
    workers,
)


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
        return (
            f"{self.requests} requests, {self.clients} clients, {self.mismatches} mismatches, "
            f"{self.errors} errors, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"{self.throughput_rps:.0f} req/s, {self.distinct_mixes} distinct mixes, "
            f"{self.auto_requests} auto, batch sizes {self.batch_sizes}"
        )


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


def _mix_text(mix: Any) -> str | None:
    if mix is None or isinstance(mix, str):
        return mix
    if isinstance(mix, list):
        return ",".join(mix)
    return ",".join(f"{n}:{a}" for n, a in mix.items())


def _same(answer: dict[str, Any], want: dict[str, Any], atol: float, rtol: float) -> bool:
    """:func:`same_answer`, and both agree on whether "auto" chose the mix."""
    if bool(answer.get("auto")) != bool(want.get("auto")):
        return False
    return same_answer(answer, want, atol=atol, rtol=rtol)


def run_soak(
    server: serving.Server,
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
        s = session(server)  # one persistent session per client thread
        data = pool[img]
        start = time.perf_counter()
        try:
            if i % 4 == 3:  # raw bytes, the mix in headers
                form = "raw"
                headers = {"Content-Type": "image/png", "X-RWS-Top-K": str(k)}
                text = _mix_text(mix)
                if text is not None:
                    headers["X-RWS-Signatures"] = text
                r = s.post(server.inference_url, data=data, headers=headers, timeout=120)
            else:
                form = "json"
                body = {"image": b64(data), "signatures": mix, "top_k": k}
                r = s.post(server.inference_url, json=body, timeout=120)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=None, help="model folder (default: tiny)")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch-delay", type=int, default=5, help="maxBatchDelay in ms")
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the worker")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--no-auto", action="store_true", help="tiny folder without a detector")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop the server
    torch.set_num_threads(1)  # the reference shares the CPUs with the server

    with tempfile.TemporaryDirectory(prefix="rws-soak-") as tmp:
        folder = args.folder
        if folder is None:
            folder = make_serving_folder(Path(tmp) / "tiny-vgg")
            if not args.no_auto:
                add_test_detector(folder)
        engine = Engine.from_folder(folder, device="cpu", max_alpha=3.0)
        server = start_server(
            folder,
            Path(tmp) / "serve",
            "soak",
            batch_size=args.batch_size,
            max_batch_delay=args.batch_delay,
            settings={"max_alpha": 3.0, "threads": args.threads},
        )
        try:
            pid_before = _worker_pids(server)
            result = run_soak(
                server,
                engine,
                total=args.requests,
                clients=args.clients,
                seed=args.seed,
                max_seconds=args.max_seconds,
            )
            restarted = _worker_pids(server) != pid_before
        finally:
            server.stop()
    report = asdict(result) | {"worker_restarted": restarted, "batch_delay_ms": args.batch_delay}
    print(result.summary())
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if result.mismatches == 0 and result.errors == 0 and not restarted else 1


def _worker_pids(server: serving.Server) -> list[int]:
    return [int(w["pid"]) for w in workers(server)]


if __name__ == "__main__":
    raise SystemExit(main())
