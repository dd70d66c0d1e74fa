"""Rewrite the README's section on the embedded default from its ``config.json``.

The section between ``<!-- default-entry -->`` and ``<!-- /default-entry -->`` is generated:
what the default entry is, its measured table (full test set, severity 5) and its headline
numbers, all read from ``model-store/<default entry>/config.json``. Run after rebuilding or
switching the default entry::

    .venv/bin/python scripts/readme_default.py

``tests/integration/test_readme.py`` checks that the README says what the config says.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from statistics import mean

import torch

from rws_hub.archs import create_model
from rws_hub.core.quantization import describe_storage
from rws_hub.zoo.entries import DEFAULT_ENTRY, ENTRIES

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- default-entry -->", "<!-- /default-entry -->"
SHOWN = (
    "gaussian_noise",
    "defocus_blur",
    "motion_blur",
    "fog",
    "contrast",
    "jpeg_compression",
    "pixelate",
)
KEYS = ("backbone_ra", "patched_ra", "robust_model_ra", "patched_ta")


def one_decimal(value: float) -> str:
    """``value`` to one decimal, halves up on its decimal text (88.65 is 88.7, although the float
    100 * 0.8865 is 88.6499...), as docs/results.md rounds."""
    return str(Decimal(repr(round(value, 6))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def section(folder: Path) -> str:
    """The generated README section for the model folder ``folder``."""
    config = json.loads((folder / "config.json").read_text())
    m, recipe = config["metrics"], config["recipe"]
    rows = m["corruptions"]
    model = create_model(config["architecture"], width=config["width"])
    n_params = sum(p.numel() for p in model.parameters())
    convs = sum(isinstance(x, torch.nn.Conv2d) for x in model.modules())
    bn = any(isinstance(x, torch.nn.BatchNorm2d) for x in model.modules())
    sig_files = sorted((folder / "signatures").glob("*.safetensors"))
    sig_kb = mean(p.stat().st_size for p in sig_files) / 1000
    backbone_mb = (folder / "model.safetensors").stat().st_size / 1e6
    unit = "units (conv + batch norm)" if bn else "conv layers"
    pct = {k: 100 * mean(r[k] for r in rows.values()) for k in KEYS}
    ta = 100 * m["clean_accuracy"]
    share = (pct["patched_ra"] - pct["backbone_ra"]) / (pct["robust_model_ra"] - pct["backbone_ra"])
    auto = config.get("detector", {}).get("measured", {})
    lines = [
        f"## The embedded default: `{DEFAULT_ENTRY.folder}/`",
        "",
        f"{DEFAULT_ENTRY.summary[0].upper() + DEFAULT_ENTRY.summary[1:]}: {convs} conv layers"
        f"{' with batch norm' if bn else ', no batch norm'}, {n_params / 1e6:.2f} M parameters, "
        f"θ_pre trained here from scratch for {recipe['pretrain_epochs']:g} epochs. "
        f"{len(sig_files)} {describe_storage(recipe['quantization'])} signatures (K = {config['signature_layers']} "
        f"{unit}, {sig_kb:.0f} KB each; the backbone is {backbone_mb:.1f} MB) and a corruption "
        f'detector for `"auto"`. Measured on the full CIFAR-10 test set '
        f"({m['test_images']} images), severity {m['severity']}, accuracy in %:",
        "",
        "| corruption | backbone RA | + own signature RA | dedicated robust model RA "
        "| + own signature TA |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in SHOWN:
        r = rows[c]
        lines.append(f"| {c} | " + " | ".join(one_decimal(100 * r[k]) for k in KEYS) + " |")
    lines.append(
        f"| **mean of all {len(rows)}** | " + " | ".join(one_decimal(pct[k]) for k in KEYS) + " |"
    )
    lines += [
        "",
        f"Clean accuracy (TA) of the backbone: {ta:.1f}. Patching recovers {100 * share:.0f}% "
        "of the dedicated models' RA gain; the patched backbone's TA is "
        f"{ta - pct['patched_ta']:.1f} points below the backbone's (mean over the "
        f"{len(rows)}).",
    ]
    if auto:
        lines[-1] += (
            f' With `"auto"` (the shipped detector picks each image\'s patch) the mean RA is '
            f"{auto['mean_ra']:.1f}, against {pct['patched_ra']:.1f} when the true corruption's "
            f"signature is given, and clean accuracy stays at {auto['clean']:.1f}."
        )
    lines += [
        "",
        f"The per-corruption table is in the [model card]({DEFAULT_ENTRY.folder}/README.md); "
        "the paper's claims, measured, in [docs/results.md](docs/results.md) (with the other "
        "entries and the batch-norm comparison under *Other zoo entries*). The folder is "
        f"rebuilt with `{config['rebuild']}` (see [docs/training.md](docs/training.md) for the "
        "time it takes on 2 CPU cores or a GPU).",
    ]
    others = []
    for entry in ENTRIES.values():
        cfg = ROOT / entry.folder / "config.json"
        if entry is DEFAULT_ENTRY or not cfg.is_file():
            continue
        om = json.loads(cfg.read_text())["metrics"]
        others.append(
            f"- [`{entry.folder}/`]({entry.folder}/README.md): {entry.summary} (TA "
            f"{100 * om['clean_accuracy']:.1f} on its {om['test_images']} test images); "
            f'`torch.hub.load(..., "{entry.entrypoint}")`.'
        )
    if others:
        lines += ["", "Other entries in `model-store/`:", "", *others]
    return "\n".join(lines)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = f"{BEGIN}\n{section(ROOT / DEFAULT_ENTRY.folder)}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        print(f"README.md has no {BEGIN} block", file=sys.stderr)
        return 1
    readme.write_text(pattern.sub(lambda _: block, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
