"""How detector probabilities become a mix (rws_hub.detect.rules): the rule kinds, and
AutoPatcher as the engine's hook: classify, the REST parser path and a model folder that
ships a detector (auto_patcher_from_folder via Engine.from_folder)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rws_hub.core.lineage import fingerprint
from rws_hub.core.mix import Mix
from rws_hub.datasets import default_dataset
from rws_hub.detect.model import CLEAN, detector_classes
from rws_hub.detect.rules import AutoPatcher, AutoRule, rule_mix
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


# --------------------------------------------------------------------------------------------
# the engine, the REST parser and the folder


def test_engine_auto_reports_detected_and_applied(backbone, tiny_detector, signatures_for) -> None:
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


def test_rest_request_with_auto(backbone, tiny_detector, signatures_for) -> None:
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


def test_folder_ships_the_detector(backbone, tiny_detector, signatures_for, tmp_path: Path) -> None:
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
