"""Faults: weights stay clean after errors inside a patched forward; a real TorchServe serves a
model folder holding damaged, truncated and pickle-bearing signature files (refused, reported,
never unpickled); the worker is killed mid-load and TorchServe replaces it, with errors only
for the requests in flight at the kill and correct answers afterwards."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import pickletools
import random
import signal
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.serving import (
    b64,
    describe,
    expected,
    make_serving_folder,
    needs_server,
    png,
    running_server,
    same_answer,
    session,
    workers,
)

from rws_hub.core.patching import apply, patch, remove
from rws_hub.errors import ArtifactError
from rws_hub.inference.engine import Engine
from rws_hub.io.files import load_signature
from rws_hub.io.folder import MANIFEST_FILE, ModelFolder, sha256_file
from rws_hub.launch import torchserve as serving
from rws_hub.launch.processes import pid_alive

GOOD_NAMES = ("gaussian_noise", "pixelate")  # the signatures left intact in the damaged folder


# --------------------------------------------------------------------------------------------
# weights stay clean


def snapshot(model: torch.nn.Module) -> dict[str, bytes]:
    """Every parameter and buffer as raw bytes (a bitwise fingerprint)."""
    return {
        k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in model.state_dict().items()
    }


class Boom(RuntimeError):
    """The error injected into a forward pass."""


def raising_hook(armed: list[bool]) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if armed[0]:
            raise Boom("injected failure inside the forward pass")
        return output

    return hook


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_serving_folder(tmp_path_factory.mktemp("clean") / "tiny-vgg")


@pytest.mark.parametrize("where", ["routed", "deep"])
def test_engine_error_inside_patched_forward_leaves_weights_clean(clean_folder, where) -> None:
    """An exception raised while a batch of mixed rows runs (inside a routed layer, or in a deep
    layer after the patched ones ran) leaves the backbone bitwise unchanged, clears the routing
    plan, and later answers equal the ones before."""
    engine = Engine.from_folder(clean_folder, device="cpu")
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mixes = [None, {"fog": 1.0}, ["contrast", "pixelate"], "gaussian_noise:2", {"fog": 1.0}, None]
    before_logits = engine.predict(images, mixes)
    before = snapshot(engine.model)
    if where == "routed":
        layer = engine.model.get_submodule(engine.patched_layers[-1])
    else:
        layer = [m for m in engine.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    armed = [True]
    handle = layer.register_forward_hook(raising_hook(armed))
    try:
        for _ in range(3):
            with pytest.raises(Boom):
                engine.predict(images, mixes)
            assert engine._state.plan is None
            assert snapshot(engine.model) == before
        armed[0] = False
        torch.testing.assert_close(engine.predict(images, mixes), before_logits, rtol=0, atol=0)
    finally:
        handle.remove()
    assert snapshot(engine.model) == before
    # each row still equals the image alone through a model patched in place
    model = ModelFolder.load(clean_folder).model
    for i, mix in enumerate(mixes):
        with patch(model, engine.parse_mix(mix)):
            alone = model(images[i : i + 1])
        torch.testing.assert_close(before_logits[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_patch_restores_bitwise_after_errors(clean_folder) -> None:
    """rws_hub.patch: an exception (or KeyboardInterrupt) inside the block, a refused mix and a
    failure half-way through applying all leave the model bitwise as it was."""
    model = ModelFolder.load(clean_folder).model
    before = snapshot(model)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    clean = model(x)
    armed = [True]
    handle = model.features[-1].register_forward_hook(raising_hook(armed))
    try:
        for mix in ({"fog": 1.0, "contrast": 2.0}, ["pixelate"], "gaussian_noise:-1.5"):
            with pytest.raises(Boom), patch(model, mix):
                assert snapshot(model) != before  # really patched inside
                model(x)
            assert snapshot(model) == before
    finally:
        handle.remove()
    with pytest.raises(KeyboardInterrupt), patch(model, {"fog": 3.0}):
        raise KeyboardInterrupt
    assert snapshot(model) == before
    for bad in ({"snow": 1.0}, {"fog": float("nan")}, {"fog": "1"}):
        with pytest.raises(Exception), patch(model, bad):  # noqa: B017,PT011 (any refusal)
            pass
        assert snapshot(model) == before
    # a failure while applying, after some tensors were already written
    sigs = dict(model.rws_signatures)
    first = sigs["fog"]
    names = sorted(first.tensors)
    broken = {k: (v if k != names[-1] else v.to("meta")) for k, v in first.tensors.items()}
    original = first.tensors
    first.tensors = broken
    try:
        with pytest.raises(Exception), patch(model, {"fog": 1.0}):  # noqa: B017,PT011
            pass
    finally:
        first.tensors = original
    assert snapshot(model) == before
    apply(model, {"fog": 1.0})
    apply(model, ["contrast"])
    assert remove(model) == 2
    assert snapshot(model) == before
    torch.testing.assert_close(model(x), clean, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# a model folder with damaged and hostile signature files


class Payload:
    """Unpickling this creates ``marker`` (open(marker, "w")): proof that something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


