"""Measuring the detector and ``"auto"``: detector accuracy and the model's accuracy per test
cell under no patch, the oracle (the cell's own signature) and candidate rules; summaries and
the choice of a rule.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from rws_hub.core.mix import Mix
from rws_hub.core.patching import patch
from rws_hub.datasets.arrays import corrupt_blocks
from rws_hub.detect.model import CLEAN, CorruptionDetector
from rws_hub.detect.rules import AutoRule, rule_mix

__all__ = [
    "CANDIDATE_RULES",
    "CachedPredictor",
    "Cell",
    "PatchedModel",
    "choose_rule",
    "evaluate_auto",
    "make_cells",
    "per_class_accuracy",
    "summarize",
]


def per_class_accuracy(
    probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> dict[str, float]:
    """Top-1 detector accuracy per true class (fraction), plus ``"mean"`` over classes."""
    pred = probs.argmax(1)
    out = {}
    for i, c in enumerate(classes):
        rows = labels == i
        if rows.any():
            out[c] = float((pred[rows] == i).float().mean())
    out["mean"] = sum(out.values()) / max(1, len(out))
    return out


class CachedPredictor:
    """Top-1 predictions of an engine per ``(image key, mix)``, each computed once.

    Rules that agree on an image (e.g. "auto" and "oracle" choosing the same signature) share
    the forward pass; the engine runs every missing row with its own mix in batches.
    """

    def __init__(self, engine: Any, batch_size: int = 500) -> None:
        self.engine = engine
        self.batch_size = int(batch_size)
        self.cache: dict[tuple[Any, Mix], int] = {}
        self.forwards = 0

    def predict(
        self, keys: Sequence[Any], images: torch.Tensor, mixes: Sequence[Mix]
    ) -> torch.Tensor:
        """Predicted class per row of uint8 ``images`` under its mix."""
        todo = [
            i for i, (k, m) in enumerate(zip(keys, mixes, strict=True)) if (k, m) not in self.cache
        ]
        # Same-mix rows together so that the engine forms few, large groups.
        todo.sort(key=lambda i: str(mixes[i]))
        for s in range(0, len(todo), self.batch_size):
            rows = todo[s : s + self.batch_size]
            x = images[rows].float().div(255)
            pred = self.engine.predict(x, [mixes[i] for i in rows]).argmax(1).cpu().tolist()
            self.forwards += len(rows)
            for i, p in zip(rows, pred, strict=True):
                self.cache[(keys[i], mixes[i])] = int(p)
        return torch.tensor([self.cache[(k, m)] for k, m in zip(keys, mixes, strict=True)])


class PatchedModel:
    """An engine-like view of a module and its signatures, for :func:`evaluate_auto` where no
    serving engine is at hand (the zoo pipeline): ``predict(x, mixes)`` runs the rows of each
    distinct mix with :func:`rws_hub.core.patching.patch` (the weights the engine builds, by the
    same kernel), ``signatures`` and ``defaults`` as the engine has them."""

    def __init__(self, model: torch.nn.Module, signatures: Mapping[str, Any]) -> None:
        self.model = model.eval()
        self.signatures = dict(signatures)
        self.defaults = {n: float(s.default_alpha) for n, s in self.signatures.items()}
        self._device = next(model.parameters()).device

    @torch.no_grad()
    def predict(self, x: torch.Tensor, mixes: Sequence[Mix]) -> torch.Tensor:
        """Logits per row of float images ``x`` in [0, 1] under its mix."""
        rows: dict[Mix, list[int]] = {}
        for i, mix in enumerate(mixes):
            rows.setdefault(mix.without_zeros(), []).append(i)
        out: torch.Tensor | None = None
        for mix, idx in rows.items():
            xs = x[idx].to(self._device).contiguous(memory_format=torch.channels_last)
            ctx = (
                nullcontext()
                if mix.is_empty
                else patch(self.model, dict(mix), signatures=self.signatures)
            )
            with ctx:
                logits = self.model(xs).float().cpu()
            if out is None:
                out = logits.new_empty((len(x), logits.shape[1]))
            out[idx] = logits
        assert out is not None, "no rows"
        return out


@dataclass
class Cell:
    """Images of one test condition: ``corruption`` (``"clean"``) at ``severity`` (0 = clean)."""

    corruption: str
    severity: int
    x: torch.Tensor  # uint8 (N, 3, H, W)
    y: torch.Tensor  # class labels

    @property
    def key(self) -> str:
        """``"clean"`` or ``"<corruption>@<severity>"``."""
        return self.corruption if self.severity == 0 else f"{self.corruption}@{self.severity}"


def make_cells(
    data: Any,
    corruptions: Sequence[str],
    severities: Sequence[int],
    *,
    per_cell: int | Mapping[int, int],
    clean: int,
    start: int = 0,
    seed: int = 0,
) -> list[Cell]:
    """A clean cell and one cell per (corruption, severity), from ``data`` (ImageArrays).

    Cell images are ``data`` rows ``start .. start + n`` corrupted reproducibly (``seed``);
    ``per_cell`` may give a count per severity.
    """
    cells = [Cell(CLEAN, 0, data.x[start : start + clean], data.y[start : start + clean])]
    for c in corruptions:
        for s in severities:
            n = per_cell[s] if isinstance(per_cell, Mapping) else per_cell
            x = data.x[start : start + n]
            cells.append(
                Cell(c, s, corrupt_blocks(x, c, s, seed, start), data.y[start : start + n])
            )
    return cells


def evaluate_auto(
    engine: Any,
    detector: CorruptionDetector,
    cells: Sequence[Cell],
    rules: Mapping[str, AutoRule],
    *,
    predictor: CachedPredictor | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Detector accuracy and model accuracy (percent) per cell under ``none``, ``oracle`` (the
    cell's own signature at its default α) and every rule; also what each rule applied.

    Returns ``{"cells": {key: {"corruption", "severity", "images", "detector": acc,
    "accuracy": {label: acc}, "applied": {rule: {"none": share, "own": share, "other": share}}}}}``.
    """
    pred = predictor or CachedPredictor(engine)
    sigs = engine.signatures
    available = set(sigs)
    alphas = engine.defaults
    out: dict[str, Any] = {"cells": {}}
    for cell in cells:
        t = time.perf_counter()
        probs = torch.cat(
            [
                detector.probabilities(cell.x[i : i + 1000].float().div(255))
                for i in range(0, len(cell.x), 1000)
            ]
        )
        truth = (
            detector.classes.index(cell.corruption) if cell.corruption in detector.classes else -1
        )
        det_acc = float((probs.argmax(1) == truth).float().mean()) * 100
        keys = [(cell.key, i) for i in range(len(cell.x))]
        acc: dict[str, float] = {}
        applied: dict[str, dict[str, float]] = {}

        def score(mixes: list[Mix], cell: Cell = cell, keys: list = keys) -> float:
            p = pred.predict(keys, cell.x, mixes)
            return float((p == cell.y).float().mean()) * 100

        acc["none"] = score([Mix()] * len(keys))
        if cell.corruption in available:
            own = Mix({cell.corruption: alphas.get(cell.corruption, 1.0)})
            acc["oracle"] = score([own] * len(keys))
        rows = probs.tolist()
        for label, rule in rules.items():
            mixes = [
                rule_mix(
                    dict(zip(detector.classes, r, strict=True)),
                    rule,
                    available=available,
                    alphas=alphas,
                )
                for r in rows
            ]
            acc[label] = score(mixes)
            n = len(mixes)
            none = sum(1 for m in mixes if m.is_empty)
            own_n = sum(1 for m in mixes if cell.corruption in m)
            applied[label] = {
                "none": none / n,
                "own": own_n / n,
                "other": (n - none - own_n) / n,
            }
        out["cells"][cell.key] = {
            "corruption": cell.corruption,
            "severity": cell.severity,
            "images": len(cell.x),
            "detector": det_acc,
            "accuracy": acc,
            "applied": applied,
        }
        if log:
            log(
                f"{cell.key}: detector {det_acc:.1f} | "
                + " ".join(f"{k} {v:.1f}" for k, v in acc.items())
                + f" ({time.perf_counter() - t:.1f}s)"
            )
    out["forwards"] = pred.forwards
    return out


