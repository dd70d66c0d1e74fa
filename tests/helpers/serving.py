"""Helpers for tests that start a real TorchServe with rws_hub.launch.torchserve: a tiny model folder,
free loopback ports, a started server, PNG bodies, the in-process reference and its comparison,
persistent client sessions and the management API's worker info."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from PIL import Image

from rws_hub.archs.models import create_model
from rws_hub.core.signature import Signature
from rws_hub.inference.engine import Engine
from rws_hub.inference.parsing import RequestParser
from rws_hub.io.folder import save_model_folder
from rws_hub.launch import torchserve as serving

NAMES = ("gaussian_noise", "fog", "contrast", "pixelate")

HAVE_TORCHSERVE = (
    shutil.which("java") is not None
    and (Path(serving.sys.executable).parent / "torchserve").exists()
)
"""Java 17 and the torchserve program are available (server tests skip otherwise)."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_serving_folder(path: Path, names: tuple[str, ...] = NAMES) -> Path:
    """A tiny model folder at ``path``: VGG-16 at width 0.125 and random signatures on the
    first three conv layers (K=3), default alphas 0.5, 0.75, 1.0, ..."""
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", width=0.125).eval()
    gen = torch.Generator().manual_seed(1)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][:3]
    sd = model.state_dict()
    sigs = []
    for i, name in enumerate(names):
        tensors = {
            f"{c}.{t}": torch.randn(sd[f"{c}.{t}"].shape, generator=gen) * 0.1
            for c in convs
            for t in ("weight", "bias")
        }
        sigs.append(Signature(name, tensors, layers=3, default_alpha=0.5 + 0.25 * i))
    config = {"architecture": "vgg16_cifar", "width": 0.125, "lineage": "test-lineage"}
    return save_model_folder(path, model=model, config=config, signatures=sigs)


def add_test_detector(folder: Path, seed: int = 3) -> Path:
    """Give ``folder`` a corruption detector (so ``"auto"`` is served): untrained, with the
    backbone's conv1 and a random head sharpened so that different images get different mixes
    (rule: up to two corruptions with probability >= 0.1, alpha = default x probability)."""
    from rws_hub.detect.detector import CorruptionDetector, detector_classes
    from rws_hub.io.folder import ModelFolder, add_detector

    loaded = ModelFolder.load(folder)
    torch.manual_seed(seed)
    conv1 = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d))
    det = CorruptionDetector(
        classes=detector_classes(list(loaded.signatures)),
        hidden=32,
        conv_channels=conv1.out_channels,
    )
    det.set_backbone_conv(loaded.model)
    with torch.no_grad():
        det.head[-1].weight.mul_(30)
    config = det.spec() | {"rule": {"kind": "weighted", "threshold": 0.1, "top_k": 2}}
    return add_detector(folder, det.state_dict(), config)


def start_server(folder: Path, run_dir: Path, name: str = "tiny", **options: Any) -> serving.Server:
    """Start TorchServe for ``folder`` on free loopback ports (waits until READY).

    ``options`` go to :class:`~rws_hub.launch.torchserve.ServeOptions` (defaults: batch 8, 100 ms batch
    delay, ``max_alpha`` 3 and one torch thread)."""
    port, mport, xport, gport = free_ports(4)
    options.setdefault("batch_size", 8)
    options.setdefault("max_batch_delay", 100)
    options.setdefault("settings", {"max_alpha": 3.0, "threads": 1})
    opts = serving.ServeOptions(
        folder=folder,
        run_dir=run_dir,
        model_name=name,
        port=port,
        management_port=mport,
        metrics_port=xport,
        grpc_port=gport,
        **options,
    )
    return serving.start(opts, timeout=180)


def stop_server(srv: serving.Server) -> None:
    """Stop ``srv`` and check that its frontend process is gone."""
    java = srv.java_pid()
    srv.stop()
    assert java is not None and not serving._pid_alive(java), "TorchServe still running"
    assert not srv.alive()


def png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """A random RGB PNG of ``size`` (width, height)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    """``data`` as base64 text."""
    return base64.b64encode(data).decode()


def expected(engine: Engine, data: bytes, mix: Any, top_k: int) -> dict:
    """The single-request in-process answer for one image and mix (the reference)."""
    req = RequestParser.for_engine(engine).parse(
        {"image": b64(data), "signatures": mix, "top_k": top_k}
    )
    return engine.classify(req.image[None], [req.mix], top_k=req.top_k)[0]


def same_answer(answer: dict, want: dict, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Whether a served answer equals the reference: same mix, classes and probabilities."""
    if answer.get("mix") != want["mix"]:
        return False
    if [p["class"] for p in answer["predictions"]] != [p["class"] for p in want["predictions"]]:
        return False
    got = np.array([p["probability"] for p in answer["predictions"]])
    ref = np.array([p["probability"] for p in want["predictions"]])
    return bool(np.allclose(got, ref, atol=atol, rtol=rtol))


def assert_same(answer: dict, want: dict) -> None:
    """Assert a served answer equals the reference (see :func:`same_answer`)."""
    assert answer["mix"] == want["mix"]
    assert [p["class"] for p in answer["predictions"]] == [p["class"] for p in want["predictions"]]
    got = [p["probability"] for p in answer["predictions"]]
    ref = [p["probability"] for p in want["predictions"]]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)


_local = threading.local()


def session(srv: serving.Server) -> requests.Session:
    """One persistent (kept-alive) session per client thread and server."""
    cache = getattr(_local, "sessions", None)
    if cache is None:
        cache = _local.sessions = {}
    s = cache.get(id(srv))
    if s is None:
        s = cache[id(srv)] = requests.Session()
        s.headers.update(srv.headers())
    return s


def workers(srv: serving.Server) -> list[dict[str, Any]]:
    """The model's workers from ``GET /models/<name>`` (id, pid, status, startTime, ...)."""
    r = requests.get(
        f"{srv.opts.management_url}/models/{srv.opts.model_name}",
        headers=srv.headers("management"),
        timeout=30,
    )
    r.raise_for_status()
    return list(r.json()[0]["workers"])


def describe(srv: serving.Server) -> dict[str, Any]:
    """The handler's ``customizedMetadata`` (``Engine.describe``) via the management API."""
    r = requests.get(
        f"{srv.opts.management_url}/models/{srv.opts.model_name}",
        params={"customized": "true"},
        headers=srv.headers("management"),
        timeout=30,
    )
    r.raise_for_status()
    meta = r.json()[0]["customizedMetadata"]
    return json.loads(meta) if isinstance(meta, str) else meta
