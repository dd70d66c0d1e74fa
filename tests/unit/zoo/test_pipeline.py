"""The zoo pipeline end to end on tiny data: train → extract → evaluate → export → load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("rws_hub.datasets.corruptions")
pytest.importorskip("rws_hub.io.folder")

from helpers.zoo import tiny_spec  # noqa: E402

from rws_hub.cli import main as rws  # noqa: E402
from rws_hub.io.folder import ModelFolder  # noqa: E402
from rws_hub.zoo.pipeline import ZooBuilder, ZooSpec  # noqa: E402


def test_tiny_zoo_builds_and_loads(tiny_cifar: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        tmp_path,
        tiny_cifar,
        architecture="vgg16_cifar",
        corruptions=["gaussian_noise", "contrast"],
        jobs=2,  # the parallel fine-tuning path
    )
    ZooBuilder(spec, progress=False).run()
    folder = ModelFolder.load(spec.export)
    assert sorted(folder.signature_names()) == ["contrast", "gaussian_noise"]
    assert not folder.refused
    m = folder.config["metrics"]
    assert set(m["corruptions"]) == {"gaussian_noise", "contrast"}
    assert 0 <= m["clean_accuracy"] <= 1 and m["test_images"] == 64
    assert all(0 <= v <= 1 for row in m["corruptions"].values() for v in row.values())
    # the detector step: trained on the backbone, its "auto" rule chosen with the signatures
    det = folder.config["detector"]
    assert "cost" in det and det["rule_selection"]["chosen"] in det["rule_selection"]["summary"]
    from rws_hub.inference.engine import Engine

    answer = Engine.from_folder(spec.export, device="cpu").classify(
        torch.rand(1, 3, 32, 32), "auto"
    )
    assert answer[0]["auto"] and answer[0]["detected"]
    sig = folder.signatures["gaussian_noise"]
    assert sig.layers == 7 and len(sig.tensors) == 14  # weight + bias of 7 conv layers
    assert sig.quantization and sig.quantization["bits"] == 8
    # the training it took, measured from the runs' logs, is in the config and the card
    compute = folder.config["compute"]
    assert compute["device"] == "cpu" and compute["finetune_runs"] == 3
    assert compute["pretrain_minutes"] >= 0 and compute["finetune_minutes"] >= 0
    card = (Path(spec.export) / "README.md").read_text()
    assert "## Training compute" in card and "the 3 fine-tunes" in card
    # a second run finds every step done and changes nothing
    manifest = (Path(spec.export) / "manifest.json").read_text()
    ZooBuilder(spec, progress=False).run(("pretrain", "clean", "robust", "extract", "evaluate"))
    assert (Path(spec.export) / "manifest.json").read_text() == manifest
    # another test-set size measures again and keeps the earlier measurement aside
    spec.eval_limit = 32
    ZooBuilder(spec, progress=False).run(("evaluate", "export"))
    assert (Path(spec.work) / "eval-64.json").is_file()
    assert ModelFolder.load(spec.export).config["metrics"]["test_images"] == 32
    # the folder keeps the evaluation record behind its metrics (and the manifest covers it)
    record = json.loads((Path(spec.export) / "eval.json").read_text())
    assert record["images"] == 32 and set(record["robust_models"]) == {"gaussian_noise", "contrast"}
    assert "eval.json" in json.loads((Path(spec.export) / "manifest.json").read_text())["files"]
    # the backbone of the folder is the clean fine-tuned model
    x = torch.rand(2, 3, 32, 32)
    assert folder.model(x).shape == (2, 10)
    _signatures_change_storage(spec, record)


def _signatures_change_storage(spec: ZooSpec, before: dict) -> None:
    """Signatures extracted again in another storage (low-rank): the evaluate step measures the
    patched numbers again (as a fresh evaluation would), keeps the backbone's own, and the
    exported folder ships the new storage."""
    work = Path(spec.work)
    (work / "signatures").rename(work / "signatures-int8")
    spec.quantization = "rank2-int8"
    remeasured: list[str] = []
    own = ZooBuilder._remeasure_own

    def spy(self: ZooBuilder, backbone: dict, test: object) -> None:
        remeasured.append(self.spec.name)
        own(self, backbone, test)

    ZooBuilder._remeasure_own = spy  # type: ignore[method-assign]
    try:
        ZooBuilder(spec, progress=False).run(("extract", "evaluate", "export"))
    finally:
        ZooBuilder._remeasure_own = own  # type: ignore[method-assign]
    assert remeasured == [spec.name]  # the patched numbers only, once
    after = json.loads((work / "eval.json").read_text())
    sev = str(spec.severity)
    for c in spec.corruptions:
        assert (
            after["backbone"]["corrupted"][c][sev]["none"]
            == (before["backbone"]["corrupted"][c][sev]["none"])
        )
    assert after["robust_models"] == before["robust_models"]
    assert after["signatures_sha256"] != before["signatures_sha256"]
    # the same numbers as a measurement from scratch with the new files
    (work / "eval.json").rename(work / "eval-remeasured.json")
    fresh = ZooBuilder(spec, progress=False).evaluate()
    assert fresh["backbone"] == after["backbone"]
    folder = ModelFolder.load(spec.export)
    sig = folder.signatures["contrast"]
    assert sig.factors and all(f.rank <= 2 for f in sig.factors.values())
    assert folder.config["recipe"]["quantization"] == "rank2-int8"
    # the export kept the detector made before; its step chooses the rule again for the new set
    chosen = folder.config["detector"]["rule_selection"]
    assert chosen["signatures_sha256"] == before["signatures_sha256"]
    ZooBuilder(spec, progress=False).run(("detector",))
    chosen = ModelFolder.load(spec.export).config["detector"]["rule_selection"]
    assert chosen["signatures_sha256"] == after["signatures_sha256"]


def test_zoo_cli_refuses_unknown_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert rws(["zoo", "build", "--steps", "pretrain,bake"]) == 2
    assert "bake" in capsys.readouterr().err


def test_entry_recipes_and_rebuild_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry's recipe is the starting point of its spec; its rebuild command names the entry
    and only what differs from that recipe; other names start from the plain defaults."""
    from rws_hub.zoo import entries, pipeline

    extra = entries.ZooEntry(
        name="cifar10-test-bn",
        entrypoint="cifar10_test_bn",
        architecture="vgg16_bn_cifar",
        width=0.25,
        dataset="cifar10",
        repo_id="rws-hub/cifar10-test-bn",
        summary="a test entry",
        recipe={"pretrain_epochs": 20, "label_smoothing": 0.1},
    )
    monkeypatch.setitem(entries.ENTRIES, extra.name, extra)
    spec = ZooSpec.for_entry("cifar10-test-bn")
    assert (spec.architecture, spec.width, spec.pretrain_epochs, spec.label_smoothing) == (
        "vgg16_bn_cifar",
        0.25,
        20,
        0.1,
    )
    assert (spec.work, spec.export) == ("runs/zoo/cifar10-test-bn", "model-store/cifar10-test-bn")
    assert spec.rebuild_command() == "rws zoo build --name cifar10-test-bn"
    changed = ZooSpec.for_entry("cifar10-test-bn", pretrain_epochs=30, jobs=1)
    assert changed.rebuild_command() == (
        "rws zoo build --name cifar10-test-bn --pretrain-epochs 30 --jobs 1"
    )
    default = ZooSpec.for_entry()
    assert default.name == pipeline.DEFAULT_ENTRY.name
    # the command names the entry even when it is the default (defaults change; cards stay)
    assert default.rebuild_command() == f"rws zoo build --name {pipeline.DEFAULT_ENTRY.name}"
    plain = ZooSpec.for_entry("mine", width=0.125)
    assert plain.architecture == ZooSpec().architecture and plain.width == 0.125
    assert (plain.work, plain.export) == ("runs/zoo/mine", "model-store/mine")
    assert plain.rebuild_command().startswith("rws zoo build --name mine")
    # mixed precision is a recipe option of every training stage (evaluation stays float32)
    bf16 = ZooSpec.for_entry("cifar10-test-bn", precision="bf16", pretrained="pre.safetensors")
    stages = [bf16.pretrain_config(), bf16.head_config(), bf16.clean_config()]
    stages.append(bf16.robust_config("fog"))
    assert {c.precision for c in stages} == {"bf16"}
    assert "--precision bf16" in bf16.rebuild_command()


