"""A small REST client of a server started by :func:`rws_hub.launch.torchserve.start`.

Persistent, authorized sessions (one per thread and server), the handler's ``describe`` answer
and the model's workers from the management API, and a ``predict`` call in the wire forms the
handler accepts (JSON body, or raw image bytes with the mix in ``X-RWS-*`` headers). Used by the
soak (:mod:`rws_hub.launch.soak`, ``benchmarks/soak.py``) and the server tests. Needs
``requests`` (the ``serve`` extra).
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import requests

from rws_hub.launch.torchserve import Server

__all__ = ["b64", "describe", "mix_text", "predict", "session", "worker_pids", "workers"]

_local = threading.local()


def b64(data: bytes) -> str:
    """``data`` as base64 text (the JSON body's ``image``)."""
    return base64.b64encode(data).decode()


def session(server: Server) -> requests.Session:
    """One persistent (kept-alive) session per calling thread and server, with the server's
    inference token (if token authorization is on) in its headers."""
    cache: dict[int, requests.Session] | None = getattr(_local, "sessions", None)
    if cache is None:
        cache = _local.sessions = {}
    s = cache.get(id(server))
    if s is None:
        s = cache[id(server)] = requests.Session()
        s.headers.update(server.headers())
    return s


def _model_info(server: Server, **params: str) -> dict[str, Any]:
    r = requests.get(
        f"{server.opts.management_url}/models/{server.opts.model_name}",
        params=params or None,
        headers=server.headers("management"),
        timeout=30,
    )
    r.raise_for_status()
    return dict(r.json()[0])


def workers(server: Server) -> list[dict[str, Any]]:
    """The model's workers from ``GET /models/<name>`` (id, pid, status, startTime, ...)."""
    return list(_model_info(server)["workers"])


def worker_pids(server: Server) -> list[int]:
    """The pids of the model's workers (a restarted worker has a new pid)."""
    return [int(w["pid"]) for w in workers(server)]


def describe(server: Server) -> dict[str, Any]:
    """The handler's ``customizedMetadata`` (:meth:`Engine.describe`: signatures, classes,
    ``auto``, ``max_alpha``) via ``GET /models/<name>?customized=true``."""
    meta = _model_info(server, customized="true")["customizedMetadata"]
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def mix_text(mix: Any) -> str | None:
    """A mix as the text form of the ``X-RWS-Signatures`` header (``fog:0.5,contrast``);
    None and strings (``"auto"``, text already) pass through."""
    if mix is None or isinstance(mix, str):
        return mix
    if isinstance(mix, (list, tuple)):
        return ",".join(mix)
    return ",".join(f"{n}:{a}" for n, a in dict(mix).items())


def predict(
    server: Server,
    image: bytes,
    mix: Any = None,
    top_k: int = 5,
    *,
    raw: bool = False,
    content_type: str = "image/png",
    timeout: float = 120.0,
) -> requests.Response:
    """``POST`` one image to the model (with this thread's persistent session).

    ``mix``: None (clean), ``"auto"``, a dict name -> alpha, a list of names (default alphas)
    or text. ``raw=True`` sends the image bytes with the mix and ``top_k`` in headers;
    otherwise a JSON body ``{"image": <base64>, "signatures": mix, "top_k": top_k}``."""
    s = session(server)
    if raw:
        headers = {"Content-Type": content_type, "X-RWS-Top-K": str(top_k)}
        text = mix_text(mix)
        if text is not None:
            headers["X-RWS-Signatures"] = text
        return s.post(server.inference_url, data=image, headers=headers, timeout=timeout)
    body = {"image": b64(image), "signatures": mix, "top_k": top_k}
    return s.post(server.inference_url, json=body, timeout=timeout)
