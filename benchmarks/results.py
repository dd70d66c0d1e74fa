"""The paper's claims measured on a zoo entry: one sub-command per section of docs/results.md.

Every section writes ``<out>/<section>.json`` (its numbers) and ``<out>/<section>.png`` (its plot),
then regenerates the report from all JSONs present (``doc`` only regenerates)::

    nice -n 10 .venv/bin/python benchmarks/results.py all
    nice -n 10 .venv/bin/python benchmarks/results.py main      # 1. main table (from eval.json)
    nice -n 10 .venv/bin/python benchmarks/results.py layers    # 2. where the change lives
    nice -n 10 .venv/bin/python benchmarks/results.py cosine    # 3. discriminative
    nice -n 10 .venv/bin/python benchmarks/results.py alpha     # 4. adjustable
    nice -n 10 .venv/bin/python benchmarks/results.py depth     # 5. how many layers
    nice -n 10 .venv/bin/python benchmarks/results.py compose   # 6. composable
    nice -n 10 .venv/bin/python benchmarks/results.py quant     # 7. lightweight
    nice -n 10 .venv/bin/python benchmarks/results.py transfer  # 8. transferable
    .venv/bin/python benchmarks/results.py doc

Accuracies are measured on the first ``--limit`` test images (default 1000), corrupted at the
zoo's severity with the same seeded generators as ``rws_hub.zoo.evaluation.accuracy`` (so the numbers
equal what ``rws eval`` reports on that subset); the corrupted images are made once per run and
reused. Sections of the report this script does not own (e.g. ``## Auto-patch: ...`` or text
between ``<!-- auto-patch -->`` and ``<!-- /auto-patch -->``) are kept when it is regenerated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402

from rws_hub.archs import choose_units  # noqa: E402
from rws_hub.core.extraction import extract  # noqa: E402
from rws_hub.core.layers import shallow_units, unit_params  # noqa: E402
from rws_hub.core.patching import apply, patch, remove  # noqa: E402
from rws_hub.core.quantization import describe_storage  # noqa: E402
from rws_hub.core.seeding import seeded_generator  # noqa: E402
from rws_hub.core.signature import Signature, cosine  # noqa: E402
from rws_hub.datasets.arrays import ImageArrays, load_images  # noqa: E402
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS, STANDARD_CORRUPTIONS, corrupt  # noqa: E402
from rws_hub.zoo.pipeline import ZooSpec, eval_rows, load_state_model  # noqa: E402

SECTIONS: dict[str, str] = {
    "main": "1. Main table: standard, robust and patched models",
    "layers": "2. Where the change lives: per-layer weight difference",
    "cosine": "3. Discriminative: cosine similarity between signatures",
    "alpha": "4. Adjustable: strength α and exact removal",
    "depth": "5. How many layers: K = 1 to all units",
    "compose": "6. Composable: several signatures at once",
    "quant": "7. Lightweight: quantization and storage",
    "transfer": "8. Transferable: signatures on an updated backbone",
    "datasets": "8b. Transferable across data sets: this entry's signatures on another data "
    "set's backbone",
    "bnstats": "9. Batch norm: what a signature carries of each unit's batch norm",
}
DEFAULT_SWEEP = ("gaussian_noise", "contrast", "fog", "pixelate", "jpeg_compression", "motion_blur")
BATCH = 500  # the batch size (and seeding unit) of rws_hub.zoo.evaluation.accuracy
DEFAULTS = {
    "work": "runs/zoo/cifar10-vgg16",
    "folder": "model-store/cifar10-vgg16",
    "data": None,
    "out": "docs/results",
    "doc": "docs/results.md",
    "limit": 1000,
    "sweep": ",".join(DEFAULT_SWEEP),
    "alphas": "0,0.25,0.5,1,1.5,2",
    "transfer_epochs": 0.3,
    "transfer_lr": 0.005,
    "threads": None,
    "other_work": None,
    "other_folder": None,
    "other_limit": None,
}
AUTO_BEGIN, AUTO_END = "<!-- auto-patch -->", "<!-- /auto-patch -->"


# ---------------------------------------------------------------------------------------------
# the zoo, the test subset, fast accuracy


def load_spec(work: str | Path, folder: str | Path, data: str | None = None) -> ZooSpec:
    """The zoo's recipe: the exported folder's ``config.json`` when present, else the work
    folder's run configs (architecture, width, data) and the robust models found there."""
    names = {f.name for f in dataclasses.fields(ZooSpec)}
    config = Path(folder) / "config.json"
    if config.exists():
        recipe = json.loads(config.read_text())["recipe"]
        spec = ZooSpec(**{k: v for k, v in recipe.items() if k in names})
    else:
        # not exported yet: the recipe of the zoo entry named like the work folder (a planned
        # one too; plain defaults for another name), the runs' own settings over it
        spec = ZooSpec.for_entry(Path(work).name)
        run = Path(work) / "clean" / "config.json"
        if run.exists():
            cfg = json.loads(run.read_text())
            spec.architecture, spec.width, spec.data = (
                cfg["architecture"],
                cfg["width"],
                cfg["data"],
            )
    spec.work = str(work)
    spec.export = str(folder)
    if data:
        spec.data = data
    have = [
        c
        for c in spec.corruptions
        if (Path(work) / "robust" / c / "final.safetensors").exists()
        and (Path(work) / "signatures" / f"{c}.safetensors").exists()
    ]
    if not have and not (Path(work) / "robust").exists():
        # no checkpoints here (a fresh clone): the sections that read only signatures and
        # recorded evaluations (8b) take them from the exported folder
        have = [
            c
            for c in spec.corruptions
            if (Path(folder) / "signatures" / f"{c}.safetensors").exists()
        ]
    spec.corruptions = [c for c in ALL_CORRUPTIONS if c in have]
    return spec


@torch.no_grad()
def fast_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent on float images already in [0, 1] (batches as
    ``rws_hub.zoo.evaluation.accuracy`` runs them, so the results are the same)."""
    model.eval()
    correct = 0
    for start in range(0, len(y), BATCH):
        xb = x[start : start + BATCH].contiguous(memory_format=torch.channels_last)
        correct += int((model(xb).argmax(1) == y[start : start + BATCH]).sum())
    return 100.0 * correct / max(1, len(y))


class Zoo:
    """One zoo entry for the report: its recipe, checkpoints, signatures and test subset."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.spec = load_spec(args.work, args.folder, args.data)
        self.work = Path(args.work)
        self.corruptions = list(self.spec.corruptions)
        wanted = [c.strip() for c in args.sweep.split(",") if c.strip()]
        self.sweep = [c for c in wanted if c in self.corruptions] or self.corruptions[:4]
        self.seed = 0
        self._test: ImageArrays | None = None
        self._images: dict[str | None, torch.Tensor] = {}
        self._states: dict[str, dict[str, torch.Tensor]] = {}
        self._sigs: dict[str, Signature] = {}
        self._backbone: nn.Module | None = None
        self._baseline: dict[str, float] | None = None

    # -- data ---------------------------------------------------------------------------------
    @property
    def test(self) -> ImageArrays:
        if self._test is None:
            self._test = load_images(self.spec.data, "test", dataset=self.spec.dataset).subset(
                self.args.limit
            )
        return self._test

    def images(self, corruption: str | None) -> torch.Tensor:
        """The test subset as floats in [0, 1], clean (None) or corrupted like ``accuracy``."""
        if corruption not in self._images:
            parts = []
            for b, start in enumerate(range(0, len(self.test), BATCH)):
                x = self.test.x[start : start + BATCH].float().div_(255)
                if corruption is not None:
                    g = seeded_generator(self.seed, b, 7919)
                    x = corrupt(x, corruption, self.spec.severity, generator=g)
                parts.append(x)
            self._images[corruption] = torch.cat(parts)
        return self._images[corruption]

    def acc(self, model: nn.Module, corruption: str | None = None) -> float:
        """TA (``corruption=None``) or RA of ``model`` on the test subset."""
        return fast_accuracy(model, self.images(corruption), self.test.y)

    def acc_with(self, model: nn.Module, mix: Any, corruption: str | None = None) -> float:
        """Accuracy with ``mix`` patched in (restored afterwards)."""
        with patch(model, mix):
            return self.acc(model, corruption)

    def baseline(self, kind: str, corruption: str | None = None) -> float:
        """Numbers several sections share, measured once and kept in the work folder:
        ``"ta"`` / ``"ra"`` of θ_std, ``"own_ta"`` / ``"own_ra"`` of θ_std + v_c (α = 1)."""
        path = self.work / "results-baseline.json"
        clean = self.path("clean").stat()
        ident = f"{self.args.work}|{clean.st_size}|{clean.st_mtime_ns}|{self.args.limit}|"
        ident += f"{self.spec.severity}|{self.seed}"
        if self._baseline is None:
            old = json.loads(path.read_text()) if path.exists() else {}
            self._baseline = old.get("values", {}) if old.get("ident") == ident else {}
        key = f"{kind}:{corruption or ''}"
        if key not in self._baseline:
            model = self.backbone
            if kind in ("ta", "ra"):
                value = self.acc(model, corruption if kind == "ra" else None)
            else:
                target = corruption if kind == "own_ra" else None
                value = self.acc_with(model, {self.signature(str(corruption)): 1.0}, target)
            self._baseline[key] = value
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"ident": ident, "values": self._baseline}, indent=1))
        return self._baseline[key]

    # -- weights ------------------------------------------------------------------------------
    def path(self, which: str) -> Path:
        if which in ("pretrain", "clean"):
            path = self.work / which / "final.safetensors"
        else:
            path = self.work / "robust" / which / "final.safetensors"
        shipped = {"clean": "model.safetensors", "pretrain": "pretrained.safetensors"}
        if not path.exists() and which in shipped:  # the work folder is gone: the exported
            path = Path(self.args.folder) / shipped[which]  # folder ships θ_std (and θ_pre)
        if not path.exists():
            raise SystemExit(
                f"{path} is missing: this section needs the entry's checkpoints "
                f"(rws zoo build --name {self.spec.name} --work {self.work})"
            )
        return path

    def state(self, which: str) -> dict[str, torch.Tensor]:
        """A state dict: ``"pretrain"``, ``"clean"`` or a corruption's robust model."""
        if which not in self._states:
            self._states[which] = load_file(str(self.path(which)))
        return self._states[which]

    def model(self, which: str = "clean") -> nn.Module:
        return load_state_model(self.spec, self.path(which))

    @property
    def backbone(self) -> nn.Module:
        """θ_std, shared by every section (patches are always taken off again)."""
        if self._backbone is None:
            self._backbone = self.model("clean")
        return self._backbone

    def kept(self, rel: str) -> Path:
        """``rel`` in the work folder, else the exported folder's copy (the work folder is gone,
        as on a fresh clone: the signatures and ``eval.json`` ship as the build wrote them)."""
        path = self.work / rel
        return path if path.exists() else Path(self.args.folder) / rel

    def signature(self, c: str) -> Signature:
        """The zoo's stored signature of ``c`` (as shipped: K and quantization of the recipe)."""
        if c not in self._sigs:
            self._sigs[c] = Signature.load(self.kept(f"signatures/{c}.safetensors"))
        return self._sigs[c]

    def fp32_signature(
        self, c: str, layers: int | None = None, bn: str = "stats", stats: str = "project"
    ) -> Signature:
        """The signature of ``c`` re-extracted in fp32 with ``layers`` units (default the zoo's
        K); ``bn`` and ``stats`` as in :func:`rws_hub.core.extraction.extract`."""
        return extract(
            self.state("pretrain"),
            self.backbone,  # a module: its units are traced (never patched at this point)
            self.state(c),
            name=c,
            layers=layers or self.spec.layers,
            architecture=self.spec.architecture,
            bn=bn,
            stats=stats,
        )

    @property
    def has_bn(self) -> bool:
        """Whether the backbone's units have batch norms."""
        return any(u.norm for u in shallow_units(self.backbone, None))

    @property
    def full_bytes(self) -> int:
        """Bytes of one full model in fp32 (every parameter)."""
        return 4 * sum(p.numel() for p in self.backbone.parameters())

    def setup(self) -> dict[str, Any]:
        """The facts every section records about what it measured."""
        s = self.spec
        return {
            "zoo": s.name,
            "architecture": s.architecture,
            "width": s.width,
            "params": sum(p.numel() for p in self.backbone.parameters()),
            "pretrain_epochs": s.pretrain_epochs,
            "clean_epochs": s.clean_epochs,
            "robust_epochs": s.robust_epochs,
            "corrupt_fraction": s.corrupt_fraction,
            "finetune_lr": s.finetune_lr,
            "severity": s.severity,
            "layers": s.layers,
            "quantization": s.quantization,
            "corruptions": self.corruptions,
            "sweep": self.sweep,
            "test_images": len(self.test),
            "batch_norm": self.has_bn,
            "data": s.data,
            "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }


# ---------------------------------------------------------------------------------------------
# plotting helpers


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(c: str) -> str:
    return c.replace("_compression", "").replace("_transform", "").replace("_", " ")


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# 1. main table


def section_main(z: Zoo, png: Path) -> dict[str, Any]:
    """TA/RA of θ_std, θ_c and θ_std + v_c from the zoo's eval.json; storage of each."""
    ev = json.loads(z.kept("eval.json").read_text())
    bb, sev = ev["backbone"], str(z.spec.severity)
    own_clean = bb["meta"].get("own_clean", {})
    rows = []
    for c in z.corruptions:
        if c not in bb["corrupted"] or c not in ev.get("robust_models", {}):
            continue
        sig = z.signature(c)
        rob = ev["robust_models"][c]
        rows.append(
            {
                "corruption": c,
                "standard": c in STANDARD_CORRUPTIONS,
                "std_ta": bb["clean"]["none"],
                "std_ra": bb["corrupted"][c][sev]["none"],
                "robust_ta": rob["clean"],
                "robust_ra": rob["corrupted"],
                "patched_ta": own_clean.get(c),
                "patched_ra": bb["corrupted"][c][sev].get("own"),
                "signature_bytes": sig.nbytes,
                "signature_file_bytes": z.kept(f"signatures/{c}.safetensors").stat().st_size,
                "signature_fp32_bytes": 4 * sig.numel,
            }
        )

    def mean(key: str, only_standard: bool = False) -> float:
        vals = [r[key] for r in rows if r[key] is not None and (r["standard"] or not only_standard)]
        return float(np.mean(vals)) if vals else float("nan")

    keys = ("std_ta", "std_ra", "robust_ta", "robust_ra", "patched_ta", "patched_ra")
    res = {
        "eval_images": ev.get("images"),
        "rows": rows,
        "mean": {k: mean(k) for k in keys},
        "mean_standard": {k: mean(k, True) for k in keys},
        "full_model_bytes": z.full_bytes,
        "signature_bytes_mean": mean("signature_bytes"),
        "quantization": z.spec.quantization,
    }
    gains = [r["patched_ra"] - r["std_ra"] for r in rows]
    full_gain = [r["robust_ra"] - r["std_ra"] for r in rows]
    res["patched_gain_mean"] = float(np.mean(gains))
    res["robust_gain_mean"] = float(np.mean(full_gain))
    rg = res["robust_gain_mean"]
    res["recovered"] = res["patched_gain_mean"] / rg if rg else None
    res["patched_better_than_std"] = sum(g > 0 for g in gains)

    fig, axes = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True)
    xs = np.arange(len(rows))
    w = 0.27
    kinds = [("std", "standard θ_std"), ("robust", "robust θ_c"), ("patched", "θ_std + signature")]
    for ax, metric, title in (
        (axes[0], "ra", f"Robust accuracy (severity {z.spec.severity})"),
        (axes[1], "ta", "Clean accuracy (TA)"),
    ):
        for i, (k, label) in enumerate(kinds):
            vals = [r[f"{k}_{metric}"] or 0.0 for r in rows]
            ax.bar(xs + (i - 1) * w, vals, w, label=label, color=_colors(3)[i])
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 112)
        ax.set_yticks(range(0, 101, 20))
    axes[0].legend(ncol=3, loc="upper center", fontsize=8)
    axes[1].set_xticks(xs, [_short(r["corruption"]) for r in rows], rotation=45, ha="right")
    fig.suptitle(f"Main table on {ev.get('images')} CIFAR-10 test images")
    _save(fig, png)
    return res


