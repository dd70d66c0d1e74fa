"""How detector probabilities become a mix: :class:`AutoRule` (the rule kinds),
:func:`rule_mix` (the pure function), :class:`AutoPatcher` (the engine's ``detector`` hook) and
:func:`auto_patcher_from_folder` (the patcher a model folder's detector and rule describe).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from rws_hub.core.mix import Mix
from rws_hub.detect.model import CLEAN, CorruptionDetector, load_detector

__all__ = [
    "AutoPatcher",
    "AutoRule",
    "Detection",
    "auto_patcher_from_folder",
    "rule_mix",
]


@dataclass(frozen=True)
class AutoRule:
    """How detector probabilities become a mix.

    * ``kind="top1"``: the most probable class; nothing when it is ``"clean"`` or its
      probability is below ``threshold``; else that corruption's signature at
      ``alpha`` = its default α (``strength="one"``) or default α × p (``"probability"``).
    * ``kind="weighted"``: the ``top_k`` most probable *corruptions* whose probability is at
      least ``threshold``, each at default α × p (clean's probability mass is left unpatched).

    Either kind applies nothing when ``"clean"`` has probability ≥ ``clean_veto``.
    """

    kind: str = "top1"
    threshold: float = 0.5
    strength: str = "one"
    top_k: int = 3
    clean_veto: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("top1", "weighted"):
            raise ValueError(f"rule kind must be 'top1' or 'weighted', not {self.kind!r}")
        if self.strength not in ("one", "probability"):
            raise ValueError(f"strength must be 'one' or 'probability', not {self.strength!r}")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.clean_veto <= 1.0:
            raise ValueError("threshold and clean_veto must lie in [0, 1]")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")

    @property
    def label(self) -> str:
        """Short display name, e.g. ``top1@0.5`` or ``weighted3@0.1``."""
        veto = "" if self.clean_veto >= 1.0 else f",veto{self.clean_veto:g}"
        if self.kind == "top1":
            suffix = "" if self.strength == "one" else "×p"
            return f"top1{suffix}@{self.threshold:g}{veto}"
        return f"weighted{self.top_k}@{self.threshold:g}{veto}"

    def to_json(self) -> dict[str, Any]:
        """The rule's fields as a JSON-ready dict (``config["detector"]["rule"]``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AutoRule:
        """The rule :meth:`to_json` wrote (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def rule_mix(
    probabilities: Mapping[str, float],
    rule: AutoRule = AutoRule(),
    *,
    available: Collection[str] | None = None,
    alphas: Mapping[str, float] | None = None,
) -> Mix:
    """The mix ``rule`` picks for one image's class probabilities (a pure function).

    Corruptions without a signature in ``available`` (when given) are never chosen (``top1``
    falls to the next most probable class). ``alphas`` are the signatures' default α (1.0 when
    absent). Alphas are rounded to 2 decimals so that similar images share patched weights.
    """
    alphas = alphas or {}
    if float(probabilities.get(CLEAN, 0.0)) >= rule.clean_veto:
        return Mix()
    ranked = sorted(probabilities.items(), key=lambda kv: (-kv[1], kv[0]))
    usable = [(c, float(p)) for c, p in ranked if c == CLEAN or available is None or c in available]
    if rule.kind == "top1":
        if not usable:
            return Mix()
        top, p = usable[0]
        if top == CLEAN or p < rule.threshold:
            return Mix()
        scale = 1.0 if rule.strength == "one" else p
        return Mix({top: round(alphas.get(top, 1.0) * scale, 2)})
    chosen = [(c, p) for c, p in usable if c != CLEAN and p >= rule.threshold][: rule.top_k]
    mix = {c: round(alphas.get(c, 1.0) * p, 2) for c, p in chosen}
    return Mix(mix).without_zeros()


@dataclass(frozen=True)
class Detection:
    """One image's ``"auto"`` answer: the mix applied and the top detected classes."""

    mix: Mix
    top: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def to_json(self) -> list[dict[str, Any]]:
        """``[{"class": name, "probability": p}, ...]`` (most probable first)."""
        return [{"class": c, "probability": round(p, 4)} for c, p in self.top]


class AutoPatcher:
    """The engine's ``detector`` hook: images → one mix per image, via a detector and a rule.

    Args:
        detector: a trained :class:`CorruptionDetector` (moved to ``device``).
        rule: the :class:`AutoRule` (default: the detector config's rule or ``AutoRule()``).
        available: names of the signatures that can be applied (others are never chosen).
        alphas: default α of each signature.
        report_top: how many top classes :meth:`detect` reports.
        device: where the detector runs (default: where its parameters are).
    """

    def __init__(
        self,
        detector: CorruptionDetector,
        rule: AutoRule | None = None,
        *,
        available: Collection[str] | None = None,
        alphas: Mapping[str, float] | None = None,
        report_top: int = 3,
        device: str | torch.device | None = None,
    ) -> None:
        self.detector = detector.eval()
        if device is not None:
            self.detector.to(device)
        self.rule = rule or AutoRule()
        self.available = set(available) if available is not None else None
        self.alphas = dict(alphas or {})
        self.report_top = int(report_top)

    def detect(self, images: torch.Tensor) -> list[Detection]:
        """Per image: the chosen mix and the top classes with their probabilities."""
        dev = next(self.detector.parameters()).device
        probs = self.detector.probabilities(images.to(dev, torch.float32)).cpu()
        classes = self.detector.classes
        k = min(self.report_top, len(classes))
        out = []
        for row in probs.tolist():
            pmap = dict(zip(classes, row, strict=True))
            mix = rule_mix(pmap, self.rule, available=self.available, alphas=self.alphas)
            top = tuple(sorted(pmap.items(), key=lambda kv: -kv[1])[:k])
            out.append(Detection(mix, top))
        return out

    def __call__(self, images: torch.Tensor) -> list[Mix]:
        """One mix per image (the engine's hook); :meth:`detect` also gives the top classes."""
        return [d.mix for d in self.detect(images)]


def auto_patcher_from_folder(folder: Any, device: str | torch.device = "cpu") -> AutoPatcher:
    """The :class:`AutoPatcher` of a loaded model folder that ships a detector."""
    det, cfg = load_detector(folder, device=device)
    rule = AutoRule.from_json(cfg["rule"]) if isinstance(cfg.get("rule"), Mapping) else None
    sigs = folder.signatures
    return AutoPatcher(
        det,
        rule,
        available=set(sigs),
        alphas={n: float(getattr(s, "default_alpha", 1.0)) for n, s in sigs.items()},
    )
