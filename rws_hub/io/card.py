"""Model cards (``README.md``) generated from a model folder's ``config.json``.

Nothing here is written by hand: the YAML front matter (library name, tags, datasets, license,
and ``model-index`` with one result per measured metric) and the tables in the body come from
``config["metrics"]`` as measured by the evaluation. The card is built with huggingface_hub's
:class:`~huggingface_hub.ModelCardData` and :class:`~huggingface_hub.EvalResult`, so
``huggingface_hub.ModelCard`` parses it back.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from rws_hub.core.quantization import describe_storage
from rws_hub.datasets import dataset_name_of, dataset_of

LIBRARY_NAME = "rws-hub"
DEFAULT_LICENSE = "apache-2.0"

# Readable names of the per-corruption metric keys (others are shown as they are). Keys
# ending in "_ta" are measured on the clean test set, the others on the corrupted one.
METRIC_LABELS: dict[str, str] = {
    "backbone_ra": "RA, clean backbone",
    "patched_ra": "RA, patched with its signature",
    "patched_ta": "TA, patched with its signature",
    "robust_model_ra": "RA, robust fine-tuned model",
    "robust_model_ta": "TA, robust fine-tuned model",
    "transferred_ra": "RA, patched with the referenced entry's signature",
    "transferred_ta": "TA, patched with the referenced entry's signature",
}


def clean_accuracy(metrics: Mapping[str, Any]) -> Any:
    """The backbone's TA from a config's ``metrics`` (``clean_accuracy``; ``ta`` also read)."""
    return metrics.get("clean_accuracy", metrics.get("ta"))


def per_corruption(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{corruption: {metric: value}}`` from a config's ``metrics`` (``corruptions``; ``ra``
    also read; a bare number counts as ``patched_ra``)."""
    table = metrics.get("corruptions", metrics.get("ra")) or {}
    return {
        str(c): dict(v) if isinstance(v, Mapping) else {"patched_ra": v} for c, v in table.items()
    }


def _share(metrics: Mapping[str, Any], part: str, whole: str) -> float | None:
    """Mean (``part`` − backbone RA) / mean (``whole`` − backbone RA) over the corruptions
    where all three are measured."""
    keys = ("backbone_ra", part, whole)
    rows = [[_number(r.get(k)) for k in keys] for r in per_corruption(metrics).values()]
    rows = [r for r in rows if None not in r]
    if not rows:
        return None
    num = sum(p - b for b, p, _ in rows)
    den = sum(w - b for b, _, w in rows)
    return num / den if den > 0 else None


def gain_share(metrics: Mapping[str, Any]) -> float | None:
    """Mean (patched RA − backbone RA) / mean (robust model RA − backbone RA), when measured."""
    return _share(metrics, "patched_ra", "robust_model_ra")


def transfer_share(metrics: Mapping[str, Any]) -> float | None:
    """Mean (transferred RA − backbone RA) / mean (patched RA − backbone RA): how much of the
    own signatures' gain the referenced entry's signatures recover, when measured."""
    return _share(metrics, "transferred_ra", "patched_ra")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


UNKNOWN_DATASET = "unknown-data"


def dataset_name(config: Mapping[str, Any]) -> str:
    """The name of the data set a config was made for: the one it names, else the registered
    spec its classes match (:func:`rws_hub.datasets.dataset_of`)."""
    name = dataset_name_of(config)
    if name is None:
        spec = dataset_of(config)
        name = spec.name if spec is not None else UNKNOWN_DATASET
    return name


def dataset_title(config: Mapping[str, Any]) -> str:
    """The data set's display name (its spec's ``title``; the name when unregistered)."""
    spec = dataset_of(config)
    return spec.title if spec is not None else dataset_name(config)


def model_name(config: Mapping[str, Any]) -> str:
    """The card's model name, ``rws-<data set>-<architecture>-w<width>``."""
    if config.get("name"):
        return str(config["name"])
    dataset = dataset_name(config)
    width = config.get("width", 1.0)
    return f"rws-{dataset}-{config['architecture']}-w{width}"


