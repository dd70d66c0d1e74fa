"""A small REST client of a server started by :func:`rws_hub.launch.torchserve.start`.

Persistent, authorized sessions (one per thread and server; a request refused for its token is
sent once more with a fresh key, renewed first when it expired: see
:meth:`rws_hub.launch.torchserve.Server.fresh_headers`), the handler's ``describe`` answer
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


def _token_refused(r: requests.Response) -> bool:
    """Whether TorchServe refused ``r`` for its token (missing, wrong or expired key)."""
    return r.status_code in (400, 401, 403) and "Token Authorization failed" in r.text[:500]


def _renew_on_token_failure(server: Server, s: requests.Session) -> Any:
    """A response hook: a request refused for its token is sent once more with the key that
    :meth:`Server.fresh_headers` gives (re-read from ``key_file.json``, renewed if expired).
    Only the session's own key is replaced: a request that set its own ``Authorization`` is
    left as it was answered."""

    def hook(r: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        req = r.request
        if (
            not server.opts.auth
            or getattr(req, "_rws_retried", False)
            or not _token_refused(r)
            or not isinstance(req.body, (bytes, str, type(None)))
            or req.headers.get("Authorization") != s.headers.get("Authorization")
        ):
            return r
        try:
            fresh = server.fresh_headers("inference")
        except Exception:  # noqa: BLE001 - renewal failed: the caller sees the refusal
            return r
        if not fresh or req.headers.get("Authorization") == fresh.get("Authorization"):
            return r
        s.headers.update(fresh)
        retry = req.copy()
        retry.headers.update(fresh)
        retry._rws_retried = True  # type: ignore[attr-defined]
        r.content  # noqa: B018 - read the refused answer so its connection is released
        return s.send(retry, **kwargs)

    return hook


def session(server: Server) -> requests.Session:
    """One persistent (kept-alive) session per calling thread and server, with the server's
    inference token (if token authorization is on) in its headers; a request refused for its
    token is retried once with a fresh key (renewed when it expired)."""
    cache: dict[int, requests.Session] | None = getattr(_local, "sessions", None)
    if cache is None:
        cache = _local.sessions = {}
    s = cache.get(id(server))
    if s is None:
        s = cache[id(server)] = requests.Session()
        s.headers.update(server.headers())
        s.hooks["response"].append(_renew_on_token_failure(server, s))
    return s


def _model_info(server: Server, **params: str) -> dict[str, Any]:
    r = requests.get(
        f"{server.opts.management_url}/models/{server.opts.model_name}",
        params=params or None,
        headers=server.fresh_headers("management"),
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
