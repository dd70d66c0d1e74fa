"""Evaluation: clean accuracy (TA) and robust accuracy (RA), optionally with signatures patched in.

Corrupted test images are made on the fly, batch by batch, from generators seeded by
``(seed, batch index)``: the same call always sees the same corrupted test set, the equivalent of
a "-C" benchmark array. A folder of corrupted arrays on disk (``rws corrupt``) can be evaluated
too (``load_images`` with ``corruption=`` / ``severity=``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rws_hub.core.patching import patch
from rws_hub.core.seeding import seeded_generator
from rws_hub.datasets.arrays import ImageArrays
from rws_hub.datasets.corruptions import corrupt

OWN = "own"  # mix label: patch each corruption with the signature of the same name


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: ImageArrays,
    *,
    batch_size: int = 500,
    corruption: str | None = None,
    severity: int = 5,
    seed: int = 0,
    channels_last: bool = True,
) -> float:
    """Top-1 accuracy in percent on ``data``, clean or corrupted on the fly, on the model's
    device (images are corrupted there too)."""
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    correct = 0
    for b, start in enumerate(range(0, len(data), batch_size)):
        x = data.x[start : start + batch_size].to(device).float().div_(255)
        if corruption:
            x = corrupt(x, corruption, severity, generator=seeded_generator(seed, b, 7919))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pred = model(x).argmax(1).cpu()
        correct += int((pred == data.y[start : start + batch_size]).sum())
    return 100.0 * correct / max(1, len(data))


@dataclass
class EvalReport:
    """Accuracies in percent: ``clean[label]`` and ``corrupted[corruption][severity][label]``.

    A label names a way of running the model: ``"none"`` (as it is), ``"own"`` (patched with the
    signature named like the corruption), or a mix string such as ``"fog:1,snow:0.5"``.
    """

    clean: dict[str, float] = field(default_factory=dict)
    corrupted: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    images: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def mean_ra(self, label: str, severity: int = 5) -> float:
        """RA averaged over the corruptions evaluated at ``severity``."""
        vals = [per[severity][label] for per in self.corrupted.values() if severity in per]
        return sum(vals) / max(1, len(vals))

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "clean": self.clean,
            "corrupted": {
                c: {str(s): v for s, v in per.items()} for c, per in self.corrupted.items()
            },
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EvalReport:
        corrupted = {
            c: {int(s): dict(v) for s, v in per.items()}
            for c, per in d.get("corrupted", {}).items()
        }
        return cls(
            dict(d.get("clean", {})), corrupted, int(d.get("images", 0)), dict(d.get("meta", {}))
        )

    def to_markdown(self) -> str:
        """A table: one row per corruption and severity, one column per label."""
        labels = list(self.clean) or sorted(
            {lab for per in self.corrupted.values() for v in per.values() for lab in v}
        )

        def row(data: str, severity: Any, accs: Mapping[str, float]) -> str:
            cells = " | ".join(f"{accs.get(x, float('nan')):.2f}" for x in labels)
            return f"| {data} | {severity} | {cells} |"

        head = "| data | severity | " + " | ".join(labels) + " |"
        rows = [head, "|" + " --- |" * (len(labels) + 2)]
        if self.clean:
            rows.append(row("clean", "–", self.clean))
        for c, per in self.corrupted.items():
            rows += [row(c, s, v) for s, v in sorted(per.items())]
        return "\n".join(rows) + "\n"


def evaluate(
    model: nn.Module,
    data: ImageArrays,
    *,
    corruptions: Sequence[str] = (),
    severities: Iterable[int] = (5,),
    mixes: Mapping[str, Any] | None = None,
    signatures: Mapping[str, Any] | None = None,
    clean: bool = True,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = True,
) -> EvalReport:
    """TA and RA of ``model`` under each mix.

    ``mixes`` maps a label to what to patch in while measuring: ``None`` (nothing), a mix
    accepted by :func:`rws_hub.core.patching.patch`, or the string ``"own"`` (per corruption, the
    signature with the corruption's name at its default α; on clean data ``"own"`` is measured
    per corruption too and reported in ``meta["own_clean"]``). Default: ``{"none": None}``.
    """
    mixes = dict(mixes or {"none": None})
    sevs = list(severities)
    report = EvalReport(images=len(data), meta={"seed": seed, "severities": sevs})
    sigs = signatures if signatures is not None else getattr(model, "rws_signatures", {})

    def ctx(mix: Any, corruption: str | None):
        if mix is None:
            return nullcontext()
        if mix == OWN:
            if corruption is None or corruption not in sigs:
                return None
            return patch(model, {corruption: sigs[corruption].default_alpha}, signatures=sigs)
        return patch(model, mix, signatures=sigs)

    jobs = [(None, 0)] if clean else []
    jobs += [(c, s) for c in corruptions for s in sevs]
    bar = tqdm(total=len(jobs) * len(mixes), disable=not progress, desc="eval")
    own_clean: dict[str, float] = {}
    for corruption, sev in jobs:
        for label, mix in mixes.items():
            bar.update(1)
            if corruption is None and mix == OWN:
                for c in corruptions:
                    if c in sigs:
                        with ctx(OWN, c):
                            own_clean[c] = accuracy(model, data, batch_size=batch_size, seed=seed)
                if own_clean:
                    report.clean[label] = sum(own_clean.values()) / len(own_clean)
                continue
            cm = ctx(mix, corruption)
            if cm is None:
                continue
            with cm:
                acc = accuracy(
                    model,
                    data,
                    batch_size=batch_size,
                    corruption=corruption,
                    severity=sev,
                    seed=seed,
                )
            if corruption is None:
                report.clean[label] = acc
            else:
                report.corrupted.setdefault(corruption, {}).setdefault(sev, {})[label] = acc
    bar.close()
    if own_clean:
        report.meta["own_clean"] = own_clean
    return report


def save_report(
    report: EvalReport, json_path: str | Path | None, md_path: str | Path | None
) -> None:
    """Write the report as JSON and/or a markdown table."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2))
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(report.to_markdown())
