"""Compare two fine-tuning recipes for the robust models: corrupted images only vs. a
clean/corrupted mix, on the same backbone, the same test subset and the same severity.

Each recipe is a zoo work folder whose ``eval.json`` was measured by ``rws zoo build``; the
corrupted-only one shares θ_pre and θ_std with the shipped zoo (symlinked), so only the robust
fine-tuning differs::

    mkdir -p runs/zoo/recipe-corrupted-only
    ln -sfn ../cifar10-vgg16/pretrain runs/zoo/recipe-corrupted-only/pretrain
    ln -sfn ../cifar10-vgg16/clean runs/zoo/recipe-corrupted-only/clean
    rws zoo build --work runs/zoo/recipe-corrupted-only --corrupt-fraction 1.0 \\
        --eval-limit 2000 --steps clean,robust,extract,evaluate
    python benchmarks/compare_recipes.py \\
        --recipe "mix 50/50=runs/zoo/cifar10-vgg16/eval-2000.json" \\
        --recipe "corrupted only=runs/zoo/recipe-corrupted-only/eval.json"

Writes ``docs/results/recipe.json`` and ``recipe.png`` and the section ``## Fine-tuning recipe``
of ``docs/results.md`` (kept when ``benchmarks/results.py`` regenerates the report). Another
entry's comparison goes to its own report (``--out docs/results/<entry> --doc
docs/results/<entry>/README.md``), with its signatures described (``--signatures``) and the
targets its issue sets (``--ta-within``, ``--gain-share``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rws_hub.io.card import gain_share  # noqa: E402
from rws_hub.zoo.pipeline import eval_rows  # noqa: E402

HEADING = "## Fine-tuning recipe: corrupted images only vs. a clean/corrupted mix"


def summarise(eval_json: dict[str, Any], severity: str) -> dict[str, Any]:
    """Per-corruption and mean TA/RA of backbone, patched backbone and dedicated model (%)."""
    keys = {"robust_model_ra": "robust_ra", "robust_model_ta": "robust_ta"}
    per = eval_rows(eval_json, severity)
    rows = {c: {keys.get(k, k): v for k, v in r.items()} for c, r in per.items()}
    ta = eval_json["backbone"]["clean"]["none"]
    m = {k: mean(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    return {
        "test_images": eval_json["images"],
        "backbone_ta": ta,
        "mean": m,
        "gain_share": gain_share({"corruptions": per}),
        "patched_ta_drop": ta - m["patched_ta"],
        "robust_ta_drop": ta - m["robust_ta"],
        "corruptions": rows,
    }


def trade_off(r: dict[str, Any], ta_within: float = 5.0, share: float = 0.8) -> tuple[int, float]:
    """Sort key: how many of the two targets a recipe meets (patched TA within ``ta_within``
    points of the backbone, gain share at least ``share``), then patched TA + RA."""
    met = int(r["patched_ta_drop"] <= ta_within) + int((r["gain_share"] or 0) >= share)
    return met, r["mean"]["patched_ta"] + r["mean"]["patched_ra"]


def plot(results: dict[str, dict[str, Any]], png: Path, signatures: str) -> None:
    names = list(next(iter(results.values()))["corruptions"])
    fig, axes = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True)
    width = 0.8 / len(results)
    for i, (label, r) in enumerate(results.items()):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(names))]
        axes[0].bar(xs, [r["corruptions"][c]["patched_ra"] for c in names], width, label=label)
        axes[1].bar(xs, [r["corruptions"][c]["patched_ta"] for c in names], width, label=label)
    first = next(iter(results.values()))
    axes[0].plot(
        range(len(names)),
        [first["corruptions"][c]["backbone_ra"] for c in names],
        "k_",
        markersize=14,
        label="backbone (no patch)",
    )
    axes[1].axhline(first["backbone_ta"], color="k", lw=1, label="backbone TA")
    axes[0].set_ylabel("patched RA (%)")
    axes[1].set_ylabel("patched TA (%)")
    axes[1].set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes[0].set_ylim(0, 100)
    axes[0].legend(fontsize=8, ncol=3, loc="upper center")
    axes[1].set_ylim(min(50, *[r["mean"]["patched_ta"] - 10 for r in results.values()]), 92)
    axes[1].legend(fontsize=8, ncol=3, loc="upper center")
    fig.suptitle(f"Backbone + own signature ({signatures}), severity 5, by fine-tuning recipe")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def section(
    results: dict[str, dict[str, Any]],
    command: str,
    *,
    png: str = "results/recipe.png",
    signatures: str = "int8 with K = 7",
    ta_within: float = 5.0,
    share: float = 0.8,
) -> str:
    n = next(iter(results.values()))["test_images"]
    lines = [
        HEADING,
        "",
        "**Question.** Robust models fine-tuned on corrupted images alone lose clean accuracy, and "
        "their signatures carry that loss into the patched backbone. Does fine-tuning on a mix of "
        "clean and corrupted images keep the clean accuracy without giving up the robustness?",
        "",
        f"**Measured.** Same θ_pre and θ_std, same fine-tuning length and learning rate; only the "
        f"share of corrupted images in each fine-tuning batch differs. Means over the 19 "
        f"corruptions at severity 5, {n} test images, signatures {signatures}, α = 1. "
        "*Gain share* = (patched RA − backbone RA) / (dedicated RA − backbone RA).",
        "",
        "| recipe | backbone TA | patched TA | dedicated TA | backbone RA | patched RA "
        "| dedicated RA | gain share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        m = r["mean"]
        lines.append(
            f"| {label} | {r['backbone_ta']:.1f} | {m['patched_ta']:.1f} | {m['robust_ta']:.1f} "
            f"| {m['backbone_ra']:.1f} | {m['patched_ra']:.1f} | {m['robust_ra']:.1f} "
            f"| {100 * r['gain_share']:.0f}% |"
        )
    best = max(results, key=lambda k: trade_off(results[k], ta_within, share))
    lines += [
        "",
        f"![recipes]({png})",
        "",
        "**Per corruption** (patched TA / patched RA, %):",
        "",
        "| corruption | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for c in next(iter(results.values()))["corruptions"]:
        cells = [
            f"{r['corruptions'][c]['patched_ta']:.1f} / {r['corruptions'][c]['patched_ra']:.1f}"
            for r in results.values()
        ]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    drops = "; ".join(
        f"{k}: patched TA {r['patched_ta_drop']:.1f} points below the backbone, gain share "
        f"{100 * r['gain_share']:.0f}%"
        for k, r in results.items()
    )
    lines += [
        "",
        f"**Outcome.** {drops}. Better trade-off (meets more of the targets — patched TA within "
        f"{ta_within:g} points of the backbone on average, gain share ≥ {100 * share:.0f}% — then "
        f"the higher patched TA + RA): **{best}**.",
        "",
        f"Rebuild: `{command}`",
    ]
    return "\n".join(lines)


def replace_section(doc: Path, text: str) -> None:
    old = doc.read_text() if doc.exists() else ""
    pattern = re.compile(re.escape(HEADING) + r".*?(?=\n## |\n<!-- |\Z)", re.S)
    new = (
        pattern.sub(lambda _: text.rstrip() + "\n", old)
        if pattern.search(old)
        else (old.rstrip() + "\n\n" + text.rstrip() + "\n")
    )
    doc.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", action="append", required=True, help="LABEL=path/to/eval.json")
    p.add_argument("--severity", default="5")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--doc", default="docs/results.md")
    p.add_argument("--signatures", default="int8 with K = 7", help="what the signatures are")
    p.add_argument("--ta-within", type=float, default=5.0, help="target: patched TA drop")
    p.add_argument("--gain-share", type=float, default=0.8, help="target: gain share")
    args = p.parse_args(argv)
    results = {}
    for item in args.recipe:
        label, _, path = item.partition("=")
        results[label] = summarise(json.loads(Path(path).read_text()), args.severity)
    sizes = {r["test_images"] for r in results.values()}
    if len(sizes) != 1:
        p.error(f"recipes were measured on different numbers of test images: {sorted(sizes)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "recipe.png", args.signatures)
    extra = [
        f'--{k.replace("_", "-")} "{v}"'
        for k, v in vars(args).items()
        if k not in ("recipe",) and v != p.get_default(k)
    ]
    command = "python benchmarks/compare_recipes.py " + " ".join(
        [*(f'--recipe "{r}"' for r in args.recipe), *extra]
    )
    png = os.path.relpath(out / "recipe.png", Path(args.doc).parent).replace(os.sep, "/")
    replace_section(
        Path(args.doc),
        section(
            results,
            command,
            png=png,
            signatures=args.signatures,
            ta_within=args.ta_within,
            share=args.gain_share,
        ),
    )
    for label, r in results.items():
        print(
            f"{label}: patched TA {r['mean']['patched_ta']:.2f} (drop {r['patched_ta_drop']:.2f})"
            f", patched RA {r['mean']['patched_ra']:.2f}, gain share {r['gain_share']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
