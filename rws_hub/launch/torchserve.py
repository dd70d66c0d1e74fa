"""``rws serve``: run TorchServe for a model folder with one call.

This module never imports TorchServe: it drives the ``torch-model-archiver`` and ``torchserve``
programs as subprocesses and talks HTTP to the server with the standard library.

:func:`start` does, inside a *run directory* (everything the server writes stays there):

1. builds a directory archive (``--archive-format no-archive``) of the handler shipped in the
   package (``rws_hub/integrations/torchserve_handler.py``), the running ``rws_hub`` package
   (the installed one, or the checkout's) and the model folder (copied in as
   ``model-folder/``), so the archive is self-contained (also for KServe, see docs/deploy.md).
   TorchServe puts the archive's directory first on the worker's ``PYTHONPATH``, so the worker
   runs exactly the copied package: the code of the ``rws`` that built the archive;
2. writes ``config.properties`` (loopback addresses, also for TorchServe's gRPC ports
   ``grpc_port`` and ``grpc_port + 1``, the model with its batching and workers,
   body size limit, token auth) and a quiet ``log4j2.xml`` (no access or metrics logs);
3. starts ``torchserve --foreground`` in its own process group with ``TEMP``, ``TMPDIR``,
   ``LOG_LOCATION`` and ``METRICS_LOCATION`` pointing into the run directory, and records the
   process ids in ``server.json``;
4. starts the gateway (``rws_hub/launch/gateway.py``, its own process group) on the public
   inference port, TorchServe's inference API being on a private loopback port (unless
   ``gateway=False``), and records its pid too;
5. waits until ``/ping`` answers through the gateway and the model's worker is READY.

:func:`stop` (``rws serve --stop``) ends exactly the processes recorded in ``server.json``
(the gateway first, then TorchServe).
Token authorization is ON unless ``auth=False``: the keys are in ``<run dir>/key_file.json``;
send ``Authorization: Bearer <inference key>``.

Key expiry: TorchServe's inference and management keys expire ``token_expiration_min`` minutes
after they were issued (60 by default, after which every call, ``/ping`` included, fails).
``rws serve`` sets it deliberately: :attr:`ServeOptions.key_expiry_min`, by default
:data:`DEFAULT_KEY_EXPIRY_MIN` (100 years: keys live as long as the server; each start makes new
ones, as does :meth:`Server.renew_keys`). With a shorter expiry, :class:`KeyKeeper` (run by ``rws
serve --foreground``) renews each key before it expires through TorchServe's token API (``POST
<management>/token?type=...`` with the never-expiring API key), which rewrites
``key_file.json``; :meth:`Server.fresh_headers` (used by :mod:`rws_hub.launch.client`) renews
an expired key on demand.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rws_hub.launch.locations import (
    DEFAULT_FOLDER,
    default_folder,
    handler_file,
    package_dir,
    resolve_folder,
)
from rws_hub.launch.processes import (
    Managed,
    read_record,
    remove_record,
    spawn,
    tail,
    write_record,
)

__all__ = [
    "DEFAULT_FOLDER",
    "DEFAULT_KEY_EXPIRY_MIN",
    "KeyKeeper",
    "default_folder",
    "resolve_folder",
    "Server",
    "ServeOptions",
    "ServeError",
    "build_archive",
    "find_handler",
    "free_port_pair",
    "free_ports",
    "free_server_ports",
    "read_key_expiry",
    "read_keys",
    "response_limit",
    "start",
    "start_on_free_ports",
    "stop",
    "write_configs",
]


STATE_FILE = "server.json"
KEY_FILE = "key_file.json"

DEFAULT_KEY_EXPIRY_MIN = 100 * 365 * 24 * 60
"""``token_expiration_min`` that ``rws serve`` writes unless told otherwise: 100 years, i.e. the
keys live as long as the server (TorchServe's own default, 60 minutes, would stop a long-running
server answering after an hour). TorchServe's API key, which can issue new keys, never expires
anyway; every start makes new keys."""

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<!-- rws serve: TorchServe's own log and the model (worker) log only, each capped at 10 MB;
     no access log, no metrics logs. -->
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %c - %m%n"/>
    </Console>
    <RollingFile name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log"
                 filePattern="${env:LOG_LOCATION:-logs}/ts_log.%i.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="10 MB"/></Policies>
      <DefaultRolloverStrategy max="1"/>
    </RollingFile>
    <RollingFile name="model_log" fileName="${env:LOG_LOCATION:-logs}/model_log.log"
                 filePattern="${env:LOG_LOCATION:-logs}/model_log.%i.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="10 MB"/></Policies>
      <DefaultRolloverStrategy max="1"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="info" additivity="false">
      <AppenderRef ref="model_log"/>
    </Logger>
    <Logger name="org.pytorch.serve" level="info" additivity="false">
      <AppenderRef ref="ts_log"/>
    </Logger>
    <Root level="warn">
      <AppenderRef ref="STDOUT"/>
      <AppenderRef ref="ts_log"/>
    </Root>
  </Loggers>
</Configuration>
"""