def eval_results(config: Mapping[str, Any]) -> list[EvalResult]:
    """One :class:`EvalResult` per measured number in ``config["metrics"]``.

    ``clean_accuracy`` becomes the clean test accuracy; each
    ``corruptions[<corruption>][<metric>]`` an accuracy on the corrupted test set (or, for
    ``*_ta`` keys, on the clean test set with that corruption's signature or robust model),
    with the corruption as ``dataset_config`` and the severity in ``dataset_args``.
    Non-numeric values are skipped.
    """
    metrics = config.get("metrics") or {}
    dataset = dataset_name(config)
    split = str(metrics.get("split", "test"))
    severity = metrics.get("severity", 5)
    out: list[EvalResult] = []
    ta = _number(clean_accuracy(metrics))
    if ta is not None:
        out.append(
            EvalResult(
                task_type="image-classification",
                dataset_type=dataset,
                dataset_name=f"{dataset.upper()} (clean test set)",
                dataset_split=split,
                metric_type="accuracy",
                metric_name="TA (clean accuracy)",
                metric_value=round(ta, 6),
            )
        )
    for corruption, values in per_corruption(metrics).items():
        for key, value in values.items():
            number = _number(value)
            if number is None:
                continue
            on_clean = key.endswith("_ta")
            where = "clean test set" if on_clean else f"severity {severity}"
            out.append(
                EvalResult(
                    task_type="image-classification",
                    dataset_type=dataset,
                    dataset_name=f"{dataset.upper()}-C {corruption} ({where})",
                    dataset_config=str(corruption),
                    dataset_split=split,
                    dataset_args={"corruption": str(corruption), "severity": severity},
                    metric_type="accuracy",
                    metric_name=f"{METRIC_LABELS.get(key, key)} ({corruption})",
                    metric_value=round(number, 6),
                )
            )
    return out


def card_data(config: Mapping[str, Any]) -> ModelCardData:
    """The card's metadata (front matter) from a model folder config."""
    dataset = dataset_name(config)
    tags = [
        LIBRARY_NAME,
        "robust-weight-signatures",
        "corruption-robustness",
        "image-classification",
        "pytorch",
        "safetensors",
        str(config["architecture"]),
        dataset,
    ]
    tags = list(dict.fromkeys(tags + list(config.get("tags", []))))
    results = eval_results(config)
    return ModelCardData(
        library_name=LIBRARY_NAME,
        license=str(config.get("license", DEFAULT_LICENSE)),
        tags=tags,
        datasets=[dataset],
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        model_name=model_name(config),
        eval_results=results or None,
    )


def _percent_factor(metrics: Mapping[str, Any]) -> float:
    """100 for fractions in [0, 1] (the folder format), 1 when the numbers are already percent."""
    nums = [_number(clean_accuracy(metrics))] + [
        _number(v) for row in per_corruption(metrics).values() for v in row.values()
    ]
    return 1.0 if any(x is not None and x > 1.0 for x in nums) else 100.0


def _pct(value: Any, factor: float = 100.0) -> str:
    number = _number(value)
    return "-" if number is None else f"{factor * number:.2f}"


