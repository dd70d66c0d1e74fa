"""Measuring the detector and "auto" (rws_hub.detect.evaluation): choosing a rule, and the
CLI's train -> eval -> choose -> install path on a tiny model and tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rws_hub.cli import main
from rws_hub.core.lineage import fingerprint
from rws_hub.detect.evaluation import choose_rule
from rws_hub.detect.rules import AutoRule
from rws_hub.inference.engine import Engine
from rws_hub.io.folder import ModelFolder, save_model_folder, verify_folder


def test_choose_rule_respects_the_clean_tolerance() -> None:
    rules = {"a": AutoRule("top1", 0.0), "b": AutoRule("top1", 0.9)}
    summary = {
        "clean": {"none": 90.0, "a": 88.0, "b": 89.8},
        "all": {"none": 60.0, "a": 75.0, "b": 70.0},
        "sev5": {"none": 40.0, "a": 70.0, "b": 65.0},
    }
    assert choose_rule(summary, rules) == "b"  # a costs 2 points clean
    assert choose_rule(summary, rules, clean_tolerance=3.0) == "a"


def test_cli_train_eval_install(
    backbone, signatures_for, tiny_cifar: Path, tmp_path: Path, capsys
) -> None:
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
    stored = (out / "detector.json").read_bytes()
    assert main(["detector", "eval", *common, "--detector", str(out), "--start", "200",
                 "--per-cell", "1", "--clean", "20"]) == 0  # fmt: skip
    assert (out / "detector.json").read_bytes() == stored  # measured, not stored: no --choose
    assert "rule_selection" not in json.loads(stored)
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
