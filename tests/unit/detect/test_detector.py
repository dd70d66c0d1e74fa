"""The corruption detector and "auto": the mix rule, the detector interface, persistence,
training (resumable), the engine / REST-parser path and the CLI. Tiny models, tiny data."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rws_hub.archs import create_model
from rws_hub.cli import main
from rws_hub.core.lineage import fingerprint
from rws_hub.core.mix import Mix
from rws_hub.core.signature import Signature
from rws_hub.datasets import default_dataset
from rws_hub.detect.detector import (
    CLEAN,
    AutoPatcher,
    AutoRule,
    CorruptionDetector,
    DetectorTrainConfig,
    choose_rule,
    detector_classes,
    image_features,
    load_detector,
    measure_cost,
    rule_mix,
    save_detector,
    train_detector,
)
from rws_hub.errors import ArtifactError
from rws_hub.inference.engine import Engine
from rws_hub.inference.parsing import RequestParser
from rws_hub.io.card import model_card
from rws_hub.io.folder import ModelFolder, add_detector, save_model_folder, verify_folder

CLASSES = detector_classes()


def probs(**kw: float) -> dict[str, float]:
    """A probability table over the 20 classes: given entries, the rest share what is left."""
    rest = (1.0 - sum(kw.values())) / (len(CLASSES) - len(kw))
    return {c: kw.get(c, rest) for c in CLASSES}


# --------------------------------------------------------------------------------------------
# the rule


def test_top1_rule_picks_the_top_corruption_above_threshold() -> None:
    rule = AutoRule("top1", threshold=0.5)
    assert rule_mix(probs(fog=0.8), rule) == Mix({"fog": 1.0})
    assert rule_mix(probs(fog=0.45, snow=0.3), rule) == Mix()  # below threshold
    assert rule_mix(probs(fog=0.45, snow=0.3), AutoRule("top1", 0.4)) == Mix({"fog": 1.0})


def test_clean_on_top_gives_the_empty_mix() -> None:
    assert rule_mix(probs(clean=0.6, fog=0.39), AutoRule("top1", 0.0)).is_empty
    assert rule_mix(probs(clean=0.9), AutoRule("weighted", 0.5)).is_empty
    # weighted with a clean veto: clean >= veto -> nothing, even with corruptions above threshold
    p = probs(clean=0.55, fog=0.3)
    assert rule_mix(p, AutoRule("weighted", 0.2)) == Mix({"fog": 0.3})
    assert rule_mix(p, AutoRule("weighted", 0.2, clean_veto=0.5)).is_empty
    q = probs(fog=0.6, clean=0.35)
    assert rule_mix(q, AutoRule("top1", 0.5)) == Mix({"fog": 1.0})
    assert rule_mix(q, AutoRule("top1", 0.5, clean_veto=0.3)).is_empty


def test_strength_alphas_and_available_signatures() -> None:
    p = probs(fog=0.7, snow=0.2)
    assert rule_mix(p, AutoRule("top1", 0.5, strength="probability")) == Mix({"fog": 0.7})
    assert rule_mix(p, AutoRule("top1", 0.5), alphas={"fog": 0.5}) == Mix({"fog": 0.5})
    # fog has no signature: top1 falls to the next class (snow, 0.2 < 0.5 -> nothing; 0.1 ok)
    assert rule_mix(p, AutoRule("top1", 0.5), available={"snow"}).is_empty
    assert rule_mix(p, AutoRule("top1", 0.1), available={"snow"}) == Mix({"snow": 1.0})
    w = rule_mix(probs(fog=0.5, snow=0.3, contrast=0.15), AutoRule("weighted", 0.1, top_k=2))
    assert w == Mix({"fog": 0.5, "snow": 0.3})


def test_rule_validation_and_json_round_trip() -> None:
    for bad in (
        {"kind": "median"},
        {"threshold": 1.5},
        {"strength": "double"},
        {"top_k": 0},
    ):
        with pytest.raises(ValueError):
            AutoRule(**bad)
    rule = AutoRule("weighted", 0.2, top_k=2, clean_veto=0.6)
    assert AutoRule.from_json(json.loads(json.dumps(rule.to_json()))) == rule
    assert rule.label == "weighted2@0.2,veto0.6"
    assert AutoRule("top1", 0.3, clean_veto=0.3).label == "top1@0.3,veto0.3"


def test_choose_rule_respects_the_clean_tolerance() -> None:
    rules = {"a": AutoRule("top1", 0.0), "b": AutoRule("top1", 0.9)}
    summary = {
        "clean": {"none": 90.0, "a": 88.0, "b": 89.8},
        "all": {"none": 60.0, "a": 75.0, "b": 70.0},
        "sev5": {"none": 40.0, "a": 70.0, "b": 65.0},
    }
    assert choose_rule(summary, rules) == "b"  # a costs 2 points clean
    assert choose_rule(summary, rules, clean_tolerance=3.0) == "a"


# --------------------------------------------------------------------------------------------
# the detector


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vgg16_cifar", width=0.125).eval()


def tiny_detector(backbone: torch.nn.Module, prefer: str | None = None) -> CorruptionDetector:
    """An untrained detector on ``backbone``'s conv1; ``prefer`` biases it to one class."""
    torch.manual_seed(1)
    det = CorruptionDetector(conv_channels=8, hidden=16)
    det.set_backbone_conv(backbone)
    if prefer is not None:
        with torch.no_grad():
            det.head[-1].bias[det.classes.index(prefer)] = 50.0
    return det.eval()


