"""Making a model folder's detector: train it and record its cost, then choose its ``"auto"``
rule by measurement (what ``rws detector train`` / ``eval --choose`` and the zoo's ``detector``
step run).

* :func:`train_and_record`: :func:`~rws_hub.detect.training.train_detector` (resumable), then
  the detector's cost next to the backbone and the fingerprint of the conv1 it copied, stored in
  its ``detector.json``.
* :func:`select_rule`: every candidate rule measured on held-out images with the folder's
  signatures (:func:`~rws_hub.detect.evaluation.evaluate_auto`); the best one within the clean
  tolerance goes into the detector's config with the record of how it was chosen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from rws_hub.datasets.arrays import ImageArrays
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS
from rws_hub.detect.cost import measure_cost
from rws_hub.detect.evaluation import (
    CANDIDATE_RULES,
    choose_rule,
    evaluate_auto,
    make_cells,
    summarize,
)
from rws_hub.detect.model import CorruptionDetector, save_detector
from rws_hub.detect.rules import AutoRule
from rws_hub.detect.training import DetectorTrainConfig, train_detector

__all__ = ["RuleSelection", "conv1_sha256", "select_rule", "train_and_record"]


def conv1_sha256(det: CorruptionDetector) -> str:
    """sha256 of the backbone conv1 weights and bias the detector carries (a frozen copy)."""
    conv = det.conv
    data = conv.weight.detach().cpu().numpy().tobytes() + conv.bias.detach().cpu().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def train_and_record(
    backbone: nn.Module,
    out: str,
    cfg: DetectorTrainConfig,
    *,
    source: str,
    log: Any = print,
) -> tuple[CorruptionDetector, dict[str, Any]]:
    """Train (or resume) a detector in ``out`` for ``backbone``, measure its cost next to the
    backbone and store both, with ``source`` (where the backbone came from) and the conv1
    fingerprint, in ``out/detector.json``. Returns the detector and that config."""
    det, config = train_detector(backbone, out, cfg, log=log)
    cost = measure_cost(det, backbone)
    if log:
        log(
            f"cost: {cost['flops_ratio']:.2%} of the backbone's FLOPs, "
            f"{cost['time_ratio']:.2%} of its time (batch {cost['batch']}, "
            f"{cost['threads']} thread(s))"
        )
    stored = dict(config)
    stored["cost"] = cost
    stored["backbone"] = {"source": source, "conv1_sha256": conv1_sha256(det)}
    save_detector(out, det, stored)
    return det, stored


@dataclass
class RuleSelection:
    """Where and how the ``"auto"`` rule is measured: held-out images of ``split`` from
    ``start`` on (default: image 45000, or 90% into a smaller split), ``clean`` clean images
    and ``per_cell`` images per corruption and severity 1-5."""

    split: str = "train"
    start: int | None = None
    per_cell: int = 20
    clean: int = 1000
    seed: int = 0
    clean_tolerance: float = 0.5

    def first(self, data: ImageArrays) -> int:
        """The first held-out image of ``data``."""
        return self.start if self.start is not None else min(45000, int(0.9 * len(data)))


def select_rule(
    engine: Any,
    det: CorruptionDetector,
    config: dict[str, Any],
    data: ImageArrays,
    selection: RuleSelection | None = None,
    *,
    rules: Mapping[str, AutoRule] | None = None,
    log: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, dict[str, float]], dict[str, Any]]:
    """Measure none / oracle / each rule with ``engine`` (the folder's backbone and signatures)
    on held-out ``data``; store the best rule and how it was chosen (``extra`` added to the
    record) in ``config`` (``rule``, ``rule_selection``; the caller saves it). Returns the
    chosen rule's label, the summary (accuracy per group and label, and the detector's) and the
    per-cell result."""
    sel = selection or RuleSelection()
    rules = dict(rules or CANDIDATE_RULES)
    start = sel.first(data)
    cells = make_cells(
        data,
        list(ALL_CORRUPTIONS),
        [1, 2, 3, 4, 5],
        per_cell=sel.per_cell,
        clean=sel.clean,
        start=start,
        seed=sel.seed + 17,
    )
    result = evaluate_auto(engine, det, cells, rules, log=log)
    labels = ["none", "oracle", *rules]
    summary = summarize(result, labels)
    best = choose_rule(summary, rules, clean_tolerance=sel.clean_tolerance)
    config["rule"] = rules[best].to_json()
    config["rule_selection"] = {
        "data": f"{sel.split} images #{start}+ (not used for training)",
        "clean_images": sel.clean,
        "images_per_cell": sel.per_cell,
        "criterion": "best mean accuracy over corruptions x severities 1-5 with clean "
        f"accuracy within {sel.clean_tolerance} point of unpatched",
        "chosen": best,
        "summary": {
            label: {
                g: round(summary[g][label], 2) if label in summary[g] else None
                for g in ("clean", "sev5", "all")
            }
            for label in labels
        },
        **dict(extra or {}),
    }
    return best, summary, result
