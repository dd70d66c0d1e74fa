"""Helpers for tests that start a real TorchServe with rws_hub.launch.torchserve.

Thin test defaults over the package (the same code the soak benchmark uses): the toy model
folder (:mod:`rws_hub.zoo.toy`), free loopback ports and a started server
(:func:`rws_hub.launch.torchserve.start_on_free_ports`), the REST client bits
(:mod:`rws_hub.launch.client`) and the in-process reference and its comparison
(:mod:`rws_hub.launch.soak`)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rws_hub.launch import torchserve as serving
from rws_hub.launch.client import b64, describe, session, worker_pids, workers
from rws_hub.launch.processes import pid_alive
from rws_hub.launch.soak import expected, png, same_answer
from rws_hub.launch.torchserve import free_ports, free_server_ports
from rws_hub.zoo.toy import TOY_SIGNATURES as NAMES
from rws_hub.zoo.toy import add_toy_detector as add_test_detector
from rws_hub.zoo.toy import make_toy_folder as make_serving_folder

__all__ = [
    "HAVE_TORCHSERVE",
    "needs_server",
    "running_server",
    "NAMES",
    "add_test_detector",
    "assert_same",
    "b64",
    "describe",
    "expected",
    "free_ports",
    "free_server_ports",
    "make_serving_folder",
    "png",
    "same_answer",
    "sigint_default",
    "session",
    "start_server",
    "stop_server",
    "worker_pids",
    "workers",
]

HAVE_TORCHSERVE = (
    shutil.which("java") is not None and (Path(sys.executable).parent / "torchserve").exists()
)
"""Java 17 and the torchserve program are available (server tests skip otherwise)."""

needs_server = pytest.mark.skipif(not HAVE_TORCHSERVE, reason="needs Java 17 and torchserve")
"""Mark for tests that need a real TorchServe."""


@contextlib.contextmanager
def running_server(folder: Path, run_dir: Path, **options: Any) -> Iterator[serving.Server]:
    """:func:`start_server` for a ``with`` block (a module fixture's body): skips without
    TorchServe, and stops the server also when the block fails."""
    if not HAVE_TORCHSERVE:
        pytest.skip("needs Java 17 and torchserve")
    srv = start_server(folder, run_dir, **options)
    try:
        yield srv
    finally:
        stop_server(srv)


def start_server(folder: Path, run_dir: Path, name: str = "tiny", **options: Any) -> serving.Server:
    """Start TorchServe for ``folder`` on free loopback ports (waits until READY).

    ``options`` go to :class:`~rws_hub.launch.torchserve.ServeOptions` (defaults: batch 8,
    100 ms batch delay, ``max_alpha`` 3 and one torch thread)."""
    options.setdefault("batch_size", 8)
    options.setdefault("max_batch_delay", 100)
    options.setdefault("settings", {"max_alpha": 3.0, "threads": 1})
    return serving.start_on_free_ports(folder, run_dir, name, timeout=180, **options)


def stop_server(srv: serving.Server) -> None:
    """Stop ``srv`` and check that its frontend and its gateway are gone."""
    java = srv.java_pid()
    srv.stop()
    assert java is not None and not pid_alive(java), "TorchServe still running"
    assert srv.gateway_pid is None or not pid_alive(srv.gateway_pid), "gateway still running"
    assert not srv.any_alive()


def assert_same(answer: dict, want: dict) -> None:
    """Assert a served answer equals the reference (see :func:`same_answer`)."""
    assert answer["mix"] == want["mix"]
    assert [p["class"] for p in answer["predictions"]] == [p["class"] for p in want["predictions"]]
    got = [p["probability"] for p in answer["predictions"]]
    ref = [p["probability"] for p in want["predictions"]]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-4)


def sigint_default() -> None:
    """``preexec_fn`` for a command a test stops with Ctrl-C (SIGINT): the child starts with
    SIGINT's default action, as from a terminal. A test run started as a background job (``cmd
    &``, ``nohup``) has SIGINT ignored, and children inherit that, so Ctrl-C would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