class ServeError(RuntimeError):
    """The server could not be prepared, started, reached or stopped."""


@dataclass
class ServeOptions:
    """Everything ``rws serve`` needs.

    ``settings`` go to the handler (the ``rws:`` section of ``model-config.yaml``): e.g.
    ``{"max_alpha": 4.0, "dtype": "bfloat16", "cache_mb": 64, "threads": 1}``.
    ``envelope="kservev2"`` switches the wire format to KServe v2 (TorchServe's envelope
    handles one request per call, so the batch size is forced to 1 there).
    With ``gateway`` on (the default), clients talk to :mod:`rws_hub.launch.gateway` on
    ``host:port`` and TorchServe's inference API listens on ``127.0.0.1:backend_port`` (a free
    port chosen at start): the gateway answers form bodies, which TorchServe's frontend would
    turn into a 500, with a 415. ``gateway=False`` binds TorchServe to ``host:port`` itself.
    """

    folder: Path = DEFAULT_FOLDER
    run_dir: Path = Path("runs/serve")
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_port: int = 7070
    batch_size: int = 8
    max_batch_delay: int = 5
    workers: int = 1
    auth: bool = True
    envelope: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    response_timeout: int = 120
    key_expiry_min: float = DEFAULT_KEY_EXPIRY_MIN
    gateway: bool = True
    backend_port: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    handler: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.run_dir = Path(self.run_dir)
        if self.model_name is None:
            self.model_name = re.sub(r"[^A-Za-z0-9_-]+", "-", self.folder.resolve().name) or "rws"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", self.model_name):
            raise ServeError(f"model name {self.model_name!r}: use letters, digits, '-' and '_'")
        if self.envelope not in (None, "kservev2"):
            raise ServeError(f"envelope {self.envelope!r}: only 'kservev2' is supported")
        for name in ("batch_size", "workers"):
            if int(getattr(self, name)) < 1:
                raise ServeError(f"{name} must be at least 1")
        expiry = float(self.key_expiry_min)
        if not math.isfinite(expiry) or not 0 < expiry <= DEFAULT_KEY_EXPIRY_MIN:
            raise ServeError(
                f"key_expiry_min {self.key_expiry_min!r}: use minutes in (0, "
                f"{DEFAULT_KEY_EXPIRY_MIN}]"
            )
        self.key_expiry_min = expiry

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def backend_url(self) -> str:
        """Where TorchServe's inference API listens: a private loopback port behind the
        gateway (:meth:`choose_backend_port` picks it), else :attr:`inference_url`."""
        if not self.gateway:
            return self.inference_url
        if self.backend_port is None:
            raise ServeError("no backend port chosen yet (ServeOptions.choose_backend_port)")
        return f"http://127.0.0.1:{self.backend_port}"

    def choose_backend_port(self) -> None:
        """With the gateway on, pick a free loopback port for TorchServe's inference API
        (unless one is set)."""
        if self.gateway and self.backend_port is None:
            taken = (self.port, self.management_port, self.metrics_port)
            taken += (self.grpc_port, self.grpc_port + 1)
            self.backend_port = free_ports(1, avoid=taken)[0]

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"


# --------------------------------------------------------------------------------------------
# preparing the run directory


