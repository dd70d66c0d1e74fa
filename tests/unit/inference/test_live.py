"""Live signatures: publish into a folder while an engine serves it; the watcher picks the new
signature up, no request fails, replaced and removed ones follow."""

from __future__ import annotations

import threading

import pytest
import torch
from helpers.hub import make_tiny_folder, tiny_parts

from rws_hub.core.signature import Signature
from rws_hub.errors import ArtifactError, InvalidMixError, SignatureMismatchError
from rws_hub.inference.engine import Engine
from rws_hub.inference.live import FolderWatcher
from rws_hub.io.folder import ModelFolder, publish_signature, unpublish_signature, verify_folder


def test_publish_while_serving(tmp_path) -> None:
    root = make_tiny_folder(tmp_path / "f", names=("fog", "contrast"))
    eng = Engine.from_folder(root, device="cpu")
    watcher = FolderWatcher(eng, root, interval=0.0)
    _, _, (snow,) = tiny_parts(seed=0, names=("snow",))
    x = torch.rand(4, 3, 32, 32)
    stop, failures, answered = threading.Event(), [], [0]

    def client() -> None:
        while not stop.is_set():
            try:
                watcher.poll()
                eng.predict(x, [{"fog": 0.5}, None, {"contrast": 1.0}, None])
                answered[0] += 1
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        publish_signature(root, snow)
        for _ in range(200):
            if "snow" in eng.defaults:
                break
            threading.Event().wait(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures and answered[0] > 0
    assert "snow" in eng.defaults and {"added": "snow"} in watcher.changes
    assert verify_folder(root) == {}
    assert "snow" in ModelFolder.load(root).signatures
    torch.testing.assert_close(
        eng.predict(x, {"snow": 1.0}),
        Engine.from_folder(root, device="cpu").predict(x, {"snow": 1.0}),
    )
    # replaced: new values served; removed: dropped
    publish_signature(root, snow.replace(tensors={k: 2 * v for k, v in snow.tensors.items()}))
    assert watcher.poll(force=True) == [{"replaced": "snow"}]
    assert torch.equal(
        eng.signatures["snow"].tensors[snow.names[0]], 2 * snow.tensors[snow.names[0]]
    )
    unpublish_signature(root, "snow")
    assert watcher.poll(force=True) == [{"dropped": "snow"}]
    with pytest.raises(InvalidMixError):
        eng.predict(x, {"snow": 1.0})
    assert verify_folder(root) == {}


def test_publish_refuses_what_does_not_belong(tmp_path) -> None:
    root = make_tiny_folder(tmp_path / "f", names=("fog",))
    stranger = Signature("odd", {"features.0.weight": torch.zeros(2, 3, 3, 3)}, lineage="sha256:x")
    with pytest.raises(SignatureMismatchError, match="lineage"):
        publish_signature(root, stranger)
    with pytest.raises(ArtifactError, match="no such signature"):
        unpublish_signature(root, "nope")
    (root / "model.safetensors").write_bytes(b"damaged")
    _, _, (snow,) = tiny_parts(names=("snow",))
    with pytest.raises(ArtifactError, match="does not verify"):
        publish_signature(root, snow)


def test_a_bad_published_file_is_refused_and_the_rest_keeps_serving(tmp_path) -> None:
    root = make_tiny_folder(tmp_path / "f", names=("fog",))
    eng = Engine.from_folder(root, device="cpu")
    watcher = FolderWatcher(eng, root, interval=0.0)
    _, _, (snow,) = tiny_parts(names=("snow",))
    bad = snow.replace(tensors={k: v[:1] for k, v in snow.tensors.items()})  # wrong shapes
    publish_signature(root, bad)
    (change,) = watcher.poll(force=True)
    assert change["refused"] == "snow" and "signatures/snow.safetensors" in eng.refused
    assert eng.predict(torch.rand(1, 3, 32, 32), {"fog": 1.0}).shape == (1, 10)
