"""``rws up``: the whole stack on one machine, TorchServe and the web demo as its REST client.

:func:`start_stack` starts TorchServe for a model folder with :func:`rws_hub.launch.torchserve.start`
(waits until the model is READY), then the Gradio demo (``python -m
rws_hub.integrations.gradio_app``, the app shipped in the package) as a separate process that
answers through the server's REST API (``--server``, with the token key file), waits until the
page answers, and records both in ``<run dir>/stack.json``. :func:`stop_stack` (``rws up
--stop``) ends exactly what that file names: the demo's process group, then the server.

This module imports no UI or serving framework: it drives processes (with
:mod:`rws_hub.launch.processes`) and speaks HTTP with the standard library.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rws_hub.launch import torchserve as serving
from rws_hub.launch.locations import DEMO_MODULE, checkout_root, default_folder
from rws_hub.launch.processes import (
    Managed,
    read_record,
    remove_record,
    spawn,
    tail,
    write_record,
)

__all__ = [
    "DEMO_MODULE",
    "Stack",
    "StackError",
    "StackOptions",
    "default_folder",
    "demo_command",
    "start_stack",
    "stop_stack",
]

STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """The stack could not be started or stopped (the message says which part and why)."""


@dataclass
class StackOptions:
    """What ``rws up`` starts.

    The server listens on ``port`` (inference), ``port + 1`` (management) and ``port + 2``
    (metrics); the demo on ``demo_port``; all on ``host``. ``serve`` holds further
    :class:`rws_hub.launch.torchserve.ServeOptions` fields (``batch_size``, ``workers``, ``settings``...).
    ``demo_app`` runs another Gradio app file with the same options instead of the packaged
    one (:data:`~rws_hub.launch.locations.DEMO_MODULE`).
    """

    folder: Path = field(default_factory=default_folder)
    run_dir: Path = Path("runs/up")
    host: str = "127.0.0.1"
    port: int = 8080
    demo_port: int = 7860
    auth: bool = True
    serve: dict[str, Any] = field(default_factory=dict)
    demo_app: Path | None = None

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.run_dir = Path(self.run_dir)
        self.demo_app = Path(self.demo_app) if self.demo_app is not None else None

    @property
    def demo_url(self) -> str:
        return f"http://{self.host}:{self.demo_port}/"

    def serve_options(self) -> serving.ServeOptions:
        """The server's options (its run directory is ``<run_dir>/serve``)."""
        return serving.ServeOptions(
            folder=self.folder,
            run_dir=self.run_dir / "serve",
            host=self.host,
            port=self.port,
            management_port=self.port + 1,
            metrics_port=self.port + 2,
            auth=self.auth,
            **self.serve,
        )


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Stack:
    """A running stack: the TorchServe :class:`~rws_hub.launch.torchserve.Server` and the demo."""

    opts: StackOptions
    server: serving.Server | None
    """None when attached to a stack whose server record is already gone."""
    demo_pid: int
    demo: subprocess.Popen[bytes] | None = None

    @property
    def run_dir(self) -> Path:
        return self.opts.run_dir.resolve()

    @property
    def demo_url(self) -> str:
        """The web page."""
        return self.opts.demo_url

    @property
    def inference_url(self) -> str:
        """``POST`` images here (``<inference>/predictions/<model>``)."""
        return self.server.inference_url if self.server else ""

    def _demo(self) -> Managed:
        return Managed(pid=self.demo_pid, process=self.demo)

    def demo_alive(self) -> bool:
        """Whether the demo process still runs."""
        return self._demo().alive()

    def server_alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def alive(self) -> bool:
        """Both parts are running."""
        return self.demo_alive() and self.server_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the demo (SIGTERM to its process group, SIGKILL after 10 s), then the server."""
        # the demo leads its own process group (spawn starts a new session)
        self._demo().stop(10.0, sig=signal.SIGTERM)
        if self.server is not None:
            self.server.stop(timeout)
        remove_record(self.run_dir / STATE_FILE)

    @classmethod
    def attach(cls, run_dir: str | Path) -> Stack | None:
        """The stack recorded in ``<run_dir>/stack.json``, if that file exists."""
        state = read_record(Path(run_dir) / STATE_FILE)
        if state is None:
            return None
        server = serving.Server.attach(state["serve_run_dir"])
        opts = StackOptions(
            run_dir=Path(run_dir),
            host=state["host"],
            port=int(state["port"]),
            demo_port=int(state["demo_port"]),
        )
        return cls(opts=opts, server=server, demo_pid=int(state["demo_pid"]))


def demo_command(opts: StackOptions, server: serving.Server) -> list[str]:
    """The command line of the demo as a REST client of ``server``: the packaged app
    (``python -m rws_hub.integrations.gradio_app``) or ``opts.demo_app``."""
    app = [str(opts.demo_app)] if opts.demo_app is not None else ["-m", DEMO_MODULE]
    cmd = [
        sys.executable,
        *app,
        "--server", server.inference_url,
        "--management-url", server.opts.management_url,
        "--model", str(opts.folder.resolve()),
        "--host", opts.host,
        "--port", str(opts.demo_port),
    ]  # fmt: skip
    if opts.auth:
        cmd += ["--token-file", str(server.key_file)]
    return cmd


def start_stack(opts: StackOptions, *, timeout: float = 180.0) -> Stack:
    """Start TorchServe (wait READY), then the demo as its client (wait until the page answers).

    Raises :class:`StackError` (a stack from this run directory is still running, the demo app
    is missing or does not come up; whatever was started is stopped again) or
    :class:`rws_hub.launch.torchserve.ServeError` (the server did not start).
    """
    run_dir = opts.run_dir.resolve()
    existing = Stack.attach(run_dir)
    if existing is not None and (existing.demo_alive() or existing.server_alive()):
        raise StackError(
            f"a stack is already running from {run_dir} (demo pid {existing.demo_pid}); "
            "stop it first: rws up --stop"
        )
    if opts.demo_app is not None and not opts.demo_app.is_file():
        raise StackError(f"the demo app {opts.demo_app} is missing")
    if not opts.folder.is_dir():
        raise StackError(f"model folder {opts.folder} not found")
    run_dir.mkdir(parents=True, exist_ok=True)

    server = serving.start(opts.serve_options(), timeout=timeout)
    env = dict(os.environ)
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(run_dir / "gradio"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
    )
    root = checkout_root()
    if root is not None:  # the demo runs this checkout's rws_hub, installed or not
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    log = run_dir / "demo.out"
    try:
        # its own session: Ctrl-C reaches `rws up`, which stops both in order
        launched = spawn(demo_command(opts, server), cwd=run_dir, env=env, log=log)
    except BaseException:
        server.stop()
        raise
    demo = launched.process
    assert demo is not None
    stack = Stack(opts=opts, server=server, demo_pid=demo.pid, demo=demo)
    state = {
        "demo_pid": demo.pid,
        "demo_url": opts.demo_url,
        "inference_url": server.inference_url,
        "serve_run_dir": str(server.run_dir),
        "host": opts.host,
        "port": opts.port,
        "demo_port": opts.demo_port,
    }
    write_record(run_dir / STATE_FILE, state)
    try:
        deadline = time.monotonic() + timeout
        while not _http_ok(opts.demo_url):
            if demo.poll() is not None:
                raise StackError(f"the demo exited (code {demo.returncode}):\n{tail(log)}")
            if time.monotonic() > deadline:
                raise StackError(f"the demo did not answer in {timeout:.0f} s:\n{tail(log)}")
            time.sleep(0.25)
    except BaseException:
        stack.stop()
        raise
    return stack


def stop_stack(run_dir: str | Path, timeout: float = 30.0) -> bool:
    """Stop the stack recorded in ``run_dir``; False when none was recorded or running."""
    stack = Stack.attach(run_dir)
    if stack is None:
        return False
    was_alive = stack.demo_alive() or stack.server_alive()
    stack.stop(timeout)
    return was_alive