def _list_in_manifest(folder: Path, rel: str) -> None:
    """Add ``rel`` to the folder's manifest with its real digest and size, so that it is
    refused for what it holds, not for being unlisted."""
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    f = folder / rel
    manifest["files"][rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
    path.write_text(json.dumps(manifest, indent=2))


@dataclass
class Damaged:
    folder: Path
    marker: Path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Damaged:
    """The tiny folder with ``fog`` corrupted (bytes flipped), ``contrast`` truncated, and two
    pickle-bearing files (a torch.save zip and a raw pickle) named ``.safetensors``, listed in
    the manifest with their true digests."""
    root = tmp_path_factory.mktemp("damaged")
    folder = make_serving_folder(root / "tiny-vgg")
    marker = root / "UNPICKLED"
    sig_dir = folder / "signatures"
    fog = bytearray((sig_dir / "fog.safetensors").read_bytes())
    for i in range(len(fog) // 2, len(fog) // 2 + 64):
        fog[i] ^= 0xFF
    (sig_dir / "fog.safetensors").write_bytes(bytes(fog))
    contrast = (sig_dir / "contrast.safetensors").read_bytes()
    (sig_dir / "contrast.safetensors").write_bytes(contrast[: len(contrast) // 3])
    torch.save({"delta": Payload(marker)}, sig_dir / "evil_zip.safetensors")
    (sig_dir / "evil_pickle.safetensors").write_bytes(pickle.dumps(Payload(marker), protocol=4))
    (sig_dir / "unlisted.safetensors").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    _list_in_manifest(folder, "signatures/evil_zip.safetensors")
    _list_in_manifest(folder, "signatures/evil_pickle.safetensors")
    return Damaged(folder, marker)


REFUSED = {
    "signatures/fog.safetensors": "sha256 mismatch",
    "signatures/contrast.safetensors": "truncated",
    "signatures/evil_zip.safetensors": "never unpickles",
    "signatures/evil_pickle.safetensors": "never unpickles",
    "signatures/unlisted.safetensors": "not listed in manifest.json",
}


def pickled_calls(data: bytes) -> list[str]:
    """The callables a pickle would call when loaded (``module.name`` of every global that a
    REDUCE applies), read from its opcodes without loading it."""
    strings: list[str] = []
    stack_globals: list[str] = []
    calls: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            stack_globals.append(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            stack_globals.append(".".join(strings[-2:]))
        elif op.name == "REDUCE" and stack_globals:
            calls.append(stack_globals[-1])
    return calls


def test_planted_payloads_are_live(damaged) -> None:
    """The planted files really would run code if unpickled (so the refusals below mean
    something): their pickles call ``open(marker, "w")``. Read from the opcodes; never loaded."""
    sig_dir = damaged.folder / "signatures"
    opener = f"{builtins.open.__module__}.{builtins.open.__qualname__}"  # io.open
    for name in ("evil_pickle", "unlisted"):
        raw = (sig_dir / f"{name}.safetensors").read_bytes()
        assert opener in pickled_calls(raw) and str(damaged.marker) in raw.decode("latin-1")
    with zipfile.ZipFile(sig_dir / "evil_zip.safetensors") as z:
        (inner,) = [n for n in z.namelist() if n.endswith("data.pkl")]
        assert opener in pickled_calls(z.read(inner))
    assert not damaged.marker.exists()


def test_damaged_folder_loads_the_rest(damaged) -> None:
    """In process: the damaged and hostile files are refused with their reasons, nothing is
    unpickled, and the intact signatures load."""
    folder = ModelFolder.load(damaged.folder)
    assert set(folder.signatures) == set(GOOD_NAMES)
    assert set(folder.refused) == set(REFUSED)
    for rel, why in REFUSED.items():
        assert why in folder.refused[rel], (rel, folder.refused[rel])
    for name in ("evil_zip", "evil_pickle", "unlisted"):  # also read directly, no manifest
        with pytest.raises(ArtifactError, match="never unpickles"):
            load_signature(damaged.folder / "signatures" / f"{name}.safetensors")
    assert not damaged.marker.exists()


@pytest.fixture(scope="module")
def server(damaged, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("serve")
    with running_server(damaged.folder, run_dir, max_batch_delay=20) as srv:
        yield srv


@pytest.fixture(scope="module")
def engine(damaged) -> Engine:
    return Engine.from_folder(damaged.folder, device="cpu")


@pytest.mark.server
@needs_server
def test_server_starts_serves_the_rest_and_reports_refusals(server, engine, damaged) -> None:
    meta = describe(server)
    assert [s["name"] for s in meta["signatures"]] == list(GOOD_NAMES)
    assert set(meta["refused"]) == set(REFUSED)
    for rel, why in REFUSED.items():
        assert why in meta["refused"][rel]
    log = (server.run_dir / "logs" / "model_log.log").read_text(errors="replace")
    for rel in REFUSED:
        assert f"rws: refused {rel}" in log
    s = session(server)
    for i, mix in enumerate([None, {"gaussian_noise": 1.0}, ["pixelate", "gaussian_noise"]]):
        data = png(300 + i)
        r = s.post(server.inference_url, json={"image": b64(data), "signatures": mix}, timeout=60)
        assert r.status_code == 200, r.text
        assert same_answer(r.json(), expected(engine, data, mix, 5))
    for name in ("fog", "contrast", "evil_zip"):
        r = s.post(
            server.inference_url, json={"image": b64(png(1)), "signatures": [name]}, timeout=60
        )
        assert r.status_code == 400 and "unknown signature" in r.json()["error"]
    assert not damaged.marker.exists()


# --------------------------------------------------------------------------------------------
# killing the worker under load


@dataclass
class Shot:
    """One request of the load: when it left and came back, and what came back."""

    sent: float
    done: float
    status: int
    answer: Any
    image: int
    mix: Any


def _wait_new_worker(srv: serving.Server, old_pid: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws = workers(srv)
        except (OSError, ValueError, KeyError):
            ws = []
        ready = [w for w in ws if w.get("status") == "READY" and w.get("pid") != old_pid]
        if ready:
            return ready[0]
        time.sleep(0.2)
    raise AssertionError(f"no new READY worker after {timeout:.0f} s")


@pytest.mark.server
@needs_server
def test_worker_killed_mid_load(server, engine) -> None:
    """SIGKILL the worker while 6 clients keep sending: only requests in flight at the kill
    fail (at most one per client), TorchServe starts a new worker, and every answer before
    and after is the reference answer."""
    old = workers(server)
    assert len(old) == 1 and old[0]["status"] == "READY"
    old_pid = int(old[0]["pid"])
    assert old_pid != os.getpid() and pid_alive(old_pid)
    images = [png(500 + i) for i in range(12)]
    mixes = [None, {"gaussian_noise": 1.0}, ["pixelate"], "gaussian_noise:0.3,pixelate:2"]
    refs = {
        (i, j): expected(engine, images[i], mixes[j], 3)
        for i in range(len(images))
        for j in range(len(mixes))
    }
    shots: list[Shot] = []
    lock = threading.Lock()
    stop = threading.Event()
    clients, max_per_client = 6, 150  # bounded

    def client(seed: int) -> None:
        rng = random.Random(seed)
        s = session(server)
        for _ in range(max_per_client):
            if stop.is_set():
                return
            i, j = rng.randrange(len(images)), rng.randrange(len(mixes))
            body = {"image": b64(images[i]), "signatures": mixes[j], "top_k": 3}
            sent = time.monotonic()
            try:
                r = s.post(server.inference_url, json=body, timeout=120)
                status, answer = r.status_code, r.json()
            except Exception as exc:  # noqa: BLE001 (a dropped connection counts as an error)
                status, answer = -1, repr(exc)
            with lock:
                shots.append(Shot(sent, time.monotonic(), status, answer, i, j))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(s.status == 200 for s in shots) < 40:
            time.sleep(0.05)
        kill_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)  # the worker of the server this test started
        killed_at = time.monotonic()
        new = _wait_new_worker(server, old_pid)
        ready_at = time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                after = sum(s.status == 200 and s.sent > ready_at for s in shots)
            if after >= 60:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=130)
    errors = [s for s in shots if s.status != 200]
    wrong = [
        s for s in shots if s.status == 200 and not same_answer(s.answer, refs[(s.image, s.mix)])
    ]
    later = [s for s in shots if s.status == 200 and s.sent > ready_at]
    print(
        f"\nworker kill: {len(shots)} requests, {len(errors)} errors (in flight at the kill), "
        f"{len(wrong)} wrong, new worker READY {ready_at - kill_at:.1f} s after the kill, "
        f"{len(later)} correct answers after it"
    )
    assert not wrong
    assert len(errors) <= clients, [(s.status, s.answer) for s in errors]
    # Only requests in flight at the kill fail: sent before it (or in the instant the frontend
    # needs to see the worker's socket close) and answered after it.
    for s in errors:
        assert s.sent <= killed_at + 0.5 and s.done >= kill_at, (
            s.sent - kill_at,
            s.done - kill_at,
            s.answer,
        )
        assert s.status == -1 or 500 <= s.status < 600, s.answer  # 507 'Worker died.'
    assert len(later) >= 60
    assert int(new["pid"]) != old_pid and not pid_alive(old_pid)
    assert {w["status"] for w in workers(server)} == {"READY"}


def test_pickled_backbone_is_refused(tmp_path) -> None:
    """A pickle-bearing model.safetensors (listed in the manifest with its true digest) stops
    the load with an ArtifactError naming the file; nothing is unpickled."""
    folder = make_serving_folder(tmp_path / "tiny-vgg")
    marker = tmp_path / "UNPICKLED"
    torch.save({"features.0.weight": Payload(marker)}, folder / "model.safetensors")
    _list_in_manifest(folder, "model.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors"):
        ModelFolder.load(folder)
    with pytest.raises(ArtifactError):
        Engine.from_folder(folder, device="cpu")
    assert not marker.exists()