def test_zoo_storage_low_rank() -> None:
    """``--quantization rank<r>-int<b>`` stores each conv delta as r-rank factors in codes;
    vectors (biases, batch norm) stay per-channel codes; the values are the factors' product."""
    from rws_hub.core.signature import Signature
    from rws_hub.zoo.pipeline import quantize_signature

    g = torch.Generator().manual_seed(0)
    sig = Signature(
        "fog",
        {
            "c.weight": torch.randn(32, 16, 3, 3, generator=g),
            "c.bias": torch.randn(32, generator=g),
        },
    )
    low = quantize_signature(sig, "rank4-int8")
    assert low.nbytes < quantize_signature(sig, "int8").nbytes / 3
    w = low.tensors["c.weight"]
    assert w.shape == (32, 16, 3, 3) and torch.linalg.matrix_rank(w.reshape(32, -1)) == 4
    assert torch.allclose(low.tensors["c.bias"], sig.tensors["c.bias"], atol=0.05)


def _tiny_hundred_classes(folder: Path) -> Path:
    """A Tiny-ImageNet-32 layout (train.npz, val.npz) with 100 classes, learnable by colour."""
    import numpy as np

    folder.mkdir()
    for name, n, seed in (("train.npz", 400, 0), ("val.npz", 100, 1)):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 100, n)
        base = np.stack([(y * 37) % 256, (y * 91) % 256, (y * 13) % 256], axis=1)
        x = base[:, None, None, :] + rng.normal(0, 20, (n, 32, 32, 3))
        np.savez(folder / name, x=np.clip(x, 0, 255).astype(np.uint8), y=y.astype(np.int64))
    return folder


