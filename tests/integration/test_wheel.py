"""The built wheel serves and demos outside any checkout.

Builds the wheel from a copy of the sources (``pip wheel --no-deps --no-build-isolation``,
offline), installs it with ``pip install --no-deps --target`` into a temporary directory (torch
and the other dependencies come from this environment: nothing is downloaded), and runs the
installed ``rws`` with ``PYTHONPATH`` pointing there, from a working directory outside the
checkout, on a toy model folder outside the repository:

* ``import rws_hub`` resolves to the installed copy, not to the editable checkout;
* ``rws serve`` / ``rws demo`` / ``rws up`` without a folder say that a folder is needed;
* ``rws serve FOLDER`` starts TorchServe with the packaged handler; a REST request answers what
  an in-process :class:`Engine` answers on the same folder; ``rws serve --stop`` stops it;
* ``rws demo FOLDER`` serves the page (200 on ``/``) and stops on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from helpers.serving import (
    HAVE_TORCHSERVE,
    b64,
    expected,
    free_ports,
    free_server_ports,
    png,
    same_answer,
    sigint_default,
)

from rws_hub.inference.engine import Engine
from rws_hub.launch import torchserve as serving
from rws_hub.launch.processes import pid_alive
from rws_hub.zoo.toy import make_toy_folder

requests = pytest.importorskip("requests")

pytestmark = [
    pytest.mark.server,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_TORCHSERVE, reason="needs Java 17 and torchserve"),
]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The wheel installed into ``<tmp>/site``: ``{"site", "env", "rws", "cwd"}``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: no build/ leftovers of the checkout, nothing written there
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(
        REPO_ROOT / "rws_hub",
        src / "rws_hub",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    done = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                 str(tmp / "dist"), str(src)], timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list((tmp / "dist").glob("rws_hub-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    done = _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site),
                 str(wheels[0])], timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    cwd = tmp / "elsewhere"  # outside the checkout: no model-store/, no handlers/, no demo/
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONUNBUFFERED="1")
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    script = site / "bin" / "rws"  # the installed console script (runs this interpreter)
    rws = [str(script)] if script.is_file() else [sys.executable, "-m", "rws_hub.cli"]
    return {"site": site, "env": env, "rws": rws, "cwd": cwd}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy model folder outside the repository."""
    return make_toy_folder(tmp_path_factory.mktemp("models") / "toy-vgg")


def test_the_installed_package_is_the_one_imported(installed) -> None:
    code = (
        "import rws_hub, rws_hub.integrations, rws_hub.launch.locations as loc; "
        "print(rws_hub.__file__); print(loc.handler_file()); print(loc.checkout_root()); "
        "print(sorted(p.name for p in (loc.package_dir() / 'integrations' / 'examples').glob('*.png')))"
    )
    done = _run([sys.executable, "-c", code], env=installed["env"], cwd=installed["cwd"])
    assert done.returncode == 0, done.stderr
    package, handler, root, examples = done.stdout.splitlines()
    site = installed["site"].resolve()
    assert Path(package).resolve().is_relative_to(site), package
    assert Path(handler).is_file() and Path(handler).resolve().is_relative_to(site)
    assert root == "None"
    assert "airplane-fog.png" in examples


def test_no_folder_outside_a_checkout_says_a_folder_is_needed(installed) -> None:
    for verb in ("serve", "demo", "up"):
        done = _run([*installed["rws"], verb], env=installed["env"], cwd=installed["cwd"],
                    timeout=120)  # fmt: skip
        assert done.returncode == 2, (verb, done.stdout, done.stderr)
        assert "no model folder given" in done.stderr and f"rws {verb} path/to" in done.stderr


def test_rws_serve_from_the_wheel_answers_like_the_engine(installed, folder, tmp_path) -> None:
    port, mport, xport, gport = free_server_ports()
    run_dir = tmp_path / "serve"
    cmd = [*installed["rws"], "serve", str(folder), "--run-dir", str(run_dir), "--name", "toy"]
    cmd += ["--port", str(port), "--management-port", str(mport), "--metrics-port", str(xport)]
    cmd += ["--grpc-port", str(gport), "--timeout", "240"]
    java = None
    try:
        done = _run(cmd, env=installed["env"], cwd=installed["cwd"], timeout=400)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "READY" in done.stdout
        srv = serving.Server.attach(run_dir)
        assert srv is not None and srv.alive()
        java = srv.java_pid()
        # the archive holds the installed package's handler and a copy of the installed package
        archive = run_dir / "model-store" / "toy"
        site = installed["site"]
        handler = site / "rws_hub" / "integrations" / "torchserve_handler.py"
        assert (archive / "torchserve_handler.py").read_bytes() == handler.read_bytes()
        assert (archive / "rws_hub" / "integrations" / "examples" / "cat-clean.png").is_file()

        image = png(11)
        engine = Engine.from_folder(folder, device="cpu")
        for mix in (None, {"fog": 0.5, "contrast": 1.0}):
            r = requests.post(
                srv.inference_url,
                json={"image": b64(image), "signatures": mix, "top_k": 3},
                headers=srv.headers(),
                timeout=120,
            )
            assert r.status_code == 200, r.text
            assert same_answer(r.json(), expected(engine, image, mix, 3)), r.json()
        # the worker runs the archive's copy (TorchServe may unpack it under tmp/models/)
        log = (run_dir / "logs" / "model_log.log").read_text(errors="replace")
        found = re.findall(r"rws: serving .* \(rws_hub from (\S+)\)", log)
        assert found, log[-2000:]
        used = Path(found[-1])
        assert used.name == "rws_hub" and used.parent.name == "toy", used
        assert used.is_relative_to(run_dir) and not used.is_relative_to(site), used
    finally:
        stop = _run([*installed["rws"], "serve", "--stop", "--run-dir", str(run_dir)],
                    env=installed["env"], cwd=installed["cwd"], timeout=120)  # fmt: skip
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped the server" in stop.stdout
    assert java is not None and not pid_alive(java)
    assert serving.Server.attach(run_dir) is None


def test_rws_demo_from_the_wheel_serves_the_page(installed, folder) -> None:
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [*installed["rws"], "demo", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=installed["env"],
        cwd=installed["cwd"],
        preexec_fn=sigint_default,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if (not line and proc.poll() is not None) or "http://" in line:
                break
        assert f"http://127.0.0.1:{port}/" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "Robust Weight Signatures" in page
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
