"""The model folder: round trip, integrity checks, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.hub import NAMES, make_tiny_folder, tiny_parts

from rws_hub.core.signature import Signature
from rws_hub.errors import ArtifactError, SignatureMismatchError
from rws_hub.io.folder import (
    ModelFolder,
    read_manifest,
    save_model_folder,
    verify_folder,
    write_manifest,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("folder") / "tiny")


@pytest.fixture
def folder(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built folder, free to damage."""
    return Path(shutil.copytree(built, tmp_path / "copy"))


def flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip(built: Path) -> None:
    pre, clean, sigs = tiny_parts()
    mf = ModelFolder.load(built)
    assert mf.refused == {}
    assert mf.signature_names() == list(NAMES)
    assert mf.classes()[0] == "airplane" and len(mf.classes()) == 10
    for k, v in clean.state_dict().items():
        assert torch.equal(mf.model.state_dict()[k], v), k
    for s in sigs:
        got = mf.signatures[s.name]
        assert got.lineage == s.lineage and got.layers == 2
        assert set(got.tensors) == set(s.tensors)
        for k in s.tensors:
            assert torch.equal(got.tensors[k], s.tensors[k])
    pre_sd = mf.pretrained_state()
    assert all(torch.equal(pre_sd[k], v) for k, v in pre.state_dict().items())
    cfg = mf.config
    assert cfg["format_version"] == 1 and cfg["input_size"] == [3, 32, 32]
    assert cfg["lineage"] == sigs[0].lineage and cfg["signature_layers"] == 2
    assert cfg["signatures"] == list(NAMES) and cfg["metrics"]["clean_accuracy"] == 0.91
    assert not mf.model.training
    assert mf.model.rws_signatures is mf.signatures
    assert mf.model.rws_lineage == cfg["lineage"] and mf.model.rws_config is cfg
    assert mf.model.rws_architecture == "vgg16_cifar"
    assert verify_folder(built) == {}
    files = read_manifest(built)
    assert {"config.json", "model.safetensors", "pretrained.safetensors", "README.md"} <= set(files)
    assert {f"signatures/{n}.safetensors" for n in NAMES} <= set(files)
    # same outputs as the in-memory model
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(mf.model(x), clean(x))


def test_signature_selection(built: Path) -> None:
    assert ModelFolder.load(built, signatures=None).signatures == {}
    assert ModelFolder.load(built, signatures="fog").signature_names() == ["fog"]
    mf = ModelFolder.load(built, signatures=["contrast", "fog"])
    assert mf.signature_names() == ["contrast", "fog"]
    with pytest.raises(ArtifactError, match="signatures/snow.safetensors: no such signature"):
        ModelFolder.load(built, signatures=["snow"])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: flip_byte(p), "sha256 mismatch"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
        (lambda p: p.unlink(), "missing"),
    ],
)
def test_damaged_backbone_is_fatal(folder: Path, damage, reason: str) -> None:
    damage(folder / "model.safetensors")
    with pytest.raises(ArtifactError, match=f"model.safetensors: {reason}"):
        ModelFolder.load(folder)
    assert "model.safetensors" in verify_folder(folder)


def test_tampered_config_is_fatal(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["width"] = 0.25
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="config.json: "):
        ModelFolder.load(folder)
    # without the manifest check the backbone no longer fits the (edited) config
    with pytest.raises(ArtifactError, match="model.safetensors: does not match config.json"):
        ModelFolder.load(folder, verify=False)