def test_detector_shapes_probabilities_and_features(backbone) -> None:
    det = tiny_detector(backbone)
    x = torch.rand(5, 3, 32, 32)
    assert image_features(x).shape == (5, 40)
    assert det.raw_features(x).shape == (5, det.num_features) == (5, 4 * 8 + 40)
    p = det.probabilities(x)
    assert p.shape == (5, 20)
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    assert (p >= 0).all()
    assert det.classes[0] == CLEAN and len(set(det.classes)) == 20
    # conv1 is the backbone's: at stride 2 its outputs are the backbone's at even positions
    conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        full = conv(backbone.normalize(x))
        assert torch.allclose(det.conv(det.normalize(x)), full[..., ::2, ::2], atol=1e-5)


def test_image_features_see_corruptions() -> None:
    """Noise raises the Laplacian energy; blur lowers it (features 11: log mean |laplacian|)."""
    from rws_hub.datasets.corruptions import corrupt

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 0.2 + 0.4
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # smooth-ish images
    lap = image_features(x)[:, 11]
    noisy = image_features(corrupt(x, "gaussian_noise", 5, generator=g))[:, 11]
    blurred = image_features(corrupt(x, "defocus_blur", 5, generator=g))[:, 11]
    assert (noisy > lap).all() and (blurred < lap).all()


def test_save_load_round_trip_and_refusals(backbone, tmp_path: Path) -> None:
    det = tiny_detector(backbone)
    with torch.no_grad():
        det.feature_mean.normal_()
    save_detector(tmp_path / "d", det, {"rule": AutoRule("top1", 0.7).to_json()})
    loaded, cfg = load_detector(tmp_path / "d")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.probabilities(x), det.probabilities(x))
    assert cfg["rule"]["threshold"] == 0.7 and cfg["classes"] == CLASSES
    state = det.state_dict()
    # a state from a differently sized head is refused, naming the tensor
    with pytest.raises(ArtifactError, match="shape"):
        CorruptionDetector.from_spec(det.spec() | {"hidden": 32}, state)
    with pytest.raises(ArtifactError, match="missing"):
        CorruptionDetector.from_spec(
            det.spec(), {k: v for k, v in state.items() if "head.0" not in k}
        )
    with pytest.raises(ArtifactError, match="kind"):
        CorruptionDetector.from_spec(det.spec() | {"kind": "resnet"}, state)
    with pytest.raises(ArtifactError, match="feature version"):
        CorruptionDetector.from_spec(det.spec() | {"feature_version": 99}, state)
    # a backbone whose conv1 does not fit
    with pytest.raises(ValueError, match="first conv"):
        CorruptionDetector(conv_channels=32).set_backbone_conv(backbone)