def _body(config: Mapping[str, Any]) -> str:
    name = model_name(config)
    title = dataset_title(config)
    metrics = config.get("metrics") or {}
    sigs = list(config.get("signatures", []))
    repo = str(config.get("repo_id", "<repo_id>"))
    lines = [
        f"# {name}",
        "",
        "A clean backbone with **Robust Weight Signatures** (RWS): corruption robustness as small "
        f"weight patches on the first {config.get('signature_layers', 'K')} conv layers. "
        "Add a signature to make the model robust to its corruption, rescale it with alpha, "
        "combine several, or take them off to restore the clean model exactly.",
        "",
        "## Use",
        "",
        "```python",
        "from rws_hub.io.hub import from_pretrained",
        "from rws_hub.core.patching import patch",
        "",
        f'folder = from_pretrained("{repo}")  # or a local model folder',
        "model = folder.model  # float images in [0, 1], (N, 3, 32, 32); normalises inside",
    ]
    if sigs:
        lines += [
            f'with patch(model, {{"{sigs[0]}": 1.0}}):  # robust to {sigs[0]} inside the block',
            "    logits = model(images)",
            "",
            "# only one patch, downloading just its file:",
            "from rws_hub.io.hub import signature_from_pretrained",
            f'sig = signature_from_pretrained("{repo}", "{sigs[0]}")',
        ]
    lines += ["```", ""]
    lines += [
        "## Model",
        "",
        f"- architecture: `{config['architecture']}`, width {config.get('width', 1.0)}",
        f"- classes: {', '.join(config.get('classes', []))}",
        f"- input: float in [0, 1], shape {config.get('input_size', [3, 32, 32])}",
        f"- lineage (fingerprint of the pretrained model): `{config.get('lineage')}`",
        f"- signatures ({len(sigs)}): {', '.join(f'`{s}`' for s in sigs) or 'none'}",
    ]
    storage = (config.get("recipe") or {}).get("quantization")
    if sigs and isinstance(storage, str):
        with contextlib.suppress(ValueError):  # a storage this version does not know
            lines.append(f"- signature storage: {describe_storage(storage)}")
    for ref in config.get("signature_sets") or []:
        if isinstance(ref, Mapping):
            hub = f" (hub: `{ref['repo_id']}`)" if ref.get("repo_id") else ""
            lines.append(
                f"- also serves the signatures of `{ref.get('folder')}`{hub}, same lineage, "
                f"as `{ref.get('prefix', '')}<name>`"
            )
    lines += [
        "",
        "## Measured results",
        "",
    ]
    ta = clean_accuracy(metrics)
    factor = _percent_factor(metrics)
    if _number(ta) is not None:
        lines += [f"Clean test accuracy (TA) of the backbone: {_pct(ta, factor)} %", ""]
    ra = per_corruption(metrics)
    if ra:
        keys = list(dict.fromkeys(k for values in ra.values() for k in values))
        n = metrics.get("test_images")
        lines += [
            f"Accuracy (%) per corruption, severity {metrics.get('severity', 5)}"
            + (f", {n} test images" if n else "")
            + " (RA: on the corrupted test set; TA: on the clean one):",
            "",
            "| corruption | " + " | ".join(METRIC_LABELS.get(k, k) for k in keys) + " |",
            "| --- |" + " --- |" * len(keys),
        ]
        for corruption, values in ra.items():
            lines.append(
                f"| {corruption} | " + " | ".join(_pct(values.get(k), factor) for k in keys) + " |"
            )
        if len(ra) > 1:
            means = []
            for k in keys:
                nums = [_number(v.get(k)) for v in ra.values()]
                nums = [x for x in nums if x is not None]
                means.append(_pct(sum(nums) / len(nums), factor) if nums else "-")
            lines.append("| **mean** | " + " | ".join(means) + " |")
        lines.append("")
        share = gain_share(metrics)
        if share is not None:
            lines += [
                "Averaged over the corruptions, backbone + own signature recovers "
                f"**{100 * share:.0f}%** of the RA gain of the dedicated robust model "
                "((patched RA − backbone RA) / (robust model RA − backbone RA)).",
                "",
            ]
        moved = transfer_share(metrics)
        if moved is not None:
            lines += [
                "The referenced entry's signature of the same corruption, applied to this "
                f"backbone at α = 1, recovers **{100 * moved:.0f}%** of the own signatures' "
                "mean RA gain ((transferred RA − backbone RA) / (patched RA − backbone RA)).",
                "",
            ]
    if not ra and _number(ta) is None:
        lines += ["No measured results recorded in config.json.", ""]
    det = config.get("detector")
    if config.get("rebuild") or isinstance(det, Mapping):
        lines += ["## Rebuild", ""]
    # a zoo version whose pipeline has the detector step records its options in the recipe
    makes_detector = "detector_images" in (config.get("recipe") or {})
    if config.get("rebuild"):
        detector_too = (
            ', then trains its corruption detector and chooses its `"auto"` rule by measurement'
            if makes_detector
            else ""
        )
        lines += [
            "The robust models the signatures were extracted from are not shipped (each is as "
            f"large as the backbone); this command (from a checkout of rws-hub, with {title}) "
            "retrains θ_pre, the clean backbone and every robust model, then extracts, "
            f"evaluates and exports this folder{detector_too}, step by step and resumable:",
            "",
            f"    {config['rebuild']}",
            "",
        ]
    if isinstance(det, Mapping):
        train = det.get("training") if isinstance(det.get("training"), Mapping) else {}
        opts = "".join(
            f" --{k} {train[k]}" for k in ("images", "epochs") if train.get(k) is not None
        )
        how = (
            "The detector alone, on this folder's backbone (what that command's `detector` "
            "step runs):"
            if makes_detector and config.get("rebuild")
            else 'The corruption detector behind `"auto"` (`detector.safetensors`) is trained '
            "on this folder's backbone, then its rule is chosen by measurement and installed:"
        )
        lines += [
            how,
            "",
            f"    rws detector train --folder <this folder> --data <{title}>{opts} --out DIR",
            f"    rws detector eval --folder <this folder> --data <{title}> --detector DIR "
            "--choose --install",
            "",
        ]
    lines += _compute_lines(config.get("compute"))
    recipe = config.get("recipe") or {}
    if recipe:
        lines += ["## Recipe", ""]
        lines += [f"- {k}: {v}" for k, v in recipe.items()]
        lines.append("")
    lines += [
        "## Files",
        "",
        "`config.json` (architecture, metrics, recipe), `model.safetensors` (clean backbone), "
        "`signatures/<name>.safetensors` (one per signature), optional `pretrained.safetensors` and "
        "`detector.safetensors`, `manifest.json` (sha256 and size of every file, checked at load). "
        "Weights are safetensors only.",
        "",
    ]
    return "\n".join(lines)