def test_missing_manifest_is_fatal(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        ModelFolder.load(folder)
    assert verify_folder(folder) == {"manifest.json": f"missing in {folder}"}


def test_damaged_signature_is_refused_others_load(folder: Path) -> None:
    flip_byte(folder / "signatures" / "fog.safetensors")
    mf = ModelFolder.load(folder)
    assert mf.signature_names() == ["gaussian_noise", "contrast"]
    assert list(mf.refused) == ["signatures/fog.safetensors"]
    assert "sha256 mismatch" in mf.refused["signatures/fog.safetensors"]
    assert "fog" not in mf.model.rws_signatures
    assert set(verify_folder(folder)) == {"signatures/fog.safetensors"}


def test_not_safetensors_signature_is_refused(folder: Path) -> None:
    # a pickle-looking file, listed in a rewritten manifest: the sha256 matches, the format not
    (folder / "signatures" / "fog.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    write_manifest(folder)
    mf = ModelFolder.load(folder)
    assert "fog" not in mf.signatures and len(mf.signatures) == 2
    assert "safetensors" in mf.refused["signatures/fog.safetensors"]


def test_foreign_signature_is_refused(folder: Path) -> None:
    _, _, sigs = tiny_parts(seed=1)  # another pretrained model: another lineage
    sigs[1].save(folder / "signatures" / "fog.safetensors")
    write_manifest(folder)
    mf = ModelFolder.load(folder)
    assert "lineage" in mf.refused["signatures/fog.safetensors"]
    assert mf.signature_names() == ["gaussian_noise", "contrast"]
    # a signature whose tensors the backbone does not have
    odd = Signature(
        "fog",
        {"features.0.weight": torch.zeros(5, 3, 3, 3)},
        architecture="vgg16_cifar",
        lineage=mf.config["lineage"],
    )
    odd.save(folder / "signatures" / "fog.safetensors")
    write_manifest(folder)
    mf = ModelFolder.load(folder)
    assert "shape" in mf.refused["signatures/fog.safetensors"]


def test_unlisted_files(folder: Path) -> None:
    mf = ModelFolder.load(folder)
    mf.signatures["fog"].replace(name="snow").save(folder / "signatures" / "snow.safetensors")
    (folder / "notes.txt").write_text("not in the manifest")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs")
    mf = ModelFolder.load(folder)
    assert mf.refused == {"signatures/snow.safetensors": "not listed in manifest.json"}
    assert mf.signature_names() == list(NAMES)
    assert verify_folder(folder) == {"signatures/snow.safetensors": "not listed in manifest.json"}
    # without verification the unlisted (but valid) signature loads
    assert "snow" in ModelFolder.load(folder, verify=False).signatures


def test_pretrained_checked_when_read(folder: Path) -> None:
    flip_byte(folder / "pretrained.safetensors")
    mf = ModelFolder.load(folder)  # not needed to load
    with pytest.raises(ArtifactError, match="pretrained.safetensors: sha256 mismatch"):
        mf.pretrained_state()


def test_save_refuses_inconsistent_parts(tmp_path: Path) -> None:
    pre, clean, sigs = tiny_parts()
    _, _, other = tiny_parts(seed=1)
    cfg = {"architecture": "vgg16_cifar", "width": 0.125}
    with pytest.raises(SignatureMismatchError, match="lineages disagree"):
        save_model_folder(tmp_path / "a", model=clean, config=cfg, signatures=other, pretrained=pre)
    with pytest.raises(ValueError, match="does not fit config"):
        save_model_folder(
            tmp_path / "b", model=clean, config={**cfg, "width": 0.25}, pretrained=pre
        )
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "data.txt").write_text("not a model folder")
    with pytest.raises(FileExistsError, match="not a model folder"):
        save_model_folder(tmp_path / "c", model=clean, config=cfg, signatures=sigs)
    out = save_model_folder(tmp_path / "d", model=clean, config=cfg, signatures=sigs)
    # an existing model folder is replaced as a whole (no stale signature files)
    save_model_folder(out, model=clean, config=cfg, signatures=sigs[:1])
    assert sorted(p.name for p in (out / "signatures").iterdir()) == [f"{sigs[0].name}.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d"]
    mf = ModelFolder.load(out)
    assert mf.signature_names() == [sigs[0].name] and mf.refused == {}
    assert not mf.has_pretrained()
    with pytest.raises(ArtifactError, match="pretrained.safetensors: not in this model folder"):
        mf.pretrained_state()


def test_many_signatures_load_fast(tmp_path: Path) -> None:
    import time

    names = tuple(f"sig{i:02d}" for i in range(40))
    out = make_tiny_folder(tmp_path / "many", names=names)
    start = time.perf_counter()
    mf = ModelFolder.load(out)
    elapsed = time.perf_counter() - start
    assert mf.signature_names() == list(names) and mf.refused == {}
    assert elapsed < 5.0, elapsed


def test_rws_verify(folder: Path, capsys: pytest.CaptureFixture) -> None:
    from rws_hub.cli import main

    assert main(["verify", str(folder)]) == 0
    assert f"ok: 3 signature(s) load: {', '.join(NAMES)}" in capsys.readouterr().out
    flip_byte(folder / "signatures" / "fog.safetensors")
    assert main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "signatures/fog.safetensors: sha256 mismatch" in out
    assert "ok: 2 signature(s) load: gaussian_noise, contrast" in out
    flip_byte(folder / "model.safetensors")
    assert main(["verify", str(folder)]) == 1
    assert "model.safetensors: sha256 mismatch" in capsys.readouterr().out


def test_odd_names_and_manifest_paths(folder: Path) -> None:
    mf = ModelFolder.load(folder)
    mf.signatures["fog"].save(folder / "signatures" / "fog copy.safetensors")
    mf = ModelFolder.load(folder)
    assert "signatures/fog copy.safetensors" in mf.refused and len(mf.signatures) == 3
    data = json.loads((folder / "manifest.json").read_text())
    data["files"]["../outside.txt"] = {"sha256": "0" * 64, "size": 1}
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="manifest.json: malformed .*inside the folder"):
        ModelFolder.load(folder)