def test_cost_is_a_small_fraction_of_the_backbone() -> None:
    model = create_model("vgg16_cifar", width=0.5).eval()
    det = CorruptionDetector(conv_channels=32)
    det.set_backbone_conv(model)
    cost = measure_cost(det, model, batch=32, repeats=1)
    assert 0 < cost["flops_ratio"] < 0.02
    assert cost["backbone_flops"] > 100e6


# --------------------------------------------------------------------------------------------
# the engine, the REST parser and the folder


def signatures_for(model: torch.nn.Module, names: tuple[str, ...]) -> dict[str, Signature]:
    gen = torch.Generator().manual_seed(3)
    sd = model.state_dict()
    tensors = ("features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias")
    return {
        n: Signature(
            n, {t: 0.1 * torch.randn(sd[t].shape, generator=gen) for t in tensors}, layers=2
        )
        for n in names
    }


def test_engine_auto_reports_detected_and_applied(backbone) -> None:
    sigs = signatures_for(backbone, ("fog", "snow"))
    x = torch.rand(4, 3, 32, 32)
    for prefer, expected in (("fog", Mix({"fog": 1.0})), (CLEAN, Mix())):
        patcher = AutoPatcher(tiny_detector(backbone, prefer), AutoRule("top1", 0.5))
        engine = Engine(
            backbone, sigs, classes=default_dataset().classes, device="cpu", detector=patcher
        )
        answers = engine.classify(x, "auto", top_k=3)
        for a in answers:
            assert a["auto"] is True
            assert Mix(a["mix"]) == expected
            assert a["detected"][0]["class"] == prefer
            assert a["detected"][0]["probability"] > 0.99
            assert len(a["detected"]) == 3
        # the auto answer is the answer under the detected mix; explicit mixes report no detection
        ref = torch.softmax(engine.predict(x, expected), 1)
        assert answers[0]["predictions"][0]["probability"] == pytest.approx(
            float(ref[0].max()), abs=1e-5
        )
        assert "detected" not in engine.classify(x, "fog:1")[0]
    # mixed batch: auto rows and explicit rows side by side
    patcher = AutoPatcher(tiny_detector(backbone, "snow"), AutoRule("top1", 0.5))
    engine = Engine(backbone, sigs, device="cpu", detector=patcher)
    out = engine.classify(x[:2], ["auto", None])
    assert out[0]["mix"] == {"snow": 1.0} and "detected" in out[0]
    assert out[1]["mix"] == {} and "detected" not in out[1]


def test_rest_request_with_auto(backbone) -> None:
    """The REST path: a JSON request with "signatures": "auto" parsed for the engine, then
    classified; the answer says what was detected and applied."""
    sigs = signatures_for(backbone, ("fog", "snow"))
    patcher = AutoPatcher(tiny_detector(backbone, "fog"))
    engine = Engine(backbone, sigs, device="cpu", detector=patcher)
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="PNG")
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "signatures": "auto"}
    req = RequestParser.for_engine(engine).parse(body)
    assert req.mix == "auto"
    answer = engine.classify(req.image[None], [req.mix], top_k=[req.top_k])[0]
    assert answer["mix"] == {"fog": 1.0} and answer["detected"][0]["class"] == "fog"


