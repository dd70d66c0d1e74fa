"""TorchServe handler for rws-hub: a thin adapter over :class:`rws_hub.inference.engine.Engine`.

Shipped in the package; ``rws serve`` archives this file (TorchServe imports it as the top-level
module ``torchserve_handler`` and takes its one class defined here, :class:`RWSHandler`).
``handlers/rws_handler.py`` of a checkout is a one-class subclass of it for hand-made archives.
This is the only module of ``rws_hub`` that imports TorchServe (``ts``).

Per batch: every row is parsed with :mod:`rws_hub.inference.parsing` (a bad row gets its own 4xx status
and a JSON error body; the other rows are still answered), then ONE ``engine.classify_rows`` call
runs the valid rows, each with its own mix; an error that belongs to one row there (an invalid or
overflowing mix, NaN/inf pixels, a non-finite output) answers that row alone with its status.
Every answer is checked against TorchServe's ``max_response_size`` (an answer over it would make
the frontend drop the worker and fail the whole batch): such a row gets 422 instead. The handler
always returns exactly one answer per row. Answers are JSON::

    {"predictions": [{"class": "cat", "probability": 0.91}, ...],
     "mix": {"fog": 0.5}, "model": "<folder name>", "batch_size": 8}

``batch_size`` is the number of requests TorchServe handed to this call (batching at work).

Raw image bodies (``Content-Type: image/png``, ...) take the mix from the query string of
``POST /invocations?model_name=<name>&signatures=fog:0.5&top_k=3`` (TorchServe passes query
parameters only there) or, on ``/predictions/<name>``, from the headers ``X-RWS-Signatures`` and
``X-RWS-Top-K``.
``GET /models/<name>?customized=true`` answers :meth:`Engine.describe` (signatures and metadata).
Describe is a management-API call only: the frontend sends it as a batch of one body-less row with
the header ``describe: True`` and without the ``explain`` header that it adds to every REST
inference request (see :func:`is_describe_call`); a client header ``describe`` on an inference
request never switches the handler into describe mode.
With ``service_envelope=kservev2`` the rows are KServe v2 inputs (see ``docs/deploy.md``).

Settings (``rws:`` section of the archive's ``model-config.yaml``, overridden by environment
variables): ``folder`` / ``RWS_MODEL_FOLDER`` (default: ``model-folder`` inside the archive),
``dtype`` / ``RWS_DTYPE`` (GPU only: float16, bfloat16), ``max_alpha`` / ``RWS_MAX_ALPHA``,
``allow_negative`` / ``RWS_ALLOW_NEGATIVE``, ``cache_mb`` / ``RWS_CACHE_MB``,
``max_body_bytes`` / ``RWS_MAX_BODY_BYTES``, ``max_pixels`` / ``RWS_MAX_PIXELS``,
``threads`` / ``RWS_THREADS`` (torch CPU threads), ``resident`` / ``RWS_RESIDENT`` (``float`` or
``codes``: keep int8/int4 signature codes resident, about a quarter of the delta memory),
``max_response_bytes`` / ``RWS_MAX_RESPONSE_BYTES`` (TorchServe's ``max_response_size``; ``rws
serve`` writes the value it configured, default TorchServe's 6553500).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any


def _archive_package_first() -> None:
    """In a TorchServe archive (this file at its root, next to the ``rws_hub`` copy that ``rws
    serve`` made of the package that built it), import ``rws_hub`` from the archive, whatever
    else the worker's path holds (an installed rws_hub of another version, ``PYTHONPATH``)."""
    here = str(Path(__file__).resolve().parent)
    if (Path(here) / "rws_hub" / "__init__.py").is_file() and "rws_hub" not in sys.modules:
        if here in sys.path:
            sys.path.remove(here)
        sys.path.insert(0, here)


_archive_package_first()

import torch  # noqa: E402
from ts.torch_handler.base_handler import BaseHandler  # noqa: E402

from rws_hub.errors import RequestError, bounded  # noqa: E402
from rws_hub.inference.engine import Engine  # noqa: E402
from rws_hub.inference.live import FolderWatcher  # noqa: E402
from rws_hub.inference.parsing import InferenceRequest, RequestLimits, RequestParser  # noqa: E402
from rws_hub.launch.locations import package_dir  # noqa: E402

logger = logging.getLogger(__name__)

_BODY_KEYS = ("body", "data")
_KSERVE_KEYS = ("name", "datatype", "data")
_PARAM_HEADERS = {"signatures": "X-RWS-Signatures", "top_k": "X-RWS-Top-K"}