def summarize(result: Mapping[str, Any], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Means per label: ``clean``, ``sev5`` (over corruptions at severity 5), ``all`` (over
    every corruption cell), ``sev<k>``; plus ``detector_*`` for the detector's accuracy."""
    cells = result["cells"].values()
    out: dict[str, dict[str, float]] = {}
    groups: dict[str, list[Mapping[str, Any]]] = {
        "clean": [c for c in cells if c["severity"] == 0],
        "all": [c for c in cells if c["severity"] > 0],
    }
    for s in sorted({c["severity"] for c in cells if c["severity"] > 0}):
        groups[f"sev{s}"] = [c for c in cells if c["severity"] == s]
    for name, group in groups.items():
        if not group:
            continue
        row: dict[str, float] = {"detector": sum(c["detector"] for c in group) / len(group)}
        for label in labels:
            vals = [c["accuracy"][label] for c in group if label in c["accuracy"]]
            if vals:
                row[label] = sum(vals) / len(vals)
        out[name] = row
    return out


def choose_rule(
    summary: Mapping[str, Mapping[str, float]],
    rules: Mapping[str, AutoRule],
    *,
    clean_tolerance: float = 0.5,
) -> str:
    """The rule with the best mean accuracy over all corrupted cells among those whose clean
    accuracy is within ``clean_tolerance`` points of the unpatched model's (if none qualifies,
    the one with the best clean accuracy)."""
    clean = summary["clean"]
    ok = [r for r in rules if clean.get(r, -1.0) >= clean["none"] - clean_tolerance]
    if not ok:
        return max(rules, key=lambda r: clean.get(r, -1.0))
    return max(
        ok, key=lambda r: (summary["all"].get(r, -1.0), summary.get("sev5", {}).get(r, -1.0))
    )


CANDIDATE_RULES: dict[str, AutoRule] = {
    r.label: r
    for r in (
        AutoRule("top1", 0.0),
        AutoRule("top1", 0.3),
        AutoRule("top1", 0.5),
        AutoRule("top1", 0.7),
        AutoRule("top1", 0.9),
        AutoRule("top1", 0.3, clean_veto=0.3),
        AutoRule("top1", 0.5, strength="probability"),
        AutoRule("weighted", 0.1, top_k=3),
        AutoRule("weighted", 0.2, top_k=2),
        AutoRule("weighted", 0.1, top_k=3, clean_veto=0.5),
    )
}
"""The rules ``rws detector eval`` compares by default."""