def test_signature_sets_referenced_by_lineage(tmp_path: Path) -> None:
    """A folder of another data set (new head, same θ_pre) uses a published set by lineage:
    verified with the set's own manifest, loaded under a prefix; another lineage is refused
    naming both fingerprints."""
    from rws_hub.archs import create_model
    from rws_hub.io.folder import SIGNATURE_SETS

    published = make_tiny_folder(tmp_path / "published")
    pre, clean, _ = tiny_parts()
    other = create_model("vgg16_cifar", width=0.125, num_classes=4).eval()
    sd = {k: v for k, v in clean.state_dict().items() if not k.startswith("classifier")}
    other.load_state_dict(sd, strict=False)
    lineage = json.loads((published / "config.json").read_text())["lineage"]
    ref = {"folder": "../published", "lineage": lineage, "prefix": "c10."}
    root = save_model_folder(
        tmp_path / "transfer",
        model=other,
        config={"architecture": "vgg16_cifar", "width": 0.125, "classes": list("abcd"),
                "lineage": lineage, SIGNATURE_SETS: [ref]},
    )  # fmt: skip
    loaded = ModelFolder.load(root)
    assert sorted(loaded.signatures) == sorted(f"c10.{n}" for n in NAMES)
    assert loaded.signatures["c10.fog"].name == "c10.fog" and not loaded.refused
    assert sorted(ModelFolder.load(root, signatures=["c10.fog"]).signatures) == ["c10.fog"]
    # tampering with the published set is caught by its own manifest
    flip_byte(published / "signatures" / "fog.safetensors")
    assert "c10.fog" not in ModelFolder.load(root).signatures
    # another lineage: refused with both fingerprints
    cfg = json.loads((root / "config.json").read_text())
    stranger = save_model_folder(
        tmp_path / "stranger",
        model=other,
        config={**{k: v for k, v in cfg.items() if k in ("architecture", "width", "classes")},
                "lineage": "sha256:0000000000000000", SIGNATURE_SETS: [dict(ref, lineage=None)]},
    )  # fmt: skip
    refused = ModelFolder.load(stranger).refused
    (reason,) = refused.values()
    assert lineage in reason and "sha256:0000000000000000" in reason


def test_re_export_keeps_the_bytes_of_unchanged_files(tmp_path: Path) -> None:
    """The safetensors writer orders header metadata differently from run to run: a folder
    saved again keeps a signature file whose content did not change byte for byte (no churn in
    hashes, git or the hub), and writes a changed one anew."""
    pre, clean, sigs = tiny_parts()
    cfg = {"architecture": "vgg16_cifar", "width": 0.125}
    out = save_model_folder(
        tmp_path / "f", model=clean, config=cfg, signatures=sigs, pretrained=pre
    )
    path = out / "signatures" / f"{sigs[0].name}.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    reordered = data[:8] + text.ljust(n) + data[8 + n :]
    assert reordered != data
    path.write_bytes(reordered)
    write_manifest(out)
    assert Signature.load(path).tensors.keys() == sigs[0].tensors.keys()
    save_model_folder(out, model=clean, config=cfg, signatures=sigs, pretrained=pre)
    assert path.read_bytes() == reordered
    assert ModelFolder.load(out).refused == {}
    doubled = [(2.0 * sigs[0]).replace(name=sigs[0].name), *sigs[1:]]
    save_model_folder(out, model=clean, config=cfg, signatures=doubled, pretrained=pre)
    assert path.read_bytes() != reordered
    loaded = ModelFolder.load(out).signatures[sigs[0].name]
    assert torch.equal(
        loaded.tensors["features.0.weight"], 2.0 * sigs[0].tensors["features.0.weight"]
    )