TS_MAX_RESPONSE_SIZE = 6553500
"""TorchServe's default ``max_response_size`` (bytes): the frontend drops the worker, failing the
whole batch, when one answer of the worker is longer."""

_RESPONSE_MARGIN = 1024
"""Bytes kept free under the response limit (the frontend frames each field on its own)."""


def _setting(config: dict[str, Any], key: str, cast: Any, default: Any = None) -> Any:
    env = os.environ.get(f"RWS_{key.upper()}")
    value = env if env not in (None, "") else config.get(key, default)
    if value is None:
        return None
    if cast is bool and isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return cast(value)


def _header(context: Any, idx: int, name: str) -> str | None:
    """A request header, case-insensitively (TorchServe keeps the client's spelling)."""
    for key in (name, name.lower(), name.title()):
        value = context.get_request_header(idx, key)
        if isinstance(value, str):
            return value
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, KeyError):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name.lower() and isinstance(value, str):
            return value
    return None


def is_describe_call(context: Any, data: Any) -> bool:
    """Whether this call is the management API's describe (``GET /models/<name>?customized=true``).

    TorchServe's base handler only looks for the header ``describe: True`` on row 0, but client
    headers of an inference request reach the worker too. The frontend sends a describe call as
    a batch of exactly ONE row without any input (no body, no form field, no query parameter)
    and with ``describe: True``; every REST inference request carries the header ``explain``
    (the frontend adds it after the client's headers) and a ``body`` (or form fields). So: one
    row, empty, ``describe == "True"`` and no ``explain`` header."""
    if context is None or not isinstance(data, list) or len(data) != 1:
        return False
    row = data[0]
    if not (row is None or (isinstance(row, dict) and not row)):
        return False
    try:
        if context.get_request_header(0, "describe") != "True":
            return False
    except (AttributeError, IndexError, KeyError, TypeError):
        return False
    return _header(context, 0, "explain") is None


def _is_kserve(row: Any) -> bool:
    """Whether a batch row is a KServe v2 input (``service_envelope=kservev2``)."""
    return isinstance(row, dict) and all(k in row for k in _KSERVE_KEYS)


def _guard_kservev2() -> None:
    """Make TorchServe's KServe v2 envelope (``service_envelope=kservev2``) fail softly.

    The envelope parses the body *before* this handler sees it and raises on anything that is
    not a well-formed v2 request (not JSON, no ``inputs``, a missing ``datatype``) and on the
    body-less ``describe`` call behind ``GET /models/<name>?customized=true``: the frontend
    then answers 503 and logs a traceback. Wrapping its ``handle`` (the model loader looks it
    up after importing this module) lets ``describe`` through to the handler and turns a parse
    failure into a 400 with a JSON message naming the problem."""
    try:
        from ts.torch_handler.request_envelope import kservev2
    except ImportError:  # another TorchServe layout: nothing to guard
        return
    envelope = next(
        (c for c in vars(kservev2).values() if isinstance(c, type) and hasattr(c, "_from_json")),
        None,
    )
    if envelope is None or getattr(envelope, "_rws_guarded", False):
        return

    def handle(self: Any, data: Any, context: Any) -> Any:
        self.context = context
        if is_describe_call(context, data):
            return self._handle_fn(data, context)
        try:
            parsed = self.parse_input(data) if data else data
            if data and not isinstance(parsed, list):
                raise ValueError("'inputs' must be a list")
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's body
            message = f"not a KServe v2 inference request: {type(exc).__name__}: {exc}"
            for idx in range(max(1, len(data or []))):
                context.set_response_status(400, "Bad Request", idx)
            return [json.dumps({"error": message, "status": 400})] * max(1, len(data or []))
        results = self._handle_fn(parsed, context)
        return self.format_output(results) if results else results

    envelope.handle = handle
    envelope._rws_guarded = True


_guard_kservev2()