def _program(name: str) -> str:
    """A console script of this environment (next to the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ServeError(f"{name} not found; install the serve extra: pip install 'rws-hub[serve]'")
    return found


def find_handler() -> Path:
    """The TorchServe handler shipped in the running package
    (``rws_hub/integrations/torchserve_handler.py``, found by path: nothing here imports it)."""
    path = handler_file()
    if not path.is_file():
        raise ServeError(f"handler not found at {path}; reinstall rws-hub")
    return path


def response_limit(opts: ServeOptions) -> int:
    """TorchServe's ``max_request_size`` and ``max_response_size`` for ``opts`` (bytes): the
    handler's body limit plus the JSON-level overhead on top of the image (base64's 4/3 plus the
    other fields). The handler gets the same number (``max_response_bytes``) and answers a row
    whose answer would be longer with its own 422 instead of letting the frontend drop the
    worker."""
    return opts.max_body_bytes * 4 // 3 + 64 * 1024


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value)  # JSON scalars are valid YAML


def _worker_settings(opts: ServeOptions) -> dict[str, int]:
    """The model's workers, batching and timeout, as TorchServe names them (the KServe v2
    envelope handles one request per call, so its batch size is 1)."""
    return {
        "minWorkers": opts.workers,
        "maxWorkers": opts.workers,
        "batchSize": 1 if opts.envelope == "kservev2" else opts.batch_size,
        "maxBatchDelay": opts.max_batch_delay,
        "responseTimeout": opts.response_timeout,
    }


def build_archive(opts: ServeOptions, archive_format: str = "no-archive") -> Path:
    """Build the archive into ``<run dir>/model-store/``: a directory ``<name>/``
    (``no-archive``, what :func:`start` serves) or ``<name>.mar`` (``archive_format="default"``,
    the file KServe's TorchServe runtime loads). Returns its path."""
    if archive_format not in ("no-archive", "default"):
        raise ServeError(f"archive format {archive_format!r}: use 'no-archive' or 'default'")
    folder = opts.folder.resolve()
    if not (folder / "config.json").is_file():
        raise ServeError(f"{opts.folder}: not a model folder (no config.json)")
    run_dir = opts.run_dir.resolve()
    store = run_dir / "model-store"
    stage = run_dir / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(store / str(opts.model_name), ignore_errors=True)
    (store / f"{opts.model_name}.mar").unlink(missing_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    stage.mkdir(parents=True)
    # the running package (site-packages or checkout): the worker imports this copy first
    shutil.copytree(
        package_dir(), stage / "rws_hub", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    shutil.copytree(folder, stage / "model-folder", ignore=shutil.ignore_patterns(".cache"))

    settings = {
        "folder": "model-folder",
        "max_body_bytes": opts.max_body_bytes,
        "max_response_bytes": response_limit(opts),
    }
    settings.update(opts.settings)
    lines = [
        *(f"{k}: {v}" for k, v in _worker_settings(opts).items()),
        "rws:",
        *(f"  {k}: {_yaml_scalar(v)}" for k, v in settings.items()),
    ]
    model_config = run_dir / "model-config.yaml"
    model_config.write_text("\n".join(lines) + "\n")

    handler = (opts.handler or find_handler()).resolve()
    cmd = [
        _program("torch-model-archiver"),
        "--model-name", str(opts.model_name),
        "--version", "1.0",
        "--handler", str(handler),
        "--extra-files", str(stage),
        "--config-file", str(model_config),
        "--export-path", str(store),
        "--archive-format", archive_format,
        "--force",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=run_dir)
    shutil.rmtree(stage, ignore_errors=True)
    if done.returncode != 0:
        raise ServeError(f"torch-model-archiver failed: {done.stderr.strip() or done.stdout}")
    suffix = ".mar" if archive_format == "default" else ""
    return store / f"{opts.model_name}{suffix}"


def write_configs(opts: ServeOptions) -> tuple[Path, Path]:
    """Write ``config.properties`` and ``log4j2.xml`` into the run directory."""
    run_dir = opts.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    model = {
        opts.model_name: {
            "1.0": {"defaultVersion": True, "marName": opts.model_name, **_worker_settings(opts)}
        }
    }
    request_limit = response_limit(opts)
    opts.choose_backend_port()
    props = {
        "inference_address": opts.backend_url,
        "management_address": opts.management_url,
        "metrics_address": opts.metrics_url,
        # TorchServe always starts its gRPC servers: keep them on loopback, on known ports
        "grpc_inference_address": opts.host,
        "grpc_inference_port": opts.grpc_port,
        "grpc_management_address": opts.host,
        "grpc_management_port": opts.grpc_port + 1,
        "disable_system_metrics": "true",
        "model_store": str(run_dir / "model-store"),
        "load_models": opts.model_name,
        "models": json.dumps(model),
        "default_workers_per_model": opts.workers,
        "max_request_size": request_limit,
        "max_response_size": request_limit,
        "disable_token_authorization": str(not opts.auth).lower(),
        # keys expire after this many minutes (TorchServe's default is 60): set on purpose
        "token_expiration_min": _minutes(opts.key_expiry_min),
        "enable_model_api": "false",
        "decode_input_request": "false",  # the handler parses JSON itself (limits, duplicates)
        "install_py_dep_per_model": "false",
        "async_logging": "true",
        "default_response_timeout": opts.response_timeout,
        "vmargs": "-Xmx1g -XX:+ExitOnOutOfMemoryError",
    }
    if opts.envelope:
        props["service_envelope"] = opts.envelope
    cfg = run_dir / "config.properties"
    cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    log4j = run_dir / "log4j2.xml"
    log4j.write_text(_LOG4J2)
    return cfg, log4j


# --------------------------------------------------------------------------------------------
# the server


def _minutes(value: float) -> str:
    """A number of minutes as config.properties text (``60``, ``0.25``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _read_key_file(run_dir: str | Path) -> dict[str, Any]:
    """``key_file.json`` as a dict (empty when missing). TorchServe rewrites the file when a key
    is renewed: a half-written file is read again a few times."""
    path = Path(run_dir) / KEY_FILE
    for attempt in range(5):
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            if attempt == 4:
                return {}
            time.sleep(0.05)
            continue
        return raw if isinstance(raw, dict) else {}
    return {}


def read_keys(run_dir: str | Path) -> dict[str, str]:
    """The token keys TorchServe wrote: ``{"inference": ..., "management": ..., "API": ...}``
    (empty when token auth is off or the server has not started yet)."""
    raw = _read_key_file(run_dir)
    return {k: v["key"] for k, v in raw.items() if isinstance(v, dict) and "key" in v}


def read_key_expiry(run_dir: str | Path) -> dict[str, datetime]:
    """When each key of ``key_file.json`` expires (UTC; the API key never does, so it is not
    listed)."""
    out: dict[str, datetime] = {}
    for name, entry in _read_key_file(run_dir).items():
        text = entry.get("expiration time") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            continue
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            continue
        out[name] = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return out


def _http(url: str, key: str | None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@dataclass
class Server:
    """A running TorchServe started by :func:`start` (or found by :meth:`attach`)."""

    opts: ServeOptions
    launcher_pid: int
    process: subprocess.Popen[bytes] | None = None
    gateway_pid: int | None = None
    gateway_process: subprocess.Popen[bytes] | None = None

    @property
    def run_dir(self) -> Path:
        return self.opts.run_dir.resolve()

    @property
    def inference_url(self) -> str:
        """``POST`` images here: ``<inference>/predictions/<model name>``."""
        return f"{self.opts.inference_url}/predictions/{self.opts.model_name}"

    @property
    def key_file(self) -> Path:
        return self.run_dir / KEY_FILE

    def keys(self) -> dict[str, str]:
        """Token keys (see :func:`read_keys`)."""
        return read_keys(self.run_dir)

    def _key(self, api: str) -> str | None:
        """The token key for ``api`` (None without token auth or before the server wrote it)."""
        return self.keys().get(api) if self.opts.auth else None

    def headers(self, api: str = "inference") -> dict[str, str]:
        """``{"Authorization": "Bearer <key>"}`` for ``api`` (empty without token auth)."""
        key = self._key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def key_expiry(self) -> dict[str, datetime]:
        """When the inference and management keys expire (see :func:`read_key_expiry`)."""
        return read_key_expiry(self.run_dir) if self.opts.auth else {}

    def renew_keys(self, apis: tuple[str, ...] = ("inference", "management")) -> dict[str, str]:
        """Have TorchServe issue new keys for ``apis`` now (``POST <management>/token?type=``
        with the API key, which never expires); TorchServe rewrites ``key_file.json``, and the
        old key of each renewed API stops working. Returns the new keys."""
        if not self.opts.auth:
            return {}
        api_key = self.keys().get("API")
        if not api_key:
            raise ServeError(f"no API key in {self.key_file}: cannot renew keys")
        for api in apis:
            if api not in ("inference", "management"):
                raise ServeError(f"key type {api!r}: use 'inference' or 'management'")
            req = urllib.request.Request(
                f"{self.opts.management_url}/token?type={api}",
                method="POST",
                headers={"Authorization": f"Bearer {api_key}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
            except (OSError, urllib.error.HTTPError) as exc:
                raise ServeError(f"renewing the {api} key failed: {exc}") from exc
        keys = self.keys()
        return {api: keys[api] for api in apis if api in keys}

    def renew_due_keys(self, margin_s: float) -> list[str]:
        """Renew each key that expires within ``margin_s`` seconds (or has expired); returns
        the APIs renewed."""
        if not self.opts.auth:
            return []
        now = datetime.now(timezone.utc)
        due = tuple(
            api
            for api, when in self.key_expiry().items()
            if api in ("inference", "management") and (when - now).total_seconds() <= margin_s
        )
        if due:
            self.renew_keys(due)
        return list(due)

    def fresh_headers(self, api: str = "inference") -> dict[str, str]:
        """:meth:`headers` with a key that has not expired: an expired key (per
        ``key_file.json``) is renewed first. Clients call this after a token failure."""
        key = self._fresh_key(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _fresh_key(self, api: str) -> str | None:
        """The key for ``api``, renewed first when ``key_file.json`` says it has expired (e.g.
        a short ``key_expiry_min`` on a slow start)."""
        if not self.opts.auth:
            return None
        when = self.key_expiry().get(api)
        if when is not None and when <= datetime.now(timezone.utc):
            with contextlib.suppress(ServeError):  # not reachable yet (starting): retried
                self.renew_keys((api,))
        return self._key(api)

    def java_pid(self) -> int | None:
        """The TorchServe frontend's pid (from its pid file in the run directory)."""
        try:
            return int((self.run_dir / "tmp" / ".model_server.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        """Whether the server answers: the launcher (the leader of TorchServe's process group)
        and the gateway (when there is one) both run."""
        gateway = self._gateway()
        return self._managed().alive() and (gateway is None or gateway.alive())

    def any_alive(self) -> bool:
        """Whether any recorded process still runs (a half-dead server still holds ports)."""
        gateway = self._gateway()
        return self._managed().alive() or (gateway is not None and gateway.alive())

    def why_down(self) -> str:
        """What stopped, for messages (empty while :meth:`alive`)."""
        if not self._managed().alive():
            return f"torchserve exited; see {self.run_dir / 'logs'}"
        if not self.alive():
            return f"the gateway exited; see {self.run_dir / 'gateway.out'}"
        return ""

    def _managed(self) -> Managed:
        return Managed(pid=self.launcher_pid, process=self.process)

    def _gateway(self) -> Managed | None:
        if self.gateway_pid is None:
            return None
        return Managed(pid=self.gateway_pid, process=self.gateway_process)

    def status(self) -> str | None:
        """The model's worker status (``READY``, ...) from the management API, or None."""
        key = self._fresh_key("management")
        try:
            code, text = _http(f"{self.opts.management_url}/models/{self.opts.model_name}", key)
        except OSError:
            return None
        if code != 200:
            return None
        try:
            workers = json.loads(text)[0].get("workers", [])
        except (ValueError, IndexError, AttributeError):
            return None
        states = {w.get("status") for w in workers}
        return "READY" if states == {"READY"} else (",".join(sorted(map(str, states))) or None)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until ``/ping`` is healthy and every worker is READY."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServeError(f"{self.why_down()}\n{self.tail()}")
            key = self._fresh_key("inference")
            if not self.opts.auth or key:
                try:
                    code, _ = _http(f"{self.opts.inference_url}/ping", key, timeout=2)
                except OSError:
                    code = 0
                if code == 200 and self.status() == "READY":
                    return
            time.sleep(0.25)
        raise ServeError(f"TorchServe not READY after {timeout:.0f} s\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        """The last lines of the server's console and model logs (for error messages)."""
        out = []
        for name in ("gateway.out", "torchserve.out", "logs/ts_log.log", "logs/model_log.log"):
            path = self.run_dir / name
            if path.is_file():
                out.append(f"--- {name}\n" + tail(path, lines))
        return "\n".join(out)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server: SIGTERM to the frontend (it stops its workers; to the whole group
        when its pid file is gone), then SIGKILL to whatever is left in the process group we
        created (launcher, frontend, workers). The gateway goes first (SIGTERM to its own
        group), so no request arrives while TorchServe shuts down."""
        gateway = self._gateway()
        if gateway is not None:
            gateway.stop(min(timeout, 10.0))
        self._managed().stop(timeout, term_pid=self.java_pid())
        remove_record(self.run_dir / STATE_FILE)
        (self.run_dir / "tmp" / ".model_server.pid").unlink(missing_ok=True)

    @classmethod
    def attach(cls, run_dir: str | Path) -> Server | None:
        """The server recorded in ``<run_dir>/server.json``, if that file exists."""
        state = read_record(Path(run_dir) / STATE_FILE)
        if state is None:
            return None
        options = dict(state["options"])
        options.setdefault("gateway", False)  # a record written before the gateway existed
        opts = ServeOptions(**options)
        gateway = state.get("gateway_pid")
        return cls(
            opts=opts,
            launcher_pid=int(state["launcher_pid"]),
            gateway_pid=int(gateway) if gateway is not None else None,
        )


class KeyKeeper:
    """Renews the server's inference and management keys before they expire (a daemon thread;
    ``rws serve --foreground`` runs one). Each key is renewed ``margin_s`` seconds before its
    expiry time (default: a quarter of :attr:`ServeOptions.key_expiry_min`, at most 5 minutes),
    so ``key_file.json`` always holds keys that work; a client that read an old key gets a token
    error and reads the file again. Use as a context manager or call :meth:`start` /
    :meth:`stop`."""

    def __init__(
        self, server: Server, margin_s: float | None = None, poll_s: float | None = None
    ) -> None:
        life = float(server.opts.key_expiry_min) * 60.0
        self.server = server
        self.margin_s = margin_s if margin_s is not None else max(1.0, min(300.0, life / 4))
        self.poll_s = poll_s if poll_s is not None else max(0.2, min(30.0, self.margin_s / 4))
        self.renewals = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[str]:
        """Renew what is due now; returns the APIs renewed (errors are kept in ``errors``)."""
        try:
            done = self.server.renew_due_keys(self.margin_s)
        except ServeError as exc:
            self.errors.append(str(exc))
            return []
        self.renewals += len(done)
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.server.alive():
                self.check()

    def start(self) -> KeyKeeper:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rws-key-keeper", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> KeyKeeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(opts: ServeOptions, *, timeout: float = 120.0, wait: bool = True) -> Server:
    """Build the archive, write the configs, start TorchServe and wait until READY.

    Raises :class:`ServeError` when a server recorded in the run directory is still running,
    a tool is missing, or the server does not become READY in ``timeout`` seconds (the server
    is stopped again then).
    """
    run_dir = opts.run_dir.resolve()
    existing = Server.attach(run_dir)
    if existing is not None and existing.any_alive():
        raise ServeError(
            f"a server (or part of one) is still running from {run_dir} (pids "
            f"{existing.launcher_pid}, gateway {existing.gateway_pid}); stop it first: "
            "rws serve --stop"
        )
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ServeError(
            "java not found: TorchServe needs Java 17 (apt-get install openjdk-17-jre)"
        )
    for sub in ("tmp", "logs"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    build_archive(opts)
    cfg, log4j = write_configs(opts)

    env = dict(os.environ)
    env.update(
        TEMP=str(run_dir / "tmp"),
        TMPDIR=str(run_dir / "tmp"),
        LOG_LOCATION=str(run_dir / "logs"),
        METRICS_LOCATION=str(run_dir / "logs"),
    )
    env.update(opts.env)
    cmd = [
        _program("torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store", str(run_dir / "model-store"),
        "--ts-config", str(cfg),
        "--log-config", str(log4j),
    ]  # fmt: skip
    if not opts.auth:
        cmd.append("--disable-token-auth")
    launched = spawn(cmd, cwd=run_dir, env=env, log=run_dir / "torchserve.out")
    server = Server(opts=opts, launcher_pid=launched.pid, process=launched.process)
    if opts.gateway:
        try:
            gateway = _spawn_gateway(opts, run_dir, env)
        except BaseException:
            server.stop()
            raise
        server.gateway_pid, server.gateway_process = gateway.pid, gateway.process
    state = {
        "launcher_pid": launched.pid,
        "gateway_pid": server.gateway_pid,
        "options": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in opts.__dict__.items()
            if k not in ("handler", "env")
        },
    }
    write_record(run_dir / STATE_FILE, state)
    if wait:
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
    return server


def _spawn_gateway(opts: ServeOptions, run_dir: Path, env: dict[str, str]) -> Managed:
    """Start the gateway (``rws_hub/launch/gateway.py``, run as a script: it imports no
    ``rws_hub`` and no torch) on ``host:port``, forwarding to TorchServe's private port."""
    cmd = [
        sys.executable, str(package_dir() / "launch" / "gateway.py"),
        "--host", opts.host,
        "--port", str(opts.port),
        "--upstream", opts.backend_url,
        "--max-body-bytes", str(response_limit(opts)),
        "--timeout", str(opts.response_timeout + 10),
    ]  # fmt: skip
    return spawn(cmd, cwd=run_dir, env=env, log=run_dir / "gateway.out")


def stop(run_dir: str | Path, timeout: float = 30.0) -> bool:
    """Stop the server recorded in ``run_dir``; False when none was recorded or running."""
    server = Server.attach(run_dir)
    if server is None:
        return False
    was_alive = server.any_alive()
    server.stop(timeout)
    return was_alive


def free_ports(n: int, host: str = "127.0.0.1", avoid: Sequence[int] = ()) -> list[int]:
    """``n`` distinct TCP ports that are free on ``host`` right now, none of them in ``avoid``
    (ports another server of the same run is configured on but has not bound yet)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            socks.append(s)  # a port in avoid stays bound until the end, so it is not drawn again
            s.bind((host, 0))
        ports = [s.getsockname()[1] for s in socks if s.getsockname()[1] not in avoid]
        if len(ports) < n:
            return ports + free_ports(n - len(ports), host, (*avoid, *ports))
        return ports
    finally:
        for s in socks:
            s.close()


def free_port_pair(host: str = "127.0.0.1", avoid: Sequence[int] = (), tries: int = 64) -> int:
    """A port ``p`` with ``p`` and ``p + 1`` both free on ``host`` right now and neither in
    ``avoid`` (TorchServe binds its gRPC management API on the gRPC port + 1, so a free ``p``
    alone may leave ``p + 1`` taken and the server dying with "Address already in use")."""
    for _ in range(tries):
        (p,) = free_ports(1, host, avoid)
        if p + 1 > 65535 or p + 1 in avoid:
            continue
        with socket.socket() as b:
            try:
                b.bind((host, p + 1))
            except OSError:
                continue
            return p
    raise OSError(f"no two consecutive free ports on {host} after {tries} tries")


def free_server_ports(host: str = "127.0.0.1") -> tuple[int, int, int, int]:
    """Inference, management, metrics and gRPC ports for one TorchServe, free right now; the
    gRPC port's neighbour (gRPC management) is free too."""
    port, mport, xport = free_ports(3, host)
    return port, mport, xport, free_port_pair(host, avoid=(port, mport, xport))


def start_on_free_ports(
    folder: str | Path,
    run_dir: str | Path,
    name: str = "rws",
    *,
    timeout: float = 180.0,
    **options: Any,
) -> Server:
    """Start TorchServe for ``folder`` on free loopback ports (inference, management, metrics
    and the two gRPC ports) and wait until READY; ``options`` are further
    :class:`ServeOptions` fields (``batch_size``, ``settings``, ...). Benchmarks and tests use
    this to run next to other servers."""
    port, mport, xport, gport = free_server_ports()
    opts = ServeOptions(
        folder=Path(folder),
        run_dir=Path(run_dir),
        model_name=name,
        port=port,
        management_port=mport,
        metrics_port=xport,
        grpc_port=gport,
        **options,
    )
    return start(opts, timeout=timeout)