def render_main(r: dict[str, Any]) -> str:
    kb = 1000
    lines = [
        f"TA and RA in % on {r['eval_images']} test images (the zoo's `eval.json`; not recomputed). "
        "Storage: one full model in fp32 vs the shipped signature "
        f"({_storage(r['quantization'])}, K = {r['setup']['layers']}).",
        "",
        "| corruption | std TA | std RA | robust TA | robust RA | patched TA | patched RA "
        "| RA gain | signature |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        star = "" if row["standard"] else " *"
        lines.append(
            f"| {row['corruption']}{star} | {row['std_ta']:.1f} | {row['std_ra']:.1f} "
            f"| {row['robust_ta']:.1f} | {row['robust_ra']:.1f} | {_f(row['patched_ta'])} "
            f"| {_f(row['patched_ra'])} | {row['patched_ra'] - row['std_ra']:+.1f} "
            f"| {row['signature_bytes'] / kb:.0f} KB |"
        )
    n_std = sum(row["standard"] for row in r["rows"])
    for label, key in (
        (f"mean ({len(r['rows'])})", "mean"),
        (f"mean ({n_std} standard)", "mean_standard"),
    ):
        m = r[key]
        lines.append(
            f"| **{label}** | {m['std_ta']:.1f} | {m['std_ra']:.1f} | {m['robust_ta']:.1f} "
            f"| {m['robust_ra']:.1f} | {m['patched_ta']:.1f} | {m['patched_ra']:.1f} "
            f"| {m['patched_ra'] - m['std_ra']:+.1f} | |"
        )
    n = len(r["rows"])
    full = r["full_model_bytes"]
    sig = r["signature_bytes_mean"]
    lines += [
        "",
        "\\* not one of the 15 standard CIFAR-10-C corruptions.",
        "",
        f"Storage: a full model is {full / 1e6:.2f} MB (fp32); a signature is {sig / kb:.0f} KB "
        f"({full / sig:.1f}× smaller). For {n} corruptions: {n} dedicated models = "
        f"{n * full / 1e6:.1f} MB, one backbone + {n} signatures = {(full + n * sig) / 1e6:.1f} MB.",
        "",
        f"Headline: mean RA gain over the standard model {r['patched_gain_mean']:+.1f} points "
        f"patched vs {r['robust_gain_mean']:+.1f} for the dedicated models"
        + (f" ({100 * r['recovered']:.0f}% recovered); " if r["recovered"] else "; ")
        + f"the patched model beats the standard one on {r['patched_better_than_std']} of {n} "
        "corruptions.",
    ]
    return "\n".join(lines)


def _epochs(x: float) -> str:
    """``"0.4 epoch"``, ``"1 epoch"``, ``"8 epochs"``."""
    return f"{x:g} epoch" + ("s" if x > 1 else "")


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# 2. where the change lives


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """``[(label, tensor names)]``: the units in forward order (a conv's weight and bias, and its
    batch norm's scale and shift), then the classifier."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    groups = []
    for i, unit in enumerate(shallow_units(model, None), 1):
        groups.append((f"conv{i}", unit.tensors(params, "affine")))
    for name, m in modules.items():
        if isinstance(m, nn.Linear):
            groups.append(("fc", [f"{name}.{p}" for p, _ in m.named_parameters()]))
    return groups


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: Sequence[str]) -> float:
    """‖a − b‖ / ‖b‖ over the tensors ``names`` (flattened together, float64)."""
    num = sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in names)
    den = sum(float(b[n].double().pow(2).sum()) for n in names)
    return math.sqrt(num / den) if den else float("nan")


def section_layers(z: Zoo, png: Path) -> dict[str, Any]:
    """‖θ_c − θ_std‖/‖θ_std‖ per layer and corruption (state dicts only)."""
    groups = layer_groups(z.backbone)
    labels = [g for g, _ in groups]
    std, pre = z.state("clean"), z.state("pretrain")
    table = {c: [rel_diff(z.state(c), std, names) for _, names in groups] for c in z.corruptions}
    clean_tv = [rel_diff(std, pre, names) for _, names in groups]
    mat = np.array([table[c] for c in z.corruptions])
    mean = mat.mean(0)
    k = z.spec.layers
    n_conv = sum(lab.startswith("conv") for lab in labels)
    shallow, deep = float(mean[:k].mean()), float(mean[k:n_conv].mean())
    argmax = {c: labels[int(np.argmax(table[c]))] for c in z.corruptions}

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [1.2, 1]})
    im = ax0.imshow(mat, aspect="auto", cmap="viridis")
    ax0.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax0.set_yticks(range(len(z.corruptions)), [_short(c) for c in z.corruptions])
    ax0.axvline(k - 0.5, color="white", ls="--", lw=1)
    ax0.set_title("‖θ_c − θ_std‖ / ‖θ_std‖ per layer")
    fig.colorbar(im, ax=ax0, label="relative difference")
    for c, color in zip(z.corruptions, _colors(len(z.corruptions)), strict=True):
        ax1.plot(labels, table[c], color=color, lw=0.8, alpha=0.6)
    ax1.plot(labels, mean, color="black", lw=2.5, label="mean over corruptions: θ_c vs θ_std")
    ax1.plot(labels, clean_tv, color="tab:red", lw=2, ls="--", label="θ_std vs θ_pre (clean)")
    ax1.axvline(k - 0.5, color="grey", ls=":", lw=1, label=f"signature covers conv1–{k}")
    ax1.set_yscale("log")
    ax1.set_xlabel("layer (forward order)")
    ax1.set_ylabel("relative difference (log)")
    ax1.set_title("Per-corruption lines (thin) and their mean")
    ax1.tick_params(axis="x", rotation=45)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    _save(fig, png)
    return {
        "layers": labels,
        "relative_difference": table,
        "mean": mean.tolist(),
        "clean_task_vector": clean_tv,
        "shallow_mean": shallow,
        "deep_mean": deep,
        "argmax_layer": argmax,
    }


def render_layers(r: dict[str, Any]) -> str:
    labels, mean = r["layers"], r["mean"]
    k = r["setup"]["layers"]
    n_conv = sum(lab.startswith("conv") for lab in labels)
    top = sorted(range(len(mean)), key=lambda i: -mean[i])[:3]
    counts: dict[str, int] = {}
    for lab in r["argmax_layer"].values():
        counts[lab] = counts.get(lab, 0) + 1
    where = ", ".join(f"{lab} ({n})" for lab, n in sorted(counts.items(), key=lambda t: -t[1]))
    return "\n".join(
        [
            "First row: the clean task vector ‖θ_std − θ_pre‖ / ‖θ_pre‖, for scale; second row: "
            "the mean over the corruptions of ‖θ_c − θ_std‖ / ‖θ_std‖ (weight and bias of a "
            "layer together).",
            "",
            "| " + " | ".join(labels) + " |",
            "|" + " ---: |" * len(labels),
            "| " + " | ".join(f"{v:.4f}" for v in r["clean_task_vector"]) + " |",
            "| " + " | ".join(f"{v:.4f}" for v in mean) + " |",
            "",
            f"Second row over first: "
            f"{mean[0] / r['clean_task_vector'][0]:.2f}× at {labels[0]}, "
            f"{mean[k - 1] / r['clean_task_vector'][k - 1]:.2f}× at {labels[k - 1]}, "
            f"{mean[n_conv - 1] / r['clean_task_vector'][n_conv - 1]:.2f}× at "
            f"{labels[n_conv - 1]}.",
            "",
            f"Headline: mean relative difference {r['shallow_mean']:.4f} over conv1–{k} vs "
            f"{r['deep_mean']:.4f} over the deeper conv layers "
            f"({r['shallow_mean'] / r['deep_mean']:.1f}×); largest in "
            + ", ".join(labels[i] for i in top)
            + f". Layer with the largest difference, per corruption: {where}.",
        ]
    )


# ---------------------------------------------------------------------------------------------
# 3. discriminative


FAMILY: dict[str, str] = {
    **dict.fromkeys(("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"), "noise"),
    **dict.fromkeys(
        ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"), "blur"
    ),
    **dict.fromkeys(("snow", "frost", "fog", "brightness", "spatter"), "weather"),
    **dict.fromkeys(
        ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"), "digital"
    ),
}


def _flat(tensors: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([tensors[n].double().reshape(-1) for n in names])


def section_cosine(z: Zoo, png: Path) -> dict[str, Any]:
    """Cosine between every pair of shipped signatures, and between the raw task vectors."""
    cs = z.corruptions
    sigs = [z.signature(c) for c in cs]
    mat = np.array([[cosine(a, b) for b in sigs] for a in sigs])
    names = sigs[0].names
    pre = z.state("pretrain")
    tvs = [_flat(z.state(c), names) - _flat(pre, names) for c in cs]
    tv_std = _flat(z.state("clean"), names) - _flat(pre, names)
    tvn = torch.stack([t / t.norm() for t in tvs])
    tv_mat = (tvn @ tvn.T).numpy()
    off = ~np.eye(len(cs), dtype=bool)
    fam = [FAMILY.get(c, c) for c in cs]
    same = np.array([[fa == fb for fb in fam] for fa in fam]) & off
    other = ~np.array([[fa == fb for fb in fam] for fa in fam])
    pairs = [
        (cs[i], cs[j], float(mat[i, j])) for i in range(len(cs)) for j in range(i + 1, len(cs))
    ]
    pairs.sort(key=lambda t: -t[2])
    along_std = [
        float(torch.dot(_flat(s.tensors, names), tv_std) / (s.norm() * tv_std.norm())) for s in sigs
    ]

    fig, ax = plt.subplots(figsize=(10.5, 9))
    # colour range set by the off-diagonal values so their structure shows; diagonal = 1
    vmax = max(0.1, math.ceil(float(np.abs(mat[off]).max()) * 10) / 10)
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_xticks(range(len(cs)), [_short(c) for c in cs], rotation=60, ha="right")
    ax.set_yticks(range(len(cs)), [_short(c) for c in cs])
    for i in range(len(cs)):
        for j in range(len(cs)):
            dark = abs(mat[i, j]) > 0.6 * vmax
            color = "white" if dark else "black"
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)
    ax.set_title(
        f"Cosine similarity between signatures (K = {z.spec.layers}, {z.spec.quantization})"
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"cosine (colour clipped at ±{vmax:.1f})")
    _save(fig, png)
    return {
        "corruptions": cs,
        "matrix": mat.tolist(),
        "offdiag_mean": float(mat[off].mean()),
        "offdiag_abs_mean": float(np.abs(mat[off]).mean()),
        "within_family_mean": float(mat[same].mean()) if same.any() else None,
        "across_family_mean": float(mat[other].mean()) if other.any() else None,
        "task_vector_offdiag_mean": float(tv_mat[off].mean()),
        "signature_vs_clean_direction_max_abs": float(np.max(np.abs(along_std))),
        "most_similar": pairs[:5],
        "least_similar": pairs[-3:],
    }


def render_cosine(r: dict[str, Any]) -> str:
    most = "; ".join(f"{a} / {b} {v:.2f}" for a, b, v in r["most_similar"])
    least = "; ".join(f"{a} / {b} {v:.2f}" for a, b, v in r["least_similar"])
    return "\n".join(
        [
            f"Headline: mean off-diagonal cosine between the signatures "
            f"{r['offdiag_mean']:.3f} (mean |cos| {r['offdiag_abs_mean']:.3f}); between the raw "
            f"robust task vectors τ_c on the same tensors it is {r['task_vector_offdiag_mean']:.3f} "
            "— the shared clean direction the projection removes. The largest |cos| between a "
            f"signature and τ_std is {r['signature_vs_clean_direction_max_abs']:.1e} "
            "(orthogonal up to quantization).",
            "",
            f"Most similar pairs: {most}. Least similar: {least}.",
            "",
            f"Mean cosine within a corruption family {_f(r.get('within_family_mean'), 3)}, "
            f"across families {_f(r.get('across_family_mean'), 3)}.",
        ]
    )


# ---------------------------------------------------------------------------------------------
# 4. adjustable


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _bitwise_equal(model: nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def section_alpha(z: Zoo, png: Path) -> dict[str, Any]:
    """RA and TA against α for the sweep corruptions; bitwise restore asserted after each."""
    model = z.backbone
    snap = _snapshot(model)
    checks = 0
    ra: dict[str, list[float]] = {}
    ta: dict[str, list[float]] = {}
    alphas = [float(a) for a in z.args.alphas.split(",")]
    for c in z.sweep:
        sig = z.signature(c)
        ra[c], ta[c] = [], []
        for a in alphas:
            with patch(model, {sig: a}):
                ra[c].append(z.acc(model, c))
                ta[c].append(z.acc(model))
            assert _bitwise_equal(model, snap), f"patch({c}, α={a}) did not restore bitwise"
            checks += 1
        apply(model, {sig: 1.0})
        apply(model, {sig: 0.5})
        remove(model)
        assert _bitwise_equal(model, snap), f"apply/remove({c}) did not restore bitwise"
        checks += 1
    base_ta = z.baseline("ta")
    base_ra = {c: z.baseline("ra", c) for c in z.sweep}
    if 0.0 in alphas:
        i0 = alphas.index(0.0)
        assert all(ra[c][i0] == base_ra[c] for c in z.sweep), "α = 0 must be the clean model"
    best = {c: alphas[int(np.argmax(ra[c]))] for c in z.sweep}

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 5))
    for c, color in zip(z.sweep, _colors(len(z.sweep)), strict=True):
        ax0.plot(alphas, ra[c], "o-", color=color, label=_short(c))
        ax1.plot(alphas, ta[c], "o-", color=color, label=_short(c))
    ax0.axvline(1.0, color="grey", ls=":", lw=1)
    ax1.axvline(1.0, color="grey", ls=":", lw=1)
    ax0.set(xlabel="α", ylabel="RA (%)", title="Robust accuracy on the matching corruption")
    ax1.set(xlabel="α", ylabel="TA (%)", title="Clean accuracy")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"θ_std + α·v_c on {len(z.test)} test images")
    _save(fig, png)
    return {
        "alphas": alphas,
        "ra": ra,
        "ta": ta,
        "base_ta": base_ta,
        "base_ra": base_ra,
        "best_alpha": best,
        "bitwise_restore_checks": checks,
        "bitwise_restore": True,
    }


def render_alpha(r: dict[str, Any]) -> str:
    alphas = r["alphas"]
    i0, i1, i2 = 0, alphas.index(1.0) if 1.0 in alphas else 0, len(alphas) - 1
    lines = [
        f"RA / TA (%) on {r['setup']['test_images']} test images:",
        "",
        "| corruption | " + " | ".join(f"α={a:g}" for a in alphas) + " | best α |",
        "| --- |" + " ---: |" * (len(alphas) + 1),
    ]
    for c in r["ra"]:
        cells = " | ".join(
            f"{a:.1f} / {t:.1f}" for a, t in zip(r["ra"][c], r["ta"][c], strict=True)
        )
        lines.append(f"| {c} | {cells} | {r['best_alpha'][c]:g} |")
    mra = {i: np.mean([r["ra"][c][i] for c in r["ra"]]) for i in (i0, i1, i2)}
    mta = {i: np.mean([r["ta"][c][i] for c in r["ta"]]) for i in (i0, i1, i2)}
    a0, a1, a2 = alphas[i0], alphas[i1], alphas[i2]
    lines += [
        "",
        f"Headline: mean RA {mra[i0]:.1f} (α = {a0:g}) → {mra[i1]:.1f} (α = {a1:g}) → "
        f"{mra[i2]:.1f} (α = {a2:g}); mean TA {mta[i0]:.1f} → {mta[i1]:.1f} → {mta[i2]:.1f}. Removal is exact: after every patch "
        f"(and after `apply` twice + `remove`) the model's state dict was compared tensor by "
        f"tensor with `torch.equal` against a copy taken before — {r['bitwise_restore_checks']} "
        "checks, all bitwise identical (the script asserts it), and α = 0 gives the clean "
        "model's accuracy exactly.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 5. how many layers


def section_depth(z: Zoo, png: Path) -> dict[str, Any]:
    """RA gain, TA and storage against K = 1..all units (fp32 re-extraction)."""
    model = z.backbone
    n_conv = len(shallow_units(model, None))
    ks = list(range(1, n_conv + 1))
    names_at = {k: unit_params(model, k) for k in ks}
    base_ta = z.baseline("ta")
    gain: dict[str, list[float]] = {}
    ta: dict[str, list[float]] = {}
    base_ra: dict[str, float] = {}
    numel = []
    for c in z.sweep:
        full = z.fp32_signature(c, layers=n_conv)
        base_ra[c] = z.baseline("ra", c)
        gain[c], ta[c] = [], []
        for k in ks:
            sig = Signature(c, {n: full.tensors[n] for n in names_at[k]}, layers=k)
            with patch(model, {sig: 1.0}):
                gain[c].append(z.acc(model, c) - base_ra[c])
                ta[c].append(z.acc(model))
    full0 = z.fp32_signature(z.sweep[0], layers=n_conv)
    for k in ks:
        sig = Signature("s", {n: full0.tensors[n] for n in names_at[k]})
        numel.append(sig.numel)
    int8 = [
        Signature("s", {n: full0.tensors[n] for n in names_at[k]})
        .quantize(8, "linear", "channel")
        .nbytes
        for k in ks
    ]
    mean_gain = np.mean([gain[c] for c in z.sweep], axis=0)
    mean_ta = np.mean([ta[c] for c in z.sweep], axis=0)

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 5))
    for c, color in zip(z.sweep, _colors(len(z.sweep)), strict=True):
        ax0.plot(ks, gain[c], "o-", color=color, lw=1, ms=3, label=_short(c))
    ax0.plot(ks, mean_gain, "k-", lw=2.5, label="mean RA gain")
    ax0.plot(ks, mean_ta - base_ta, "k--", lw=1.5, label="mean TA change")
    ax0.axhline(0, color="grey", lw=0.8)
    ax0.axvline(z.spec.layers, color="grey", ls=":", lw=1)
    ax0.set(xlabel="K (first K units)", ylabel="accuracy change (points)")
    ax0.set_title("RA gain over θ_std (α = 1) against K")
    ax0.set_xticks(ks)
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3)
    full_bytes = z.full_bytes
    ax1.plot(ks, [4 * n / 1e3 for n in numel], "o-", label="signature, fp32")
    ax1.plot(ks, [b / 1e3 for b in int8], "s-", label="signature, int8 per channel")
    ax1.axhline(full_bytes / 1e3, color="tab:red", ls="--", label="full model, fp32")
    ax1.set_yscale("log")
    ax1.set(xlabel="K", ylabel="KB (log)", title="Storage against K")
    ax1.set_xticks(ks)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    _save(fig, png)
    return {
        "ks": ks,
        "gain": gain,
        "ta": ta,
        "base_ta": base_ta,
        "base_ra": base_ra,
        "mean_gain": mean_gain.tolist(),
        "mean_ta": mean_ta.tolist(),
        "fp32_bytes": [4 * n for n in numel],
        "int8_bytes": int8,
        "full_model_bytes": full_bytes,
    }


def render_depth(r: dict[str, Any]) -> str:
    ks, mg, mt = r["ks"], r["mean_gain"], r["mean_ta"]
    k0 = r["setup"]["layers"]
    best = int(np.argmax(mg))
    reach = next((k for k, g in zip(ks, mg, strict=True) if g >= 0.9 * max(mg)), ks[-1])
    lines = [
        f"Mean over {', '.join(r['gain'])}; α = 1, fp32 signatures re-extracted with K layers; "
        f"{r['setup']['test_images']} test images.",
        "",
        "| K | " + " | ".join(str(k) for k in ks) + " |",
        "| --- |" + " ---: |" * len(ks),
        "| mean RA gain | " + " | ".join(f"{g:+.1f}" for g in mg) + " |",
        "| mean TA change | " + " | ".join(f"{t - r['base_ta']:+.1f}" for t in mt) + " |",
        "| fp32 KB | " + " | ".join(f"{b / 1e3:.0f}" for b in r["fp32_bytes"]) + " |",
        "| full / signature (fp32) | "
        + " | ".join(f"{r['full_model_bytes'] / b:.1f}×" for b in r["fp32_bytes"])
        + " |",
        "",
        f"Headline: the mean RA gain peaks at K = {ks[best]} ({mg[best]:+.1f} points) and reaches "
        f"90% of its peak at K = {reach}; at the zoo's K = {k0} it is {mg[k0 - 1]:+.1f} points "
        f"for {r['fp32_bytes'][k0 - 1] / r['fp32_bytes'][-1] * 100:.0f}% of the bytes of K = "
        f"{ks[-1]}.",
        "",
        f"Recommended K for {r['setup']['architecture']}: **{choose_units(ks, mg)}**, the smallest "
        "K whose mean RA gain is within one point of the best (the registry's `recommended_units`, "
        "printed by `rws info`).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 6. composable

ALPHA_RULES: dict[str, Callable[[int], float]] = {
    "α = 1": lambda n: 1.0,
    "α = 1/√n": lambda n: 1.0 / math.sqrt(n),
    "α = 1/n": lambda n: 1.0 / n,
}


def section_compose(z: Zoo, png: Path) -> dict[str, Any]:
    """Pairs of signatures against each alone; all standard signatures at once under α rules."""
    model = z.backbone
    sig = z.signature
    base_ta = z.baseline("ta")
    base_ra = {c: z.baseline("ra", c) for c in z.corruptions}
    own_ra = {c: z.baseline("own_ra", c) for c in z.corruptions}
    own_ta = {c: z.baseline("own_ta", c) for c in z.sweep}
    pairs = []
    for a, b in combinations(z.sweep, 2):
        both = {sig(a): 1.0, sig(b): 1.0}
        pairs.append(
            {
                "a": a,
                "b": b,
                "on_a": {
                    "none": base_ra[a],
                    "a": own_ra[a],
                    "b": z.acc_with(model, {sig(b): 1.0}, a),
                    "a+b": z.acc_with(model, both, a),
                },
                "on_b": {
                    "none": base_ra[b],
                    "a": z.acc_with(model, {sig(a): 1.0}, b),
                    "b": own_ra[b],
                    "a+b": z.acc_with(model, both, b),
                },
                "ta": {"a": own_ta[a], "b": own_ta[b], "a+b": z.acc_with(model, both)},
            }
        )
    std = [c for c in STANDARD_CORRUPTIONS if c in z.corruptions]
    n = len(std)
    rules = {}
    for rule, fn in ALPHA_RULES.items():
        mix = {sig(c): fn(n) for c in std}
        with patch(model, mix):
            ra = {c: z.acc(model, c) for c in z.corruptions}
            ta = z.acc(model)
        scores = list(ra.values()) + [ta]
        rules[rule] = {
            "alpha": fn(n),
            "ta": ta,
            "ra": ra,
            "mean_ra": float(np.mean(list(ra.values()))),
            "score": float(np.mean(scores)),
        }
    best = max(rules, key=lambda k: rules[k]["score"])
    none_score = float(np.mean([*base_ra.values(), base_ta]))

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1, 1.4]})
    labels = [f"{_short(p['a'])}\n+{_short(p['b'])}" for p in pairs]
    xs = np.arange(len(pairs))
    # per pair: mean over its two corruptions of RA with the own signature alone vs both
    alone = [(p["on_a"]["a"] + p["on_b"]["b"]) / 2 for p in pairs]
    both = [(p["on_a"]["a+b"] + p["on_b"]["a+b"]) / 2 for p in pairs]
    other = [(p["on_a"]["b"] + p["on_b"]["a"]) / 2 for p in pairs]
    none = [(p["on_a"]["none"] + p["on_b"]["none"]) / 2 for p in pairs]
    w = 0.2
    for i, (vals, lab) in enumerate(
        (
            (none, "no signature"),
            (other, "the other signature alone"),
            (alone, "own signature alone"),
            (both, "both signatures (α = 1 each)"),
        )
    ):
        ax0.bar(xs + (i - 1.5) * w, vals, w, label=lab, color=_colors(4)[i])
    ax0.set_xticks(xs, labels, fontsize=6, rotation=90)
    ax0.set_ylabel("RA (%), mean over the pair's two corruptions")
    ax0.set_title("Pairs: applied together vs each alone")
    ax0.legend(fontsize=7)
    ax0.grid(axis="y", alpha=0.3)
    cs = z.corruptions
    xs2 = np.arange(len(cs) + 1)
    ax1.plot(xs2, [base_ta, *[base_ra[c] for c in cs]], "k_", ms=12, mew=2, label="no signature")
    ax1.plot(xs2[1:], [own_ra[c] for c in cs], "k*", ms=8, label="own signature alone")
    for (rule, res), color in zip(rules.items(), _colors(len(rules)), strict=True):
        ax1.plot(xs2, [res["ta"], *[res["ra"][c] for c in cs]], "o", color=color, label=rule)
    ax1.set_xticks(xs2, ["clean (TA)", *[_short(c) for c in cs]], rotation=60, ha="right")
    ax1.set_ylabel("accuracy (%)")
    ax1.set_title(f"All {n} standard signatures at once")
    ax1.legend(fontsize=7, ncol=2)
    ax1.grid(alpha=0.3)
    _save(fig, png)
    return {
        "base_ta": base_ta,
        "base_ra": base_ra,
        "own_ra": own_ra,
        "own_ta": own_ta,
        "pairs": pairs,
        "all_standard": {"n": n, "signatures": std, "rules": rules, "best": best},
        "none_score": none_score,
    }


def render_compose(r: dict[str, Any]) -> str:
    pairs = r["pairs"]
    lines = [
        f"Pairs (α = 1 each), RA (%) on each corruption of the pair, "
        f"{r['setup']['test_images']} test images:",
        "",
        "| pair | on A: none / A / B / A+B | on B: none / A / B / A+B | TA: A / B / A+B |",
        "| --- | --- | --- | --- |",
    ]
    for p in pairs:
        oa, ob, t = p["on_a"], p["on_b"], p["ta"]
        lines.append(
            f"| {p['a']} + {p['b']} | {oa['none']:.1f} / {oa['a']:.1f} / {oa['b']:.1f} / "
            f"**{oa['a+b']:.1f}** | {ob['none']:.1f} / {ob['a']:.1f} / {ob['b']:.1f} / "
            f"**{ob['a+b']:.1f}** | {t['a']:.1f} / {t['b']:.1f} / {t['a+b']:.1f} |"
        )
    loss = [
        (p["on_a"]["a"] - p["on_a"]["a+b"] + p["on_b"]["b"] - p["on_b"]["a+b"]) / 2 for p in pairs
    ]
    beats_none = sum(
        p["on_a"]["a+b"] > p["on_a"]["none"] and p["on_b"]["a+b"] > p["on_b"]["none"] for p in pairs
    )
    al = r["all_standard"]
    cs = list(r["base_ra"])
    lines += [
        "",
        f"Pairs: applying both costs {np.mean(loss):.1f} points on average against the own "
        f"signature alone (range {min(loss):.1f} … {max(loss):.1f}); both together beat the "
        f"unpatched model on both corruptions for {beats_none} of {len(pairs)} pairs.",
        "",
        f"All {al['n']} standard signatures at once (RA on all {len(cs)} corruptions; * = not "
        "among the patched signatures; score = mean of TA and the RAs):",
        "",
        "| | TA | "
        + " | ".join(c + ("" if c in al["signatures"] else " *") for c in cs)
        + " | mean RA | score |",
        "| --- |" + " ---: |" * (len(cs) + 3),
        f"| no signature | {r['base_ta']:.1f} | "
        + " | ".join(f"{r['base_ra'][c]:.1f}" for c in cs)
        + f" | {np.mean(list(r['base_ra'].values())):.1f} | {r['none_score']:.1f} |",
        "| own signature alone | – | "
        + " | ".join(f"{r['own_ra'][c]:.1f}" for c in cs)
        + f" | {np.mean(list(r['own_ra'].values())):.1f} | |",
    ]
    for rule, res in al["rules"].items():
        lines.append(
            f"| {rule} (α = {res['alpha']:.3f}) | {res['ta']:.1f} | "
            + " | ".join(f"{res['ra'][c]:.1f}" for c in cs)
            + f" | {res['mean_ra']:.1f} | {res['score']:.1f} |"
        )
    b = al["rules"][al["best"]]
    lines += [
        "",
        f"Recommended by measurement: **{al['best']}** (score {b['score']:.1f}: TA "
        f"{b['ta']:.1f}, mean RA {b['mean_ra']:.1f}, against {r['none_score']:.1f} unpatched).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 7. lightweight

QUANT_SCHEMES: tuple[tuple[str, int | None, str | None, str | None], ...] = (
    ("fp32", None, None, None),
    ("fp16", None, None, None),
    ("int8 linear/tensor", 8, "linear", "tensor"),
    ("int8 linear/channel", 8, "linear", "channel"),
    ("int4 linear/tensor", 4, "linear", "tensor"),
    ("int4 linear/channel", 4, "linear", "channel"),
    ("log8/channel", 8, "log", "channel"),
    ("log4/channel", 4, "log", "channel"),
)


def quantized(sig: Signature, label: str, bits: int | None, scheme: str | None, gran: str | None):
    """``(signature as used, stored bytes)`` for one storage scheme."""
    if label == "fp32":
        return sig, 4 * sig.numel
    if label == "fp16":
        return sig.replace(tensors={n: t.half().float() for n, t in sig.tensors.items()}), (
            2 * sig.numel
        )
    q = sig.quantize(bits=bits or 8, scheme=scheme or "linear", granularity=gran or "tensor")
    return q, q.nbytes


def section_quant(z: Zoo, png: Path) -> dict[str, Any]:
    """Bytes, compaction ratio and RA/TA for each storage scheme (sweep corruptions)."""
    model = z.backbone
    full = z.full_bytes
    base_ra = {c: z.baseline("ra", c) for c in z.sweep}
    base_ta = z.baseline("ta")
    rows: dict[str, dict[str, Any]] = {
        label: {"bytes": [], "ra": {}} for label, *_ in QUANT_SCHEMES
    }
    for c in z.sweep:
        fp32 = z.fp32_signature(c)
        for label, bits, scheme, gran in QUANT_SCHEMES:
            sig, nbytes = quantized(fp32, label, bits, scheme, gran)
            rows[label]["bytes"].append(nbytes)
            rows[label]["ra"][c] = z.acc_with(model, {sig: 1.0}, c)
            rows[label]["cos_to_fp32"] = rows[label].get("cos_to_fp32", []) + [cosine(sig, fp32)]
    out = {}
    for label, row in rows.items():
        nbytes = float(np.mean(row["bytes"]))
        out[label] = {
            "bytes": nbytes,
            "ratio": full / nbytes,
            "ra": row["ra"],
            "mean_ra": float(np.mean(list(row["ra"].values()))),
            "cos_to_fp32": float(np.mean(row["cos_to_fp32"])),
        }

    labels = list(out)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(14, 5.5))
    bars = ax0.bar(range(len(labels)), [out[k]["bytes"] / 1e3 for k in labels], color="tab:blue")
    for bar, k in zip(bars, labels, strict=True):
        ax0.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{out[k]['ratio']:.0f}×",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax0.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax0.set_ylabel("KB per signature")
    ax0.set_title(f"Signature size (label: full model {full / 1e6:.1f} MB ÷ signature)")
    ax0.grid(axis="y", alpha=0.3)
    for c, color in zip(z.sweep, _colors(len(z.sweep)), strict=True):
        ax1.plot(range(len(labels)), [out[k]["ra"][c] for k in labels], "o-", color=color)
        ax1.axhline(base_ra[c], color=color, ls=":", lw=1)
        ax1.plot([], [], "o-", color=color, label=_short(c))
    ax1.plot([], [], "k:", label="unpatched RA")
    ax1.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax1.set_ylabel("RA (%)")
    ax1.set_title(f"RA of θ_std + signature (α = 1, K = {z.spec.layers})")
    ax1.legend(fontsize=7, ncol=2)
    ax1.grid(alpha=0.3)
    _save(fig, png)
    return {"schemes": out, "base_ra": base_ra, "base_ta": base_ta, "full_model_bytes": full}


def render_quant(r: dict[str, Any]) -> str:
    s = r["schemes"]
    base = float(np.mean(list(r["base_ra"].values())))
    lines = [
        f"K = {r['setup']['layers']}; mean over {', '.join(r['base_ra'])}; α = 1; "
        f"{r['setup']['test_images']} test images; full model {r['full_model_bytes'] / 1e6:.2f} "
        f"MB (fp32). Unpatched: mean RA {base:.1f}, TA {r['base_ta']:.1f}.",
        "",
        "| storage | KB | full model ÷ signature | cos to fp32 | mean RA | "
        + " | ".join(f"RA {c}" for c in r["base_ra"])
        + " |",
        "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(r["base_ra"]),
    ]
    for label, v in s.items():
        lines.append(
            f"| {label} | {v['bytes'] / 1e3:.0f} | {v['ratio']:.1f}× | {v['cos_to_fp32']:.4f} "
            f"| {v['mean_ra']:.1f} | "
            + " | ".join(f"{v['ra'][c]:.1f}" for c in r["base_ra"])
            + " |"
        )
    f32 = s["fp32"]["mean_ra"]
    ok = [k for k, v in s.items() if v["mean_ra"] >= f32 - 0.5]
    best = max(ok, key=lambda k: s[k]["ratio"])
    lines += [
        "",
        f"Headline: {s['fp32']['ratio']:.1f}× smaller than the full model in fp32, "
        f"{s['int8 linear/channel']['ratio']:.1f}× as shipped (int8 per channel); the smallest "
        f"format within 0.5 points of fp32's mean RA is {best} ({s[best]['ratio']:.1f}×).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 8. transferable


def updated_backbone(z: Zoo, epochs: float, lr: float) -> Path:
    """θ_std fine-tuned further on clean data (rws_hub.zoo.training; resumable, cached)."""
    from rws_hub.zoo.training import TrainConfig, train

    cfg = TrainConfig(
        stage="clean",
        data=z.spec.data,
        out=str(z.work / "transfer" / f"updated-e{epochs:g}-lr{lr:g}"),
        architecture=z.spec.architecture,
        width=z.spec.width,
        init=str(z.path("clean")),
        epochs=epochs,
        lr=lr,
        schedule="cosine",
        eval_limit=z.args.limit,
        seed=z.spec.seed + 1,  # another data order than θ_std's own run
    )
    path = train(cfg, resume=True, progress=False)
    assert path is not None
    return path


def section_transfer(z: Zoo, png: Path) -> dict[str, Any]:
    """RA gain of each signature on θ_std (in-domain) and on an updated backbone θ_std'."""
    t0 = time.time()
    path = updated_backbone(z, z.args.transfer_epochs, z.args.transfer_lr)
    train_s = time.time() - t0
    upd = load_state_model(z.spec, path)
    upd_state, std_state = load_file(str(path)), z.state("clean")
    names = z.signature(z.corruptions[0]).names
    drift = {
        "all": rel_diff(upd_state, std_state, list(std_state)),
        "signature_layers": rel_diff(upd_state, std_state, names),
    }
    rows = {}
    for c in z.corruptions:
        sig = {z.signature(c): 1.0}
        rows[c] = {
            "std": z.baseline("ra", c),
            "std_patched": z.baseline("own_ra", c),
            "updated": z.acc(upd, c),
            "updated_patched": z.acc_with(upd, sig, c),
        }
    in_gain = [v["std_patched"] - v["std"] for v in rows.values()]
    tr_gain = [v["updated_patched"] - v["updated"] for v in rows.values()]

    fig, ax = plt.subplots(figsize=(13, 5))
    cs = list(rows)
    xs = np.arange(len(cs))
    ax.bar(xs - 0.2, in_gain, 0.4, label="in-domain: θ_std + v_c − θ_std")
    ax.bar(xs + 0.2, tr_gain, 0.4, label="transferred: θ_std' + v_c − θ_std'")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(xs, [_short(c) for c in cs], rotation=45, ha="right")
    ax.set_ylabel("RA gain (points)")
    ax.set_title(
        f"Signatures on an updated backbone θ_std' (θ_std + {z.args.transfer_epochs:g} epoch "
        f"clean fine-tuning, lr {z.args.transfer_lr:g})"
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, png)
    return {
        "epochs": z.args.transfer_epochs,
        "lr": z.args.transfer_lr,
        "train_seconds": train_s,
        "std_ta": z.baseline("ta"),
        "updated_ta": z.acc(upd),
        "drift": drift,
        "rows": rows,
        "in_domain_gain_mean": float(np.mean(in_gain)),
        "transferred_gain_mean": float(np.mean(tr_gain)),
    }


def render_transfer(r: dict[str, Any]) -> str:
    lines = [
        f"θ_std' = θ_std fine-tuned {_epochs(r['epochs'])} more on clean CIFAR-10 (lr "
        f"{r['lr']:g}, cosine, another data order; {r['train_seconds']:.0f} s). It moved "
        f"{r['drift']['all']:.4f} of its norm overall and {r['drift']['signature_layers']:.4f} "
        f"on the signature's layers; TA {r['std_ta']:.1f} (θ_std) vs {r['updated_ta']:.1f} "
        f"(θ_std'). {r['setup']['test_images']} test images, α = 1.",
        "",
        "| corruption | θ_std | θ_std + v | gain | θ_std' | θ_std' + v | gain |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, v in r["rows"].items():
        lines.append(
            f"| {c} | {v['std']:.1f} | {v['std_patched']:.1f} | "
            f"{v['std_patched'] - v['std']:+.1f} | {v['updated']:.1f} | "
            f"{v['updated_patched']:.1f} | {v['updated_patched'] - v['updated']:+.1f} |"
        )
    i, t = r["in_domain_gain_mean"], r["transferred_gain_mean"]
    ratio = f" ({100 * t / i:.0f}% of the in-domain gain)" if i > 0 else ""
    lines += ["", f"Headline: mean RA gain {i:+.1f} in-domain vs {t:+.1f} transferred{ratio}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 8b. across data sets


def conv_cosine(a: Signature, b: Signature) -> float:
    """:func:`~rws_hub.core.signature.cosine` over the conv weights (4-D tensors) only: the
    direction of the weight change, without batch-norm statistics whose scale would dominate."""

    def convs(s: Signature) -> Signature:
        return Signature(s.name, {n: t for n, t in s.tensors.items() if t.dim() == 4})

    return cosine(convs(a), convs(b))


def _recorded_transfer(
    o: Zoo, cs: list[str]
) -> tuple[dict[str, dict[str, float]], float, int] | None:
    """(rows, backbone TA, test images) of section 8b from the other entry's ``eval.json``,
    when its evaluation measured the transferred signatures on its whole test set (with
    ``--other-limit`` given, or without the record, the section measures them itself)."""
    path = o.kept("eval.json")
    if o.args.limit is not None or not path.exists():
        return None
    ev = json.loads(path.read_text())
    moved = ev.get("transferred", {}).get("corruptions", {})
    if any(c not in moved or c not in ev.get("robust_models", {}) for c in cs):
        return None
    table = eval_rows(ev, o.spec.severity, cs)
    rows = {
        c: {
            "std": t["backbone_ra"],
            "own": t["patched_ra"],
            "transferred": t["transferred_ra"],
            "transferred_ta": t["transferred_ta"],
            "own_ta": t["patched_ta"],
            "robust": t["robust_model_ra"],
        }
        for c, t in table.items()
    }
    return rows, ev["backbone"]["clean"]["none"], int(ev["images"])


def section_datasets(z: Zoo, png: Path) -> dict[str, Any]:
    """The other entry (``--other-work``/``--other-folder``: fine-tuned from this entry's θ_pre
    on another data set): its backbone alone, with its own signature, with this entry's
    signature of the same corruption, and its dedicated robust model, on its own test images;
    and the cosine between the two entries' signatures of each pair of corruptions."""
    if not z.args.other_work:
        raise SystemExit("section 8b needs --other-work and --other-folder (another data set)")
    o = Zoo(
        argparse.Namespace(
            **{
                **vars(z.args),
                "work": z.args.other_work,
                "folder": z.args.other_folder,
                "data": None,
                "limit": z.args.other_limit,
            }
        )
    )
    if o.signature(o.corruptions[0]).lineage != z.signature(z.corruptions[0]).lineage:
        raise SystemExit("the other entry is not of this entry's lineage (another θ_pre)")
    cs = [c for c in z.corruptions if c in o.corruptions]
    recorded = _recorded_transfer(o, cs)
    if recorded is not None:  # the other entry's own evaluation (rws zoo build) measured it all
        rows, std_ta, images, source = *recorded, "eval.json"
    else:
        model = o.backbone
        rows = {}
        for c in cs:
            rows[c] = {
                "std": o.baseline("ra", c),
                "own": o.baseline("own_ra", c),
                "transferred": o.acc_with(model, {z.signature(c): 1.0}, c),
                "transferred_ta": o.acc_with(model, {z.signature(c): 1.0}),
                "own_ta": o.baseline("own_ta", c),
                "robust": o.acc(o.model(c), c),
            }
        std_ta, images, source = o.baseline("ta"), len(o.test), "measured here"
    own_gain = [r["own"] - r["std"] for r in rows.values()]
    tr_gain = [r["transferred"] - r["std"] for r in rows.values()]
    rob_gain = [r["robust"] - r["std"] for r in rows.values()]
    cos = np.array([[conv_cosine(z.signature(a), o.signature(b)) for b in cs] for a in cs])
    same = np.diag(cos)
    off = cos.copy()
    np.fill_diagonal(off, -np.inf)
    row_best, col_best = off.max(1), off.max(0)  # other corruptions on either side
    consistent = [c for i, c in enumerate(cs) if same[i] > max(row_best[i], col_best[i])]
    own_mean = float(np.mean(own_gain))

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [1.4, 1]})
    xs = np.arange(len(cs))
    w = 0.27
    ax0.bar(xs - w, own_gain, w, label="own signature (this data set)")
    ax0.bar(xs, tr_gain, w, label=f"transferred from {z.spec.dataset}")
    ax0.bar(xs + w, rob_gain, w, label="dedicated robust model")
    ax0.axhline(0, color="grey", lw=0.8)
    ax0.set_xticks(xs, [_short(c) for c in cs], rotation=45, ha="right")
    ax0.set_ylabel("RA gain over the backbone (points)")
    ax0.set_title(f"{o.spec.name}: RA gain on {o.spec.dataset}")
    ax0.legend(fontsize=8)
    ax0.grid(axis="y", alpha=0.3)
    lim = float(max(np.abs(cos).max(), 1e-6))  # the colour scale spans the measured cosines
    im = ax1.imshow(cos, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax1.set_xticks(xs, [_short(c) for c in cs], rotation=90, fontsize=7)
    ax1.set_yticks(xs, [_short(c) for c in cs], fontsize=7)
    ax1.set_xlabel(f"{o.spec.dataset} signature")
    ax1.set_ylabel(f"{z.spec.dataset} signature")
    ax1.set_title("cosine between the two entries' signatures (conv weights)")
    fig.colorbar(im, ax=ax1)
    _save(fig, png)
    return {
        "other": {"zoo": o.spec.name, "dataset": o.spec.dataset, "test_images": images},
        "source": source,
        "std_ta": std_ta,
        "rows": rows,
        "own_gain_mean": own_mean,
        "transferred_gain_mean": float(np.mean(tr_gain)),
        "robust_gain_mean": float(np.mean(rob_gain)),
        "recovered": float(np.mean(tr_gain)) / own_mean if own_mean else None,
        "cosine": {"corruptions": cs, "matrix": cos.tolist()},
        "same_cosine": {c: float(same[i]) for i, c in enumerate(cs)},
        "best_other_cosine": {c: float(max(row_best[i], col_best[i])) for i, c in enumerate(cs)},
        "consistent": consistent,
    }


def render_datasets(r: dict[str, Any]) -> str:
    o = r["other"]
    lines = [
        f"Backbone `{o['zoo']}`: this entry's θ_pre with a new head, fine-tuned on {o['dataset']}"
        f" (TA {r['std_ta']:.1f}); RA in % on its {o['test_images']} test images, α = 1; "
        "'transferred' patches it with this entry's signature of the same corruption"
        + (
            " (accuracies from that entry's own evaluation, `eval.json` of `rws zoo build`)."
            if r.get("source") == "eval.json"
            else "."
        ),
        "",
        "| corruption | backbone | + own | + transferred | dedicated | TA + own | TA + transferred "
        "| cos same | cos best other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c, v in r["rows"].items():
        lines.append(
            f"| {c} | {v['std']:.1f} | {v['own']:.1f} | {v['transferred']:.1f} | "
            f"{v['robust']:.1f} | {v['own_ta']:.1f} | {v['transferred_ta']:.1f} | "
            f"{r['same_cosine'][c]:.2f} | {r['best_other_cosine'][c]:.2f} |"
        )
    rec = r["recovered"]
    lines += [
        "",
        f"Headline: mean RA gain {r['own_gain_mean']:+.1f} with the own signatures, "
        f"{r['transferred_gain_mean']:+.1f} transferred"
        + (f" ({100 * rec:.0f}% of the own gain)" if rec is not None else "")
        + f", {r['robust_gain_mean']:+.1f} for the dedicated models; the same corruption's "
        f"signatures are each other's closest for {len(r['consistent'])} of {len(r['rows'])} "
        "corruptions (cosine over the conv weights, against every other corruption's signature "
        "on either side).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 9. batch norm

BN_TREATMENTS: dict[str, dict[str, str]] = {
    "conv only": {"bn": "none"},
    "+ BN scale/shift, clean statistics": {"bn": "affine"},
    "+ statistics as projected deltas": {"bn": "stats", "stats": "project"},
    "+ robust statistics swapped in": {"bn": "stats", "stats": "swap"},
}
"""What a signature can carry of each covered unit's batch norm (``extract``'s ``bn``/``stats``).
"Clean statistics" leaves the running mean and variance as the backbone has them; "projected"
treats them like every other tensor (α-scaled, τ_c without its component along τ_std);
"swapped" carries θ_c − θ_std, so α = 1 puts the robust model's statistics in."""


def section_bnstats(z: Zoo, png: Path) -> dict[str, Any]:
    """Patched RA and TA of the fp32 signature (α = 1, the zoo's K) under each treatment of
    the batch norms, for every corruption, with θ_std and θ_c for reference."""
    if not z.has_bn:
        raise SystemExit(f"{z.spec.architecture} has no batch norm: section 9 does not apply")
    model = z.backbone
    base_ta = z.baseline("ta")
    ra: dict[str, dict[str, float]] = {t: {} for t in BN_TREATMENTS}
    ta: dict[str, dict[str, float]] = {t: {} for t in BN_TREATMENTS}
    std_ra, rob_ra, rob_ta = {}, {}, {}
    for c in z.corruptions:
        std_ra[c] = z.baseline("ra", c)
        robust = z.model(c)
        rob_ra[c], rob_ta[c] = z.acc(robust, c), z.acc(robust)
        for label, how in BN_TREATMENTS.items():
            sig = z.fp32_signature(c, **how)
            with patch(model, {sig: 1.0}):
                ra[label][c], ta[label][c] = z.acc(model, c), z.acc(model)
        print(f"[results] bnstats {c}: " + ", ".join(f"{ra[t][c]:.1f}" for t in ra), flush=True)
    cs = z.corruptions
    robust_gain = float(np.mean([rob_ra[c] - std_ra[c] for c in cs]))
    summary = {}
    for label in BN_TREATMENTS:
        gain = float(np.mean([ra[label][c] - std_ra[c] for c in cs]))
        summary[label] = {
            "mean_ra": float(np.mean([ra[label][c] for c in cs])),
            "mean_ta": float(np.mean([ta[label][c] for c in cs])),
            "gain": gain,
            "share": gain / robust_gain if robust_gain else None,
            "worse_than_std": sum(ra[label][c] < std_ra[c] for c in cs),
        }
    best = max(summary, key=lambda t: (summary[t]["mean_ra"], summary[t]["mean_ta"]))

    fig, ax = plt.subplots(figsize=(13, 5))
    xs = np.arange(len(cs))
    w = 0.8 / (len(BN_TREATMENTS) + 2)
    bars = [("θ_std", [std_ra[c] for c in cs]), ("θ_c (dedicated)", [rob_ra[c] for c in cs])]
    bars += [(label, [ra[label][c] for c in cs]) for label in BN_TREATMENTS]
    for i, (label, vals) in enumerate(bars):
        ax.bar(
            xs + (i - len(bars) / 2 + 0.5) * w, vals, w, label=label, color=_colors(len(bars))[i]
        )
    ax.set_xticks(xs, [_short(c) for c in cs], rotation=45, ha="right")
    ax.set(ylabel="robust accuracy (%)", ylim=(0, 105))
    ax.set_title(f"RA with the signature (α = 1, K = {z.spec.layers}) by what it carries of BN")
    ax.legend(ncol=3, fontsize=8, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, png)
    return {
        "treatments": {t: dict(h) for t, h in BN_TREATMENTS.items()},
        "ra": ra,
        "ta": ta,
        "std_ta": base_ta,
        "std_ra": std_ra,
        "robust_ra": rob_ra,
        "robust_ta": rob_ta,
        "robust_gain_mean": robust_gain,
        "summary": summary,
        "best": best,
    }


def render_bnstats(r: dict[str, Any]) -> str:
    n = len(r["std_ra"])
    cs = list(r["std_ra"])
    lines = [
        f"Means over {n} corruptions, fp32 signatures re-extracted with the zoo's K = "
        f"{r['setup']['layers']} units, α = 1, {r['setup']['test_images']} test images. Gain "
        "share: the signature's mean RA gain over θ_std as a share of the dedicated models'.",
        "",
        "| what the signature carries of BN | mean RA | mean TA | RA gain | gain share "
        "| corruptions worse than θ_std |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| nothing (θ_std) | {np.mean(list(r['std_ra'].values())):.1f} | {r['std_ta']:.1f} "
        "| | | |",
        f"| θ_c (dedicated models) | {np.mean(list(r['robust_ra'].values())):.1f} "
        f"| {np.mean(list(r['robust_ta'].values())):.1f} | {r['robust_gain_mean']:+.1f} | 100% | |",
    ]
    for label, s in r["summary"].items():
        bold = "**" if label == r["best"] else ""
        share = f"{100 * s['share']:.0f}%" if s["share"] is not None else "–"
        lines.append(
            f"| {bold}{label}{bold} | {s['mean_ra']:.1f} | {s['mean_ta']:.1f} | {s['gain']:+.1f} "
            f"| {share} | {s['worse_than_std']} |"
        )
    lines += [
        "",
        "Per corruption, RA (TA) in %:",
        "",
        "| corruption | θ_std | θ_c | " + " | ".join(r["summary"]) + " |",
        "| --- |" + " ---: |" * (2 + len(r["summary"])),
    ]
    for c in cs:
        cells = [f"{r['ra'][t][c]:.1f} ({r['ta'][t][c]:.1f})" for t in r["summary"]]
        lines.append(
            f"| {c} | {r['std_ra'][c]:.1f} | {r['robust_ra'][c]:.1f} ({r['robust_ta'][c]:.1f}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the report

CLAIMS: dict[str, str] = {
    "main": "A signature added to the standard model brings its robust accuracy close to that "
    "of a model fine-tuned on the corruption, at a small fraction of the storage, and keeps "
    "its clean accuracy.",
    "layers": "Robust and standard weights mostly differ in the shallow layers, which is why a "
    "signature only needs the first K conv layers (K = 7 of 13 for VGG-16).",
    "cosine": "Signatures are discriminative: the signatures of different corruptions point in "
    "different directions.",
    "alpha": "In-situ adjustable: a signature is added and taken off without retraining "
    "(taking it off restores the clean model), and α sets its strength.",
    "depth": "Covering the first K conv layers is enough; deeper layers add storage, not "
    "robustness (published default K = 7 for VGG-16).",
    "compose": "Composable: several signatures can be applied at once, giving robustness to "
    "several corruptions in one model.",
    "quant": "Lightweight: with quantization a signature is up to 13× smaller than a full copy "
    "of the weights, without losing its robustness.",
    "datasets": "Transferable across data sets: a signature extracted on one data set patches a "
    "model fine-tuned on another data set from the same pretrained weights, and the signatures "
    "of one corruption on two data sets point the same way (consistency).",
    "bnstats": "On batch-norm networks the corruption shifts the batch-norm statistics; the "
    "published ResNet scripts re-estimate them on corrupted data. (Not a claim of the paper: "
    "which treatment of the statistics a signature should carry is this project's question.)",
    "transfer": "Transferable: signatures of one corruption are consistent across data sets, "
    "and remain effective patches on other models fine-tuned from the same θ_pre — on another "
    "data set, or when the clean backbone is continually adapted or updated.",
}

WHY: dict[str, str] = {
    "datasets": "The paper pretrains on ImageNet and fine-tunes on each data set; here θ_pre is "
    "this entry's CIFAR-10 pretraining, and the other data set's backbone and robust models are "
    "fine-tuned from it after a head stage adapts it to the new classes (a new classifier, and "
    "with `--head-frozen-units K` every layer past the first K units, which stay at θ_pre; "
    "docs/training.md). Both entries' "
    "signatures cover the same K units. Cosines are taken over the conv weights: the batch-norm "
    "statistics a signature also carries have a scale of their own and would decide the "
    "cosine alone.",
    "bnstats": "Each θ_c is fine-tuned on batches that are {pct:.0f}% corrupted, so its running "
    "statistics are those of that mix; the covered units' statistics move most under a "
    "corruption (the first feature maps follow the image statistics directly), which is why a "
    "signature without them recovers so little. 'Swap' puts the robust model's statistics in "
    "as they are (α = 1); 'projected' treats them like the weights, adding the robust change "
    "without its component along the clean change θ_std − θ_pre, which θ_std already holds. "
    "The variance delta is a plain difference, raised by the kernel to at least 0.2 of the backbone's (`VARIANCE_FLOOR`; never met by a shipped CIFAR-10 signature at α = 1). Measured on "
    "{images} test images (one image = {img:.2f} points).",
    "main": "The paper fine-tunes full-width VGG-16 from ImageNet weights for 50 epochs per "
    "model; this zoo (CPU budget) uses a half-width VGG-16 whose θ_pre is trained on CIFAR-10 "
    "itself for {pretrain}, and fine-tunes each θ_c for only {robust} on a {pct:.0f}/{rest:.0f} "
    "corrupted/clean mix. Absolute accuracies are therefore lower than the paper's and the "
    "dedicated models are weaker; the relation the claim is about — the patched standard model "
    "against the dedicated one — carries over. Where patching falls short of the dedicated model, "
    "the missing part lives in the deeper layers the signature leaves out or along the clean "
    "direction the projection removes. Section 1 reads the zoo's evaluation on its own subset; "
    "the other sections re-measure on theirs, so their baseline numbers differ slightly.",
    "layers": "Both θ_std and θ_c start from the same θ_pre and are fine-tuned briefly, so all "
    "differences are small in absolute terms; the shape across layers is what matters. Part of "
    "the shape is common to any fine-tuning here (the clean task vector also shrinks with depth); "
    "what is specific to robustness is the excess over it, largest in the first layers (second "
    "row of the table vs the first). The classifier (fc) is a single linear layer after global "
    "pooling and is not part of any signature.",
    "cosine": "The matrix uses the shipped signatures (int8 per channel; section 7 gives their "
    "cosine to the fp32 ones). Families are CIFAR-10-C's: noise, blur, weather, digital. "
    "Corruptions that act alike on the image get alike signatures (the blurs, the noises), so "
    "'discriminative' holds between families more than within them. Removing the component "
    "along τ_std lowers the similarity of the raw robust task vectors, which all share the clean "
    "fine-tuning direction.",
    "alpha": "Between 0 and 1, α interpolates smoothly, which is the strength knob the paper "
    "describes. α = 1 puts the patched layers where the dedicated model's are, up to the clean "
    "component; beyond it the patch overshoots that point, so RA can fall again while TA keeps "
    "dropping. Exact removal is by design: `patch` keeps copies "
    "of the touched tensors and copies them back, instead of subtracting α·v (which would not "
    "round-trip in floating point).",
    "depth": "The paper sweeps K on fully trained models; ours are fine-tuned briefly, and the "
    "curve is measured on {n} corruptions and a {images}-image subset, so differences below about "
    "1 point are within noise (one image = {img:.2f} points).",
    "compose": "The published scripts apply the scale twice ((α/n)² per signature with n "
    "signatures — 1/225 for 15), which effectively turns the patch off; we measure the rules "
    "α = 1, 1/√n and 1/n as stated. Several signatures interfere: each is orthogonal to the "
    "clean direction but not to the others (section 3).",
    "quant": "Our ratios exceed the paper's 'up to 13×': the ratio is set by the share of the "
    "model's parameters in the first K conv layers (K = {share_k} covers {share:.0f}% here; VGG-16 "
    "keeps most of its weights in the deep layers) and by the bit width. Sizes are the stored "
    "payload: codes plus the fp32 scales and offsets (per output channel for 'channel', which "
    "costs a few KB more than 'tensor' and is why the zoo ships it: int4 per tensor loses more "
    "of the direction, see the cosine column).",
    "transfer": "The paper transfers across data sets (e.g. a signature from one data set on "
    "a model fine-tuned on another from the same θ_pre). On this CPU budget we test the "
    "updated-backbone case instead: it needs one short clean fine-tuning "
    "({epochs}) instead of a second zoo of robust models on a second data set. The update is "
    "small (θ_std' moved {drift:.1%} of its norm, {drift_k:.1%} on the patched layers): a "
    "continual update of the kind the claim names, not a change of data set; larger drifts and "
    "cross-data-set transfer are not measured here.",
}

RENDER: dict[str, Callable[[dict[str, Any]], str]] = {
    "datasets": render_datasets,
    "bnstats": render_bnstats,
    "main": render_main,
    "layers": render_layers,
    "cosine": render_cosine,
    "alpha": render_alpha,
    "depth": render_depth,
    "compose": render_compose,
    "quant": render_quant,
    "transfer": render_transfer,
}

RUN: dict[str, Callable[[Zoo, Path], dict[str, Any]]] = {
    "datasets": section_datasets,
    "bnstats": section_bnstats,
    "main": section_main,
    "layers": section_layers,
    "cosine": section_cosine,
    "alpha": section_alpha,
    "depth": section_depth,
    "compose": section_compose,
    "quant": section_quant,
    "transfer": section_transfer,
}


def _verdict(key: str, r: dict[str, Any]) -> str:
    """One sentence, from the numbers: does the measurement support the claim?"""
    if key == "main":
        g, rg, rec = r["patched_gain_mean"], r["robust_gain_mean"], r["recovered"]
        ta = r["mean"]["patched_ta"] - r["mean"]["std_ta"]
        rta = r["mean"]["robust_ta"] - r["mean"]["std_ta"]
        if g > 0 and rec is not None and rec >= 0.5:
            how = "Supported"
        elif g > 0:
            how = "Partly supported"
        else:
            how = "Not reproduced"
        pct = f" ({100 * rec:.0f}% of it)" if rec is not None else ""
        return (
            f"{how}: the signature adds {g:+.1f} RA points on average where the dedicated "
            f"models add {rg:+.1f}{pct}, with a mean TA change of {ta:+.1f} (dedicated models "
            f"{rta:+.1f}), at 1/{r['full_model_bytes'] / r['signature_bytes_mean']:.0f} of a "
            "model's storage."
        )
    if key == "layers":
        ratio = r["shallow_mean"] / r["deep_mean"] if r["deep_mean"] else float("inf")
        k = r["setup"]["layers"]
        if ratio > 1.1:
            return (
                f"Supported: relative to their size, the first {k} conv layers change "
                f"{ratio:.1f}× more than the deeper ones."
            )
        return (
            f"Not reproduced in this zoo: the first {k} conv layers change {ratio:.2f}× as much "
            "as the deeper ones (relative to their size)."
        )
    if key == "cosine":
        sig, tv = r["offdiag_mean"], r["task_vector_offdiag_mean"]
        how = "Supported" if sig < 0.5 and sig < tv else "Not reproduced"
        return (
            f"{how}: different corruptions' signatures have mean cosine {sig:.2f}, against "
            f"{tv:.2f} for the raw robust task vectors."
        )
    if key == "alpha":
        alphas = r["alphas"]
        i1 = alphas.index(1.0) if 1.0 in alphas else len(alphas) - 1
        up = sum(r["ra"][c][i1] > r["ra"][c][0] for c in r["ra"])
        mono = sum(
            all(b >= a - 1.0 for a, b in zip(r["ra"][c][:i1], r["ra"][c][1 : i1 + 1], strict=True))
            for c in r["ra"]
        )
        last = len(alphas) - 1
        dra = np.mean([r["ra"][c][last] - r["ra"][c][i1] for c in r["ra"]])
        dta = np.mean([r["ta"][c][last] - r["ta"][c][i1] for c in r["ta"]])
        return (
            f"Supported for removal (bitwise, {r['bitwise_restore_checks']} checks). Strength: "
            f"RA rises from α = 0 to α = 1 for {up} of {len(r['ra'])} corruptions and is "
            f"monotone (within one point) up to α = 1 for {mono}; going from α = 1 to "
            f"α = {alphas[last]:g} changes mean RA by {dra:+.1f} and mean TA by {dta:+.1f} points."
        )
    if key == "depth":
        mg, ks, k0 = r["mean_gain"], r["ks"], r["setup"]["layers"]
        peak = max(mg)
        at = mg[k0 - 1]
        share = at / peak if peak > 0 else 0.0
        how = "Supported" if peak > 0 and share >= 0.8 else "Partly supported"
        if peak <= 0:
            how = "Not reproduced"
        return (
            f"{how}: K = {k0} gives {100 * share:.0f}% of the best mean RA gain over "
            f"K = 1…{ks[-1]}."
        )
    if key == "compose":
        al = r["all_standard"]
        best = al["rules"][al["best"]]
        loss = [
            (p["on_a"]["a"] - p["on_a"]["a+b"] + p["on_b"]["b"] - p["on_b"]["a+b"]) / 2
            for p in r["pairs"]
        ]
        base = float(np.mean(list(r["base_ra"].values())))
        how = "Supported" if best["mean_ra"] > base and np.mean(loss) < 5 else "Partly supported"
        return (
            f"{how}: a pair costs {np.mean(loss):.1f} RA points on average against each "
            f"signature alone; all {al['n']} at once with {al['best']} give a mean RA of "
            f"{best['mean_ra']:.1f} against {base:.1f} unpatched (TA {best['ta']:.1f} vs "
            f"{r['base_ta']:.1f}). "
            + " ".join(
                f"With {rule}: TA {v['ta']:.1f}, mean RA {v['mean_ra']:.1f}."
                for rule, v in al["rules"].items()
                if rule != al["best"]
            )
            + " The rule is a trade-off between robustness and clean accuracy; the score weighs "
            "the clean test set as one more condition."
        )
    if key == "quant":
        sc = r["schemes"]
        f32, i8 = sc["fp32"], sc["int8 linear/tensor"]
        return (
            f"Supported: int8 (per tensor, as published) is {i8['ratio']:.0f}× smaller than the "
            f"full model with a mean RA {i8['mean_ra'] - f32['mean_ra']:+.1f} points from fp32."
        )
    if key == "transfer":
        i, t = r["in_domain_gain_mean"], r["transferred_gain_mean"]
        how = (
            "Supported"
            if i > 0 and t >= 0.5 * i
            else "Partly supported"
            if t > 0
            else "Not reproduced"
        )
        return f"{how}: mean RA gain {t:+.1f} on the updated backbone vs {i:+.1f} in-domain."
    if key == "datasets":
        rec, n, k = r["recovered"], len(r["rows"]), len(r["consistent"])
        ok = rec is not None and rec >= 0.7 and k >= 15 * n / 19
        how = "Supported" if ok else "Partly supported" if (rec or 0) > 0 else "Not reproduced"
        share = f"{100 * rec:.0f}%" if rec is not None else "–"
        return (
            f"{how}: transferred signatures recover {share} of the own signatures' mean RA "
            f"gain; the same corruption's signatures are closest for {k} of {n} corruptions."
        )
    if key == "bnstats":
        b, s = r["best"], r["summary"]
        conv = s["conv only"]
        return (
            f"Best by mean RA: {b} ({s[b]['mean_ra']:.1f} RA, {s[b]['mean_ta']:.1f} TA, "
            f"{100 * (s[b]['share'] or 0):.0f}% of the dedicated models' gain); the conv weights "
            f"alone give {conv['mean_ra']:.1f} RA and leave {conv['worse_than_std']} corruptions "
            "worse than no patch."
        )
    return ""


def _why(key: str, r: dict[str, Any]) -> str:
    return _verdict(key, r) + " " + _why_text(key, r)


def _why_text(key: str, r: dict[str, Any]) -> str:
    s = r["setup"]
    pct = 100 * s["corrupt_fraction"]
    share = 0.0
    if key == "quant":
        share = 100 * r["schemes"]["fp32"]["bytes"] / r["full_model_bytes"]
    return WHY[key].format(
        pretrain=_epochs(s["pretrain_epochs"]),
        robust=_epochs(s["robust_epochs"]),
        pct=pct,
        rest=100 - pct,
        n=len(s["sweep"]),
        images=s["test_images"],
        img=100 / max(1, s["test_images"]),
        share=share,
        share_k=s["layers"],
        epochs=_epochs(r.get("epochs", 0)),
        drift=r.get("drift", {}).get("all", 0.0),
        drift_k=r.get("drift", {}).get("signature_layers", 0.0),
    )


def command(key: str, args: argparse.Namespace | None) -> str:
    """The command line that makes one section (options that differ from the defaults)."""
    parts = ["nice -n 10 .venv/bin/python benchmarks/results.py", key]
    if args is not None:
        for name, default in DEFAULTS.items():
            value = getattr(args, name, default)
            if value != default and value is not None:
                parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


def _split_sections(text: str) -> list[tuple[str, str]]:
    """``[(heading line, body)]`` of the ``## `` sections in ``text`` (outside code fences)."""
    out: list[tuple[str, str]] = []
    heading, body, fence = None, [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            fence = not fence
        if line.startswith("## ") and not fence:
            if heading is not None:
                out.append((heading, "".join(body)))
            heading, body = line.rstrip("\n"), []
        elif heading is not None:
            body.append(line)
    if heading is not None:
        out.append((heading, "".join(body)))
    return out


OTHER_ENTRIES = "## Other zoo entries"
OWN_HEADINGS = (
    "## Setup",
    "## Not yet run",
    OTHER_ENTRIES,
    *(f"## {t}" for t in SECTIONS.values()),
)


def preserved(doc: Path, out: Path) -> str:
    """Parts of the report other tools own: ``<out>/auto_patch.md`` if it exists (else the
    ``<!-- auto-patch -->`` block of the current report), then any other ``## `` section whose
    heading this script does not write."""
    old = doc.read_text() if doc.exists() else ""
    blocks = []
    pattern = re.compile(re.escape(AUTO_BEGIN) + r".*?" + re.escape(AUTO_END), re.S)
    marked = pattern.findall(old)
    rest = pattern.sub("", old)
    side = out / "auto_patch.md"
    if side.exists():
        blocks.append(f"{AUTO_BEGIN}\n{side.read_text().strip()}\n{AUTO_END}")
    else:
        blocks += [m.strip() for m in marked]
    for heading, body in _split_sections(rest):
        if heading.startswith(OWN_HEADINGS):
            continue
        if side.exists() and heading.lower().startswith("## auto-patch"):
            continue  # the side file is the newer copy
        blocks.append(f"{heading}\n{body.rstrip()}")
    return "\n\n".join(blocks)


def _images_line(results: dict[str, dict[str, Any]]) -> str:
    """Which test subset each measured section used."""
    number = {k: i for i, k in enumerate(SECTIONS, 1)}
    used = {
        k: r["setup"]["test_images"] for k, r in results.items() if k not in ("layers", "cosine")
    }
    parts = []
    sev = next((r["setup"]["severity"] for r in results.values()), 5)
    if "main" in used:
        parts.append(f"section 1 reads the zoo's own evaluation ({results['main']['eval_images']})")
        del used["main"]
    sizes = sorted(set(used.values()), reverse=True)
    for n in sizes:
        secs = ", ".join(str(number[k]) for k in used if used[k] == n)
        word = "sections" if "," in secs else "section"
        parts.append(f"{word} {secs}: the first {n} (one image = {100 / max(1, n):.2f} points)")
    return (
        "- CIFAR-10 test images used: "
        + ("; ".join(parts) if parts else "none yet")
        + ". Corrupted images are made with the project's batched CIFAR-10-C corruptions at "
        f"severity {sev}, seeded as `rws eval` does."
    )


def _sweep_of(results: dict[str, dict[str, Any]], setup: dict[str, Any]) -> list[str]:
    """The corruptions the sweep sections ran on (the first of them that was run)."""
    for key in ("alpha", "depth", "compose", "quant", "transfer"):
        if key in results:
            return list(results[key]["setup"]["sweep"])
    return list(setup["sweep"])


def _storage(name: str) -> str:
    """A zoo storage name in words: ``int8 per channel``, ``low-rank (rank 16, int4 factors)``."""
    words = describe_storage(name)
    return words if words != name or name == "fp32" else f"{name} per channel"


def _setup_line(s: dict[str, Any]) -> str:
    unit = "units (conv + batch norm)" if s.get("batch_norm") else "conv layers"
    return (
        f"- Zoo `{s['zoo']}`: {s['architecture']} at width {s['width']:g} "
        f"({s['params'] / 1e6:.2f} M parameters), θ_pre trained on CIFAR-10 for "
        f"{_epochs(s['pretrain_epochs'])}; θ_std = θ_pre + {_epochs(s['clean_epochs'])} of "
        f"clean fine-tuning; θ_c = θ_pre + {_epochs(s['robust_epochs'])} on batches "
        f"{100 * s['corrupt_fraction']:.0f}% corrupted (severity {s['severity']}), "
        f"lr {s['finetune_lr']:g}. Signatures: first K = {s['layers']} {unit}, stored "
        f"{_storage(s['quantization'])}."
    )


#: The recipe keys of a section's setup that make it another build of the entry.
BUILD_KEYS = (
    "pretrain_epochs",
    "clean_epochs",
    "robust_epochs",
    "corrupt_fraction",
    "finetune_lr",
    "layers",
)


def earlier_build(reference: dict[str, Any], s: dict[str, Any], section: str = "") -> str:
    """A note when section setup ``s`` was measured on another build of the entry than
    ``reference`` (the main table's), naming what differed; "" for the same build. The K
    sweep (``section="depth"``) measures every K, so the entry's K does not count there."""
    keys = [k for k in BUILD_KEYS if not (section == "depth" and k == "layers")]
    changed = [k for k in keys if k in reference and s.get(k) != reference[k]]
    if s.get("zoo") != reference.get("zoo") or not changed:
        return ""
    what = ", ".join(
        f"{k.replace('_', ' ')} {s.get(k)!r:.6} (now {reference[k]!r:.6})" for k in changed
    )
    return (
        f"*Measured on an earlier build of this entry ({what}; {s.get('measured_at', '?')}): "
        "kept as that build's measurement until it is run again on this one.*"
    )


def _paragraph(text: str) -> list[str]:
    """A paragraph's lines (the text and a blank line), none for an empty text."""
    return [text, ""] if text else []


def other_entries(out: Path, doc: Path) -> list[str]:
    """The section on the other zoo entries measured into ``<out>/<entry>/``: each one's setup,
    main table and (batch-norm networks) the batch-norm comparison, with a link to its report."""
    sections = ("main", "depth", "bnstats", "datasets")
    entries = sorted({p.parent for k in sections for p in out.glob(f"*/{k}.json")})
    if not entries:
        return []
    lines = [
        OTHER_ENTRIES,
        "",
        "Measured with the same script on each entry's own work folder (`--work`, `--folder`, "
        "`--out docs/results/<entry>`, `--doc docs/results/<entry>/README.md`); the full "
        "report of an entry is linked under its name.",
        "",
    ]
    for d in entries:
        first = next(d / f"{k}.json" for k in sections if (d / f"{k}.json").exists())
        s = json.loads(first.read_text())["setup"]
        report = d / "README.md"
        title = f"### `{s['zoo']}`"
        if report.exists():
            rel = os.path.relpath(report, doc.parent).replace(os.sep, "/")
            title += f" ([full report]({rel}))"
        lines += [title, "", _setup_line(s), ""]
        notes = {
            k: earlier_build(s, json.loads((d / f"{k}.json").read_text())["setup"], k)
            for k in sections
            if (d / f"{k}.json").exists()
        }
        if (d / "main.json").exists():
            lines += [
                f"**Main table.** {render_main(json.loads((d / 'main.json').read_text()))}",
                "",
            ]
        else:
            lines += ["**Main table.** Not measured yet (the entry's evaluation has not run).", ""]
        if (d / "depth.json").exists():
            depth = json.loads((d / "depth.json").read_text())
            lines += [
                f"**K sweep (K = 1…{depth['ks'][-1]} units).** {render_depth(depth)}",
                "",
                *_paragraph(notes["depth"]),
            ]
        if (d / "datasets.json").exists():
            ds = json.loads((d / "datasets.json").read_text())
            png = os.path.relpath(d / "datasets.png", doc.parent).replace(os.sep, "/")
            lines += [
                f"**{SECTIONS['datasets']}.** Command: `{ds['command']}` ({ds['seconds']:.0f} s)."
                f" {render_datasets(ds)}",
                "",
                f"![{SECTIONS['datasets']}]({png})",
                "",
                f"**Difference and why.** {_why('datasets', ds)}",
                "",
                *_paragraph(notes["datasets"]),
            ]
        if (d / "bnstats.json").exists():
            bn = json.loads((d / "bnstats.json").read_text())
            lines += [
                f"**{SECTIONS['bnstats'].split('. ', 1)[1]}.** {render_bnstats(bn)}",
                "",
                _verdict("bnstats", bn),
                "",
                *_paragraph(notes["bnstats"]),
            ]
    return lines


def write_doc(out: Path, doc: Path) -> str:
    """Regenerate the report from every ``<out>/<section>.json`` present."""
    results = {
        k: json.loads((out / f"{k}.json").read_text())
        for k in SECTIONS
        if (out / f"{k}.json").exists()
    }
    keep = preserved(doc, out)
    lines = [
        "# Results: the paper's claims measured on this project's zoo",
        "",
        "Generated by `benchmarks/results.py` from the JSON files in `docs/results/` (each "
        "number below is what the script measured; re-run a section with its command, or "
        "`benchmarks/results.py doc` to rebuild this page). Paper: Cai, Zhang, Wang, *Robust "
        "Weight Signatures*, ICML 2023.",
        "",
        "## Setup",
        "",
    ]
    # the setup of the main table (the entry's current build), else of the first section
    setup = results["main"]["setup"] if "main" in results else None
    setup = setup or next((r["setup"] for r in results.values()), None)
    if setup:
        s = setup
        lines += [
            _setup_line(s),
            f"- {len(s['corruptions'])} corruptions; the sweeps (sections 4–8) use "
            f"{', '.join(_sweep_of(results, s))} (recorded as `setup.sweep` in each section's "
            "JSON; its command line passes the same `--sweep`).",
            _images_line(results),
            "",
        ]
    else:
        lines += ["No section has been run yet.", ""]
    missing = []
    for key, title in SECTIONS.items():
        lines += [f"## {title}", ""]
        if key == "bnstats" and key not in results and setup and not setup.get("batch_norm"):
            lines += [f"Does not apply: {setup['architecture']} has no batch norm.", ""]
            continue
        elsewhere = sorted(p.parent.name for p in out.glob(f"*/{key}.json"))
        if key not in results and elsewhere:
            lines += [
                f"**Paper.** {CLAIMS[key]}",
                "",
                f"Measured on the {', '.join(f'`{e}`' for e in elsewhere)} entry (this zoo has "
                "no entry of its lineage on another data set): see "
                "[Other zoo entries](#other-zoo-entries).",
                "",
            ]
            continue
        if key not in results:
            missing.append(key)
            lines += [
                f"**Paper.** {CLAIMS[key]}",
                "",
                f"**Not yet run** on this zoo. Command: `{command(key, None)}`",
                "",
            ]
            continue
        r = results[key]
        png = out / f"{key}.png"
        rel = os.path.relpath(png, doc.parent).replace(os.sep, "/")
        lines += [
            f"**Paper.** {CLAIMS[key]}",
            "",
            f"**Command.** `{r['command']}` ({r['seconds']:.0f} s, {r['setup']['measured_at']})",
            "",
            *_paragraph(earlier_build(setup or {}, r["setup"], key)),
            f"**Measured.** {RENDER[key](r)}",
            "",
            f"![{title}]({rel})",
            "",
            f"**Difference and why.** {_why(key, r)}",
            "",
        ]
    lines += other_entries(out, doc)
    if missing:
        lines += ["## Not yet run", ""]
        lines += [f"- {SECTIONS[k]}: `{command(k, None)}`" for k in missing]
        lines.append("")
    if keep:
        lines += [keep, ""]
    text = "\n".join(lines).rstrip() + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return text


def run_sections(
    args: argparse.Namespace, keys: Iterable[str], zoo: Zoo | None = None
) -> dict[str, dict[str, Any]]:
    """Run the given sections on the zoo, write their JSON and PNG, then the report. Pass
    ``zoo`` (made from the same ``args``) to reuse its loaded models and corrupted images."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out, doc = Path(args.out), Path(args.doc)
    out.mkdir(parents=True, exist_ok=True)
    z = zoo or Zoo(args)
    done = {}
    for key in keys:
        if key == "bnstats" and not z.has_bn and getattr(args, "_all", False):
            continue  # `all` on a network without batch norm
        if key == "datasets" and not args.other_work and getattr(args, "_all", False):
            continue  # `all` without another data set's entry
        t0 = time.time()
        print(f"[results] {key} ...", flush=True)
        res = RUN[key](z, out / f"{key}.png")
        res["setup"] = z.setup()
        res["seconds"] = time.time() - t0
        res["command"] = command(key, args)
        (out / f"{key}.json").write_text(json.dumps(res, indent=1) + "\n")
        print(f"[results] {key} done in {res['seconds']:.0f} s", flush=True)
        done[key] = res
        write_doc(out, doc)
    return done


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "section", nargs="+", choices=[*SECTIONS, "all", "doc"], help="what to run, in order"
    )
    p.add_argument("--work", default=DEFAULTS["work"], help="the zoo's work folder")
    p.add_argument("--folder", default=DEFAULTS["folder"], help="the exported model folder")
    p.add_argument("--data", default=None, help="CIFAR-10 data (default: the zoo's)")
    p.add_argument("--out", default=DEFAULTS["out"], help="folder for the JSON and PNG files")
    p.add_argument("--doc", default=DEFAULTS["doc"], help="the markdown report to regenerate")
    p.add_argument("--limit", type=int, default=DEFAULTS["limit"], help="test images")
    p.add_argument("--sweep", default=DEFAULTS["sweep"], help="corruptions for sections 4-7")
    p.add_argument("--alphas", default=DEFAULTS["alphas"], help="α grid of section 4")
    p.add_argument("--transfer-epochs", type=float, default=DEFAULTS["transfer_epochs"])
    p.add_argument("--transfer-lr", type=float, default=DEFAULTS["transfer_lr"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--other-work", default=None, help="section 8b: the other data set's work")
    p.add_argument("--other-folder", default=None, help="section 8b: its exported folder")
    p.add_argument("--other-limit", type=int, default=None, help="section 8b: its test images")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keys: list[str] = []
    for name in args.section:
        keys += list(SECTIONS) if name == "all" else [] if name == "doc" else [name]
    args._all = "all" in args.section
    if keys:
        run_sections(args, list(dict.fromkeys(keys)))
    else:
        write_doc(Path(args.out), Path(args.doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