def _compute_lines(compute: Any) -> list[str]:
    """The card's "Training compute" section from ``config["compute"]`` (measured by the zoo's
    export from its runs' logs); nothing when absent."""
    if not isinstance(compute, Mapping) or not any(k.endswith("_minutes") for k in compute):
        return []
    device = str(compute.get("device", "cpu"))
    where = f"{compute['cpus']} CPU cores" if device == "cpu" and compute.get("cpus") else device
    parts = []
    for key, label in (("pretrain_minutes", "θ_pre"), ("head_minutes", "the adapt stage")):
        if _number(compute.get(key)) is not None:
            parts.append(f"{label} {float(compute[key]):.0f} min")
    if _number(compute.get("finetune_minutes")) is not None:
        parts.append(
            f"the {compute.get('finetune_runs', '')} fine-tunes {float(compute['finetune_minutes']):.0f} "
            "min summed over runs (run side by side with `--jobs`)"
        )
    return [
        "## Training compute",
        "",
        f"Trained on {where}: {'; '.join(parts)}. Measured from the runs' logs "
        f"({compute.get('method', 'their logged throughput')}); evaluation and the detector "
        "come on top.",
        "",
    ]


def model_card(config: Mapping[str, Any]) -> str:
    """The full ``README.md`` text: YAML front matter and a body generated from ``config``."""
    data = card_data(config)
    text = f"---\n{data.to_yaml()}\n---\n\n{_body(config)}"
    ModelCard(text)  # parse back: raises if the metadata is malformed
    return text