class RWSHandler(BaseHandler):
    """Serves a model folder: per-request signature mixes, batched through one Engine."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None
        self.parser: RequestParser | None = None
        self._kserve = False
        self._batch = 0
        self.max_response_bytes = TS_MAX_RESPONSE_SIZE

    # -- lifecycle ------------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        """Load the model folder into an Engine and build the request parser."""
        self.context = context
        self.manifest = context.manifest
        props = context.system_properties
        model_dir = Path(props.get("model_dir") or ".")
        yaml_cfg = getattr(context, "model_yaml_config", None) or {}
        cfg = dict(yaml_cfg.get("rws") or {})

        threads = _setting(cfg, "threads", int)
        if threads:
            torch.set_num_threads(threads)
        gpu = props.get("gpu_id")
        if torch.cuda.is_available() and gpu is not None:
            device = torch.device(f"cuda:{gpu}")
        else:
            device = torch.device("cpu")
        self.device = device
        dtype_name = _setting(cfg, "dtype", str, "float32")
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"rws dtype {dtype_name!r}: use float32, float16 or bfloat16")
        if device.type == "cpu" and dtype == torch.float16:
            dtype = torch.float32  # half precision is for GPUs

        folder = Path(_setting(cfg, "folder", str, "model-folder"))
        if not folder.is_absolute():
            folder = model_dir / folder
        cache_mb = _setting(cfg, "cache_mb", float, 256)
        self.engine = Engine.from_folder(
            folder,
            device=device,
            dtype=dtype,
            cache_bytes=int(cache_mb * (1 << 20)),
            max_alpha=_setting(cfg, "max_alpha", float),
            allow_negative=bool(_setting(cfg, "allow_negative", bool, False)),
            resident=_setting(cfg, "resident", str, "float"),
            name=str(self.manifest.get("model", {}).get("modelName") or folder.name),
        )
        limits = RequestLimits(
            max_body_bytes=_setting(cfg, "max_body_bytes", int, RequestLimits.max_body_bytes),
            max_pixels=_setting(cfg, "max_pixels", int, RequestLimits.max_pixels),
        )
        self.parser = RequestParser.for_engine(self.engine, limits=limits)
        self.max_response_bytes = int(
            _setting(cfg, "max_response_bytes", int, TS_MAX_RESPONSE_SIZE)
        )
        self.watcher: FolderWatcher | None = None
        if _setting(cfg, "live", bool, False):
            interval = _setting(cfg, "live_interval", float, 1.0)
            self.watcher = FolderWatcher(self.engine, folder, interval=interval)
            logger.info("rws: following %s for published signatures (every %ss)", folder, interval)
        for rel, reason in self.engine.refused.items():
            logger.warning("rws: refused %s: %s", rel, reason)
        logger.info(
            "rws: serving %s on %s (%s) with signatures %s (rws_hub from %s)",
            folder,
            device,
            dtype,
            ", ".join(self.engine.defaults) or "none",
            package_dir(),
        )
        self.initialized = True

    # -- requests -------------------------------------------------------------------------

    def describe_handle(self) -> str:
        """``GET /models/<name>?customized=true``: the engine and its signatures, as JSON."""
        assert self.engine is not None
        return json.dumps(self.engine.describe())

    def _parse_row(self, idx: int, row: Any) -> InferenceRequest:
        assert self.parser is not None
        if not isinstance(row, dict):
            raise RequestError("empty request", 400)
        if _is_kserve(row):
            return self._parse_kserve(row)
        body = next((row[k] for k in _BODY_KEYS if row.get(k) is not None), None)
        # Query parameters reach the handler only via /invocations?model_name=...&signatures=..
        # (TorchServe drops the query string of /predictions/<model>); headers work everywhere.
        query = {k: v for k, v in row.items() if k not in _BODY_KEYS and k != "model_name"}
        for key, header in _PARAM_HEADERS.items():
            value = _header(self.context, idx, header)
            if value is not None and key not in query:
                query[key] = value
        ctype = _header(self.context, idx, "Content-Type")
        return self.parser.parse(body, content_type=ctype, query=query)

    def _parse_kserve(self, row: dict[str, Any]) -> InferenceRequest:
        """One KServe v2 input (``service_envelope=kservev2``): ``data`` is a JSON request
        object (or its text), or a base64 image with ``parameters`` ``signatures``/``top_k``."""
        assert self.parser is not None
        data = row["data"]
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if isinstance(data, dict):
            return self.parser.parse(data)
        if isinstance(data, (bytes, bytearray)):
            data = bytes(data).decode("utf-8", errors="replace")
        if not isinstance(data, str):
            raise RequestError(
                f"KServe input {row.get('name')!r}: 'data' must hold a BYTES string", 400
            )
        if data.lstrip().startswith("{"):
            return self.parser.parse(data, content_type="application/json")
        params = row.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError("KServe input 'parameters' must be an object", 400)
        obj = {"image": data}
        for key in ("signatures", "top_k"):
            if key in params:
                obj[key] = params[key]
        return self.parser.parse(obj)

    def _is_describe(self) -> bool:
        """Never from a client header: see :func:`is_describe_call` (used by :meth:`handle`)."""
        return False

    def _follow_folder(self) -> None:
        """With ``live``: pick up signatures published into (or removed from) the folder since
        the last look; the parser then knows the new names. Never fails the batch."""
        watcher = getattr(self, "watcher", None)
        if watcher is None:
            return
        try:
            changes = watcher.poll()
        except Exception:  # a broken folder must not take the serving down
            logger.exception("rws: could not follow the model folder")
            return
        if changes:
            self.parser = dataclasses.replace(self.parser, known=self.engine.defaults)
            logger.info("rws: signatures changed: %s", changes)

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        """Answer one batch: per-row parse (errors per row), one engine call for the rest,
        errors of the engine per row too; exactly one answer per row, each within TorchServe's
        response limit."""
        start = time.perf_counter()
        self.context = context
        if is_describe_call(context, data):
            return [self.describe_handle()]
        assert self.engine is not None
        self._follow_folder()
        data = list(data or [])
        n = self._batch = len(data)
        answers: list[Any] = [None] * n
        valid: list[tuple[int, InferenceRequest]] = []
        # Under the KServe v2 envelope all rows are inputs of ONE request (status index 0).
        self._kserve = any(_is_kserve(r) for r in data)
        for idx, row in enumerate(data):
            try:
                valid.append((idx, self._parse_row(idx, row)))
            except RequestError as exc:
                answers[idx] = self._error(idx, exc.status, str(exc))
            except Exception:  # a parser bug answers this row only, not the whole batch
                logger.exception("rws: could not parse request %d", idx)
                answers[idx] = self._error(idx, 500, "the request could not be parsed")
        if valid:
            self._run(valid, answers, n)
        for idx in range(n):
            answers[idx] = self._within_limit(idx, answers[idx])
        for idx in range(1 if self._kserve else n):  # answers (and errors) are JSON
            context.set_response_content_type(idx, "application/json")
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time(
                "HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms"
            )
        assert len(answers) == n
        return answers

    def _run(self, valid: list[tuple[int, InferenceRequest]], answers: list[Any], n: int) -> None:
        """One ``engine.classify_rows`` call for the parsed rows; each row's error its own."""
        assert self.engine is not None
        try:
            images = torch.stack([r.image for _, r in valid])
            results = self.engine.classify_rows(
                images, [r.mix for _, r in valid], top_k=[r.top_k for _, r in valid]
            )
            if len(results) != len(valid):
                raise RuntimeError(f"{len(results)} answers for {len(valid)} rows")
        except RequestError as exc:  # not expected from classify_rows; still the rows' error
            for idx, _ in valid:
                answers[idx] = self._error(idx, exc.status, str(exc))
            return
        except Exception:  # answer the rows with 500, keep the worker alive
            logger.exception("rws: inference failed")
            for idx, _ in valid:
                answers[idx] = self._error(idx, 500, "inference failed (see the model log)")
            return
        for (idx, _), result in zip(valid, results, strict=True):
            if isinstance(result, RequestError):
                answers[idx] = self._error(idx, result.status, str(result))
            elif isinstance(result, dict):
                result["model"] = self.engine.name
                result["batch_size"] = n
                answers[idx] = result
            else:
                logger.error("rws: row %d: unexpected engine answer %r", idx, type(result))
                answers[idx] = self._error(idx, 500, "inference failed (see the model log)")

    def _within_limit(self, idx: int, answer: Any) -> Any:
        """``answer`` if TorchServe can send it (valid JSON, no NaN, under the response limit:
        the frontend measures the ``json.dumps(answer, indent=2)`` bytes the worker writes),
        else a 422 error for this row alone."""
        try:
            size = len(json.dumps(answer, indent=2, allow_nan=False).encode("utf-8"))
        except (TypeError, ValueError) as exc:
            logger.error("rws: row %d: answer is not valid JSON: %s", idx, exc)
            return self._error(idx, 422, "the answer holds a value that is not valid JSON")
        limit = self.max_response_bytes - _RESPONSE_MARGIN
        if size <= limit:
            return answer
        return self._error(
            idx,
            422,
            f"the answer would be {size} bytes, over the response limit of {limit} bytes",
        )

    def _error(self, idx: int, status: int, message: str) -> dict[str, Any]:
        # The reason phrase must be printable ASCII: TorchServe 0.12 frames it with its length
        # in characters, not bytes, so a non-ASCII phrase (an unknown name like "føg") corrupts
        # the worker protocol and the frontend drops the worker with the whole batch. The JSON
        # body keeps the (bounded) message.
        message = bounded(message)
        phrase = message[:1000].encode("ascii", "backslashreplace").decode("ascii")
        phrase = "".join(c if " " <= c <= "~" else "?" for c in phrase)[:500]
        self.context.set_response_status(status, phrase, 0 if self._kserve else idx)
        return {"error": message, "status": status, "batch_size": self._batch}
