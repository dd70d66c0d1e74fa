"""rws_hub.launch.torchserve's process records with the gateway, without starting TorchServe:
records written before the gateway existed, and a half-dead server (one process left)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rws_hub.launch import torchserve as serving
from rws_hub.launch.processes import pid_alive, write_record


def _options(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"folder": str(tmp_path), "run_dir": str(tmp_path), "model_name": "m", **extra}


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_a_record_from_before_the_gateway_attaches_without_one(tmp_path: Path) -> None:
    write_record(
        tmp_path / serving.STATE_FILE,
        {"launcher_pid": _dead_pid(), "options": _options(tmp_path)},
    )
    server = serving.Server.attach(tmp_path)
    assert server is not None and server.gateway_pid is None
    assert server.opts.gateway is False
    assert server.opts.backend_url == server.opts.inference_url
    assert not server.any_alive() and not serving.stop(tmp_path)


def test_a_half_dead_server_blocks_a_new_start_until_stopped(tmp_path: Path) -> None:
    """TorchServe gone but its gateway still holding the port: start() refuses (it would
    orphan the gateway), and rws serve --stop ends it."""
    gateway = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        write_record(
            tmp_path / serving.STATE_FILE,
            {
                "launcher_pid": _dead_pid(),
                "gateway_pid": gateway.pid,
                "options": _options(tmp_path, gateway=True, backend_port=1),
            },
        )
        server = serving.Server.attach(tmp_path)
        assert server is not None and server.any_alive() and not server.alive()
        assert "torchserve exited" in server.why_down()
        opts = serving.ServeOptions(folder=tmp_path, run_dir=tmp_path, model_name="m")
        with pytest.raises(serving.ServeError, match="still running"):
            serving.start(opts)
        assert serving.stop(tmp_path, timeout=5)
        gateway.wait(timeout=10)
        assert not pid_alive(gateway.pid)
        assert serving.Server.attach(tmp_path) is None
    finally:
        if gateway.poll() is None:
            gateway.kill()


def test_the_backend_port_is_chosen_once_and_only_with_the_gateway(tmp_path: Path) -> None:
    opts = serving.ServeOptions(folder=tmp_path, run_dir=tmp_path / "r", model_name="m")
    with pytest.raises(serving.ServeError, match="no backend port"):
        _ = opts.backend_url
    opts.choose_backend_port()
    port = opts.backend_port
    opts.choose_backend_port()
    assert opts.backend_port == port and opts.backend_url == f"http://127.0.0.1:{port}"
    direct = serving.ServeOptions(
        folder=tmp_path, run_dir=tmp_path / "d", model_name="m", gateway=False
    )
    direct.choose_backend_port()
    assert direct.backend_port is None and direct.backend_url == direct.inference_url


def test_free_port_pair_leaves_the_grpc_management_port_free() -> None:
    """TorchServe binds gRPC management on the inference port + 1: the pair is free, and a
    taken p + 1 or an avoided port is never chosen."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        for _ in range(20):
            p = serving.free_port_pair(avoid=(taken,))
            assert p != taken and p + 1 != taken
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