def test_an_entry_on_another_data_set_shares_the_lineage(tiny_cifar: Path, tmp_path: Path) -> None:
    """``pretrained``: θ_pre is adopted byte for byte, a new 100-way head is trained on its frozen
    trunk, the folder names the same lineage without shipping θ_pre, and the other entry's
    signatures patch the new backbone."""
    from safetensors.torch import load_file

    import rws_hub
    from rws_hub.core.lineage import fingerprint
    from rws_hub.datasets.arrays import load_images
    from rws_hub.zoo.evaluation import accuracy
    from rws_hub.zoo.pipeline import load_state_model

    common = dict(architecture="vgg16_bn_cifar", corruptions=["fog", "contrast"], layers=3)
    cifar = tiny_spec(
        tmp_path,
        tiny_cifar,
        name="tiny-c10",
        work=str(tmp_path / "c10"),
        export=str(tmp_path / "c10-folder"),
        **common,
    )
    ZooBuilder(cifar, progress=False).run()
    pre = tmp_path / "c10/pretrain/final.safetensors"
    tin = tiny_spec(
        tmp_path,
        _tiny_hundred_classes(tmp_path / "tin-data"),
        name="tiny-tin",
        dataset="tinyimagenet32",
        work=str(tmp_path / "tin"),
        export=str(tmp_path / "tin-folder"),
        pretrained=str(pre),
        head_epochs=1,
        **common,
    )
    ZooBuilder(tin, progress=False).run()
    assert (tmp_path / "tin/pretrain/final.safetensors").read_bytes() == pre.read_bytes()
    theta_pre, head = load_file(str(pre)), load_file(str(tmp_path / "tin/head/final.safetensors"))
    assert head["classifier.weight"].shape[0] == 100
    for k, v in theta_pre.items():  # the trunk (batch-norm statistics too) is frozen
        if not k.startswith("classifier."):
            assert torch.equal(head[k], v), k
    c10 = ModelFolder.load(cifar.export)
    folder = ModelFolder.load(tin.export)
    assert folder.config["lineage"] == c10.config["lineage"] == fingerprint(theta_pre)
    assert not folder.has_pretrained() and len(folder.config["classes"]) == 100
    assert "signature_sets" not in folder.config and folder.refused == {}  # θ_pre of a run
    examples = [p.name for p in folder.example_files()]  # its own data set's, for the demo
    assert examples and all(p.endswith(".png") for p in examples)
    assert folder.config["mean"] == pytest.approx(theta_pre["normalize.mean"].flatten().tolist())
    model = folder.model
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        clean = model(x)
        with rws_hub.patch(model, {c10.signatures["fog"]: 1.0}):  # transferred: same lineage
            moved = model(x)
    assert clean.shape == (4, 100) and not torch.allclose(clean, moved)
    # θ_pre came from a model folder: its signature set is referenced, not copied
    tin2 = dataclasses.replace(
        tin,
        pretrained=str(tmp_path / "c10-folder/pretrained.safetensors"),
        export=str(tmp_path / "tin-folder-2"),
    )
    assert "transferred" not in json.loads((tmp_path / "tin/eval.json").read_text())
    ZooBuilder(tin2, progress=False).run(("evaluate", "export"))
    linked = ModelFolder.load(tin2.export)
    # the referenced set's signature of each corruption, measured on this backbone
    for c in ("fog", "contrast"):
        row = linked.config["metrics"]["corruptions"][c]
        assert 0 <= row["transferred_ra"] <= 1 and 0 <= row["transferred_ta"] <= 1
    model = load_state_model(tin2, tmp_path / "tin/clean/final.safetensors")
    with rws_hub.patch(model, {c10.signatures["fog"]: 1.0}):
        want = accuracy(model, load_images(tin2.data, "test", dataset="tinyimagenet32").subset(64))
    assert linked.config["metrics"]["corruptions"]["fog"]["transferred_ta"] == round(want / 100, 6)
    assert "referenced entry's signature" in (tmp_path / "tin-folder-2/README.md").read_text()
    assert linked.config["signature_sets"] == [
        {"folder": "../c10-folder", "lineage": fingerprint(theta_pre), "prefix": "cifar10."}
    ]
    assert sorted(linked.signature_names()) == [
        "cifar10.contrast",
        "cifar10.fog",
        "contrast",
        "fog",
    ]
    assert torch.equal(
        linked.signatures["cifar10.fog"].tensors["features.0.weight"],
        c10.signatures["fog"].tensors["features.0.weight"],
    )
    # the referenced set re-exported in another storage: the transferred numbers follow it
    (tmp_path / "c10/signatures").rename(tmp_path / "c10/signatures-int8")
    cifar.quantization = "rank2-int8"
    ZooBuilder(cifar, progress=False).run(("extract", "evaluate", "export"))
    low = ModelFolder.load(cifar.export).signatures["fog"]
    assert low.factors
    ZooBuilder(tin2, progress=False).run(("evaluate", "export"))
    model = load_state_model(tin2, tmp_path / "tin/clean/final.safetensors")
    with rws_hub.patch(model, {low: 1.0}):
        want = accuracy(model, load_images(tin2.data, "test", dataset="tinyimagenet32").subset(64))
    relinked = ModelFolder.load(tin2.export)
    assert relinked.config["metrics"]["corruptions"]["fog"]["transferred_ta"] == round(
        want / 100, 6
    )
    assert relinked.signatures["cifar10.fog"].factors


