"""torch.hub entrypoints (hubconf.py) and the torchvision-style weights enum, with no network.

The folder comes from ``RWS_HUB_FOLDER`` (a tiny folder built here) and, when the lead's real
one exists, from the embedded default folder (``DEFAULT_ENTRY.folder``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.hub import NAMES, REPO_ROOT, make_tiny_folder
from PIL import Image

import rws_hub
from rws_hub.datasets import get_dataset
from rws_hub.io.folder import ModelFolder, signature_file, verify_folder
from rws_hub.zoo.entries import DEFAULT_ENTRY, ENTRIES
from rws_hub.zoo.weights import FOLDER_ENV, get_weights_enum

EMBEDDED = REPO_ROOT / DEFAULT_ENTRY.folder
DEFAULT = DEFAULT_ENTRY.entrypoint  # the entry RWS_HUB_FOLDER overrides
Weights = get_weights_enum(DEFAULT)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("hubconf") / "tiny")


@pytest.fixture
def hub_env(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(FOLDER_ENV, str(built))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return built


def load(*args, **kwargs):
    return torch.hub.load(str(REPO_ROOT), *args, source="local", **kwargs)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_load_local_backbone(hub_env: Path) -> None:
    model = load(DEFAULT)
    ref = ModelFolder.load(hub_env, signatures=None).model
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(logits(model, x), logits(ref, x))
    assert model.rws_signatures == {} and model.rws_refused == {}
    assert model.rws_architecture == "vgg16_cifar" and not model.training
    model = load(DEFAULT, signatures="all")
    assert list(model.rws_signatures) == list(NAMES)
    assert list(load(DEFAULT, signatures=["fog"]).rws_signatures) == ["fog"]


def test_patched_differs_and_equals_core_api(hub_env: Path) -> None:
    x = torch.rand(4, 3, 32, 32)
    plain = load(DEFAULT, signatures="all")
    patched = load(DEFAULT, patch={"fog": 1.0, "contrast": 0.5})
    assert set(patched.rws_signatures) == {"fog", "contrast"}
    assert dict(rws_hub.active_mix(patched)) == {"contrast": 0.5, "fog": 1.0}
    out_plain, out_patched = logits(plain, x), logits(patched, x)
    assert not torch.allclose(out_plain, out_patched)
    with rws_hub.patch(plain, {"fog": 1.0, "contrast": 0.5}):
        assert torch.equal(logits(plain, x), out_patched)
    assert torch.equal(logits(plain, x), out_plain)  # restored
    rws_hub.remove(patched)
    assert torch.equal(logits(patched, x), out_plain)


def test_signature_entrypoint(hub_env: Path) -> None:
    sig = load("signature", "gaussian_noise")
    ref = ModelFolder.load(hub_env).signatures["gaussian_noise"]
    assert sig.name == "gaussian_noise" and sig.lineage == ref.lineage
    assert all(torch.equal(sig.tensors[k], v) for k, v in ref.tensors.items())
    with pytest.raises(rws_hub.ArtifactError, match="signatures/snow.safetensors: missing"):
        load("signature", "snow")


def test_untrained_model(hub_env: Path) -> None:
    model = load(DEFAULT, pretrained=False)
    ref = ModelFolder.load(hub_env, signatures=None).model.state_dict()
    sd = model.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ref.items()}
    assert not torch.equal(sd["features.0.weight"], ref["features.0.weight"])


def test_refused_signature_reported(hub_env: Path, tmp_path: Path, monkeypatch) -> None:
    copy = Path(shutil.copytree(hub_env, tmp_path / "copy"))
    data = bytearray((copy / signature_file("fog")).read_bytes())
    data[-5] ^= 0xFF
    (copy / signature_file("fog")).write_bytes(bytes(data))
    monkeypatch.setenv(FOLDER_ENV, str(copy))
    with pytest.warns(UserWarning, match="signatures/fog.safetensors: sha256 mismatch"):
        model = load(DEFAULT, signatures="all")
    assert list(model.rws_refused) == ["signatures/fog.safetensors"]
    assert list(model.rws_signatures) == ["gaussian_noise", "contrast"]


def test_hub_list_and_help_from_torch_hub_cache(hub_env: Path, tmp_path: Path) -> None:
    # torch.hub.list/help take GitHub ids only; a clone placed in torch.hub's cache (as a
    # previous download leaves it) is used without any network call.
    hub_dir = tmp_path / "torch" / "hub"
    hub_dir.mkdir(parents=True)
    os.symlink(REPO_ROOT, hub_dir / "owner_rws-hub_main")
    listed = torch.hub.list("owner/rws-hub:main", trust_repo=True)
    assert listed == sorted([e.entrypoint for e in ENTRIES.values()] + ["signature"])
    doc = torch.hub.help("owner/rws-hub:main", DEFAULT, trust_repo=True)
    assert "signatures" in doc and "patch" in doc and "[0, 1]" in doc
    model = torch.hub.load("owner/rws-hub:main", DEFAULT, patch={"fog": 1.0}, trust_repo=True)
    assert dict(rws_hub.active_mix(model)) == {"fog": 1.0}


def test_weights_enum(hub_env: Path) -> None:
    w = Weights.DEFAULT
    assert w is Weights.RWS_V1
    assert w.get_folder() == hub_env and w.url.endswith(w.repo_id)
    meta = w.meta
    model = ModelFolder.load(hub_env, signatures=None).model
    assert meta["categories"] == list(get_dataset("cifar10").classes)
    assert meta["dataset"] == "cifar10"
    assert meta["num_params"] == sum(p.numel() for p in model.parameters())
    assert meta["ta"] == 0.91 and meta["ra"]["fog"] == 0.71
    assert meta["signatures"] == list(NAMES)
    tf = w.transforms()
    for img in (Image.new("RGBA", (64, 48), (255, 0, 0, 128)), Image.new("L", (32, 32), 128)):
        t = tf(img)
        assert t.shape == (3, 32, 32) and t.dtype == torch.float32
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert torch.allclose(
        tf(Image.new("RGB", (32, 32), (255, 0, 51)))[:, 5, 5], torch.tensor([1.0, 0.0, 0.2])
    )
    assert w.build_model(pretrained=True).rws_signatures == {}


def test_auto_patch_uses_the_folder_detector(built: Path, tmp_path: Path, monkeypatch) -> None:
    from rws_hub.detect import AutoRule, CorruptionDetector
    from rws_hub.io.folder import add_detector

    root = tmp_path / "auto"
    shutil.copytree(built, root)
    monkeypatch.setenv(FOLDER_ENV, str(root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ValueError, match="detector"):
        load(DEFAULT, patch="auto")  # no detector shipped yet
    with pytest.raises(ValueError, match="'auto'"):
        load(DEFAULT, patch="fog")
    backbone = ModelFolder.load(root, signatures=None).model
    torch.manual_seed(1)
    det = CorruptionDetector(conv_channels=8, hidden=16)
    det.set_backbone_conv(backbone)
    with torch.no_grad():
        det.head[-1].bias[det.classes.index("fog")] = 50.0  # it always sees fog
    add_detector(root, det.state_dict(), det.spec() | {"rule": AutoRule("top1", 0.5).to_json()})

    model = load(DEFAULT, patch="auto")
    x = torch.rand(3, 3, 32, 32)
    out = logits(model, x)
    assert model.last_mixes == [{"fog": 1.0}] * 3
    assert model.last_detected[0][0]["class"] == "fog"
    ref = load(DEFAULT, signatures="all")
    with rws_hub.patch(ref, {"fog": 1.0}):
        want = logits(ref, x)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, logits(ref, x), atol=1e-4)  # the patch did something
    assert list(model.rws_signatures) == list(NAMES) and model.rws_refused == {}


@pytest.mark.skipif(
    not (EMBEDDED / "config.json").is_file(),
    reason=f"{DEFAULT_ENTRY.folder} is not built yet (rws zoo build writes it)",
)
def test_embedded_model_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(FOLDER_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert verify_folder(EMBEDDED) == {}
    w = Weights.DEFAULT
    assert w.get_folder() == EMBEDDED
    meta = w.meta
    assert isinstance(meta["ta"], float) and meta["signatures"]
    model = load(DEFAULT, signatures="all")
    assert model.rws_refused == {} and list(model.rws_signatures) == meta["signatures"]
    name = meta["signatures"][0]
    x = torch.rand(2, 3, 32, 32)
    out = logits(model, x)
    with rws_hub.patch(model, {name: 1.0}):
        patched = logits(model, x)
    assert not torch.allclose(out, patched)
    sig = load("signature", name)
    with rws_hub.patch(model, {sig: 1.0}):
        assert torch.equal(logits(model, x), patched)
    # "auto": the shipped detector picks each image's mix; equal to patching by hand
    auto = load(DEFAULT, patch="auto")
    foggy = torch.from_numpy(np.array(Image.open(REPO_ROOT / "demo/examples/airplane-fog.png")))
    foggy = foggy.permute(2, 0, 1)[None].float() / 255
    got = logits(auto, foggy)
    (mix,) = auto.last_mixes
    assert "fog" in mix, auto.last_detected
    with rws_hub.patch(model, mix):
        torch.testing.assert_close(got, logits(model, foggy), rtol=1e-4, atol=1e-4)