def test_folder_ships_the_detector(backbone, tmp_path: Path) -> None:
    sigs = signatures_for(backbone, ("fog", "snow"))
    root = save_model_folder(
        tmp_path / "m",
        model=backbone,
        config={"architecture": "vgg16_cifar", "width": 0.125, "lineage": fingerprint(backbone)},
        signatures=sigs,
    )
    assert Engine.from_folder(root, device="cpu").detector is None
    det = tiny_detector(backbone, "snow")
    add_detector(root, det.state_dict(), det.spec() | {"rule": AutoRule("top1", 0.3).to_json()})
    assert verify_folder(root) == {}
    card = (root / "README.md").read_text()  # the generated card follows config.json
    assert card == model_card(ModelFolder.read_config(root)) and "rws detector train" in card
    engine = Engine.from_folder(root, device="cpu")
    assert engine.describe()["auto"] is True
    assert isinstance(engine.detector, AutoPatcher) and engine.detector.rule.threshold == 0.3
    assert engine.classify(torch.rand(2, 3, 32, 32), "auto")[1]["mix"] == {"snow": 1.0}
    # a damaged detector file is refused: the engine loads, without "auto"
    path = root / "detector.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    engine = Engine.from_folder(root, device="cpu")
    assert engine.detector is None and "detector.safetensors" in engine.refused
    # and a damaged folder is not re-blessed by add_detector
    (root / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="does not verify"):
        add_detector(root, det.state_dict(), det.spec())
    assert ModelFolder.read_config(root)["detector"]["rule"]["threshold"] == 0.3


# --------------------------------------------------------------------------------------------
# training and the CLI


def test_training_learns_and_resumes(backbone, tiny_cifar: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    cfg = DetectorTrainConfig(
        data=str(tiny_cifar), images=400, heldout=200, epochs=2, hidden=32, chunk=200, seed=0
    )
    det, config = train_detector(backbone, tmp_path / "d", cfg, log=logs.append)
    assert (tmp_path / "d" / "detector.safetensors").is_file()
    assert any("train: samples 400/400" in line for line in logs)
    # running longer resumes: cached samples, last epoch's checkpoint
    logs.clear()
    cfg.epochs = 30
    det, config = train_detector(backbone, tmp_path / "d", cfg, log=logs.append)
    assert not any("samples" in line for line in logs)
    assert "resumed at epoch 2" in logs
    acc = config["accuracy"]
    assert set(acc) - {"heldout_samples", "severities", "mean"} <= set(CLASSES)
    assert acc["mean"] > 1.5 / 20  # learns something beyond chance on 200 held-out samples
    loaded, _ = load_detector(tmp_path / "d")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.probabilities(x), det.probabilities(x))


def test_cli_train_eval_install(backbone, tiny_cifar: Path, tmp_path: Path, capsys) -> None:
    sigs = signatures_for(backbone, ("fog", "gaussian_noise"))
    root = save_model_folder(
        tmp_path / "m",
        model=backbone,
        config={"architecture": "vgg16_cifar", "width": 0.125, "lineage": fingerprint(backbone)},
        signatures=sigs,
    )
    out = tmp_path / "det"
    common = ["--folder", str(root), "--data", str(tiny_cifar)]
    assert main(["detector", "train", *common, "--out", str(out), "--images", "200",
                 "--heldout", "40", "--epochs", "2", "--hidden", "16"]) == 0  # fmt: skip
    assert "of the backbone's FLOPs" in capsys.readouterr().out
    assert "cost" in json.loads((out / "detector.json").read_text())
    assert Engine.from_folder(root, device="cpu").detector is None
    assert main(["detector", "install", "--folder", str(root), "--detector", str(out)]) == 0
    assert Engine.from_folder(root, device="cpu").detector is not None
    assert main(["detector", "eval", *common, "--detector", str(out), "--start", "200",
                 "--per-cell", "1", "--clean", "20", "--choose", "--install"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "| none |" in text and "best rule:" in text
    config = ModelFolder.read_config(root)["detector"]
    assert config["rule_selection"]["chosen"] in text and "cost" in config
    assert verify_folder(root) == {}
    engine = Engine.from_folder(root, device="cpu")
    answer = engine.classify(torch.rand(1, 3, 32, 32), "auto")[0]
    assert answer["auto"] and len(answer["detected"]) == 3