def test_a_resnet_entry_builds_end_to_end(tiny_cifar: Path, tmp_path: Path) -> None:
    """Every step on a batch-norm ResNet (the planned ResNet-20 entry's architecture): units
    traced through residual blocks, signatures with batch-norm statistics, the detector on its
    16-channel stem, and a folder that serves ``"auto"``."""
    import rws_hub
    from rws_hub.inference.engine import Engine

    spec = tiny_spec(
        tmp_path, tiny_cifar, architecture="resnet20_cifar", width=0.5, corruptions=["fog"]
    )
    ZooBuilder(spec, progress=False).run()
    folder = ModelFolder.load(spec.export)
    sig = folder.signatures["fog"]
    assert any(t.endswith("running_var") for t in sig.tensors)
    assert "detector" in folder.config and folder.config["rebuild"].startswith("rws zoo build")
    engine = Engine.from_folder(spec.export, device="cpu")
    x = torch.rand(2, 3, 32, 32)
    assert engine.classify(x, "auto")[0]["auto"]
    with torch.no_grad(), rws_hub.patch(folder.model, {sig: 1.0}):
        want = folder.model(x)
    got = engine.predict(x, ["fog:1", "fog:1"])
    assert torch.allclose(got, want, atol=1e-4)
    # a detector made for another backbone is neither installed nor reused
    from safetensors.torch import load_file, save_file

    state = load_file(str(Path(spec.work) / "detector/detector.safetensors"))
    state["conv.weight"] = state["conv.weight"] + 1.0
    save_file(state, str(Path(spec.work) / "detector/detector.safetensors"))
    ZooBuilder(spec, progress=False).run(("export",))
    assert "detector" not in ModelFolder.load(spec.export).config
    with pytest.raises(ValueError, match="another backbone"):
        ZooBuilder(spec, progress=False).run(("detector",))


def test_training_compute_reads_the_median_throughput(tmp_path: Path) -> None:
    """A paused interval (one slow log line) does not inflate the measured minutes."""
    from rws_hub.io.card import model_card
    from rws_hub.zoo.pipeline import training_compute

    def run(folder: Path, speeds: list[float], device: str = "cpu") -> None:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"batch_size": 100, "device": device}))
        rows = [{"step": 10 * (i + 1), "images_per_s": v} for i, v in enumerate(speeds)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    run(tmp_path / "pretrain", [100.0, 100.0, 1.0, 100.0, 100.0])  # 50 steps x 100 images
    run(tmp_path / "clean", [50.0])
    run(tmp_path / "robust" / "fog", [50.0, 50.0])
    c = training_compute(tmp_path)
    assert c["pretrain_minutes"] == round(50 * 100 / 100 / 60, 2)
    assert c["finetune_runs"] == 2
    assert c["finetune_minutes"] == round((10 * 100 / 50 + 20 * 100 / 50) / 60, 2)
    card = model_card({"name": "x", "architecture": "vgg16_cifar", "classes": ["a"], "compute": c})
    assert "## Training compute" in card and "the 2 fine-tunes" in card
    assert training_compute(tmp_path / "nothing") == {"method": c["method"]}
    assert "## Training compute" not in model_card({"name": "x", "architecture": "a"})
