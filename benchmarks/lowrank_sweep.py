"""Size against robust accuracy for low-rank signatures: ranks × storage on a model folder.

For every corruption the folder ships a signature of, the test subset is corrupted once
(severity 5, the evaluation's seeding) and the backbone is patched with that corruption's own
signature in each format: the dense source signature ("dense": the folder's own, or with
``--signatures DIR`` the files there, e.g. an fp32 extraction), the folder's shipped file when
the source is another ("shipped") and the source's low-rank copies at ranks
{1, 2, 4, 8, 16, 32} with fp32, int8 and int4 factors (``Signature.low_rank``). Clean accuracy
(TA) with the own signature patched is measured on the same images. Sizes are the signature's
stored payload; the ratio is against the full fp32 backbone (parameters and buffers); losses
are against "dense"::

    python benchmarks/lowrank_sweep.py --folder model-store/cifar10-vgg16 --images 1000

Writes ``docs/results/lowrank.json`` and ``docs/results/lowrank.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from tqdm.auto import tqdm

import rws_hub
from rws_hub.core.seeding import seeded_generator
from rws_hub.core.signature import Signature
from rws_hub.datasets.arrays import load_images
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS, corrupt
from rws_hub.io.folder import ModelFolder


def batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i : i + size] for i in range(0, len(x), size)]


@torch.no_grad()
def correct(model: torch.nn.Module, xs: list[torch.Tensor], y: torch.Tensor) -> float:
    hits, start = 0, 0
    for x in xs:
        pred = model(x).argmax(1)
        hits += int((pred == y[start : start + len(x)]).sum())
        start += len(x)
    return 100.0 * hits / len(y)


def storage_name(sig: Signature) -> str:
    """``fp32``, ``int8 per channel``, or ``low-rank rank 16, int4 per channel`` for a
    signature's storage."""
    q = sig.quantization
    if not q:
        name = "fp32"
    else:
        scheme = q.get("scheme", "linear")
        kind = "int" if scheme == "linear" else scheme
        name = f"{kind}{q['bits']} per {q.get('granularity', 'tensor')}"
    if sig.factors:
        ranks = sorted({f.rank for f in sig.factors.values()})
        span = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
        name = f"low-rank rank {span}, {name}"
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--folder", default="model-store/cifar10-vgg16")
    ap.add_argument("--data", default="../shared/data/cifar10")
    ap.add_argument(
        "--signatures",
        default=None,
        help="directory of dense <corruption>.safetensors to truncate (default: the folder's)",
    )
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--ranks", default="1,2,4,8,16,32")
    ap.add_argument("--storages", default="fp32,int8,int4")
    ap.add_argument("--severity", type=int, default=5)
    ap.add_argument("--corruptions", default="all", help="comma list, or all the folder has")
    ap.add_argument(
        "--ta-formats",
        default="dense,shipped,r4-int8,r8-fp32,r8-int8,r8-int4,r16-int8",
        help="formats whose patched clean accuracy is measured too ('all' for every one)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/results/lowrank.json")
    ap.add_argument("--plot", default="docs/results/lowrank.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    folder = ModelFolder.load(args.folder)
    model = folder.model.eval()
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    dataset = folder.config.get("dataset")
    test = load_images(args.data, "test", dataset=dataset).subset(args.images)
    clean = [
        x.float().div(255).contiguous(memory_format=torch.channels_last)
        for x in batches(test.x, 500)
    ]
    ranks = [int(r) for r in args.ranks.split(",")]
    storages = args.storages.split(",")
    shipped = ["shipped"] if args.signatures else []
    formats = ["dense", *shipped] + [f"r{r}-{s}" for r in ranks for s in storages]
    rows: dict[str, dict[str, Any]] = {f: {"ra": {}, "ta": {}} for f in formats}
    started = time.time()
    own = [n for n in folder.config.get("signatures", []) if n in ALL_CORRUPTIONS]
    chosen = own if args.corruptions == "all" else args.corruptions.split(",")
    if not chosen:
        raise SystemExit(f"{args.folder}: no corruption signatures to sweep")
    for c in tqdm(chosen, desc="corruptions"):
        sig = folder.signatures[c]
        source = Signature.load(Path(args.signatures) / f"{c}.safetensors") if shipped else sig
        xs = []
        for b, x in enumerate(batches(test.x, 500)):
            xc = corrupt(
                x.float().div(255), c, args.severity, generator=seeded_generator(0, b, 7919)
            )
            xs.append(xc.contiguous(memory_format=torch.channels_last))
        variants = {"dense": source} | ({"shipped": sig} if shipped else {})
        for r in ranks:
            for s in storages:
                bits = None if s == "fp32" else int(s[3:])
                variants[f"r{r}-{s}"] = source.low_rank(rank=r, bits=bits)
        for f, v in variants.items():
            with rws_hub.patch(model, {v: 1.0}):
                rows[f]["ra"][c] = correct(model, xs, test.y)
                if args.ta_formats == "all" or f in args.ta_formats.split(","):
                    rows[f]["ta"][c] = correct(model, clean, test.y)
            rows[f].setdefault("bytes", []).append(v.nbytes)
    with torch.no_grad():
        unpatched_ta = correct(model, clean, test.y)
    summary = {}
    for f, r in rows.items():
        nbytes = mean(r["bytes"])
        summary[f] = {
            "mean_ra": mean(r["ra"].values()),
            "mean_ta": mean(r["ta"].values()) if r["ta"] else None,
            "mean_bytes": nbytes,
            "times_smaller_than_model": model_bytes / nbytes,
        }
    dense = summary["dense"]["mean_ra"]
    for s in summary.values():
        s["ra_loss_vs_dense"] = dense - s["mean_ra"]
    meets = [
        f
        for f, s in summary.items()
        if f != "dense" and s["times_smaller_than_model"] >= 300 and s["ra_loss_vs_dense"] <= 1.0
    ]
    best = max(meets, key=lambda f: summary[f]["times_smaller_than_model"]) if meets else None
    out = {
        "command": "python benchmarks/lowrank_sweep.py "
        f"--folder {args.folder} "
        + (f"--signatures {args.signatures} " if args.signatures else "")
        + f"--images {args.images} --ranks {args.ranks} "
        f"--storages {args.storages} --severity {args.severity} --corruptions {args.corruptions} "
        f"--ta-formats {args.ta_formats} --threads {args.threads} "
        f"--out {args.out} --plot {args.plot}",
        "folder": args.folder,
        "test_images": len(test),
        "severity": args.severity,
        "model_bytes": model_bytes,
        "backbone_ta": unpatched_ta,
        "dense_source": args.signatures or args.folder,
        "dense_storage": storage_name(source),
        "shipped_storage": storage_name(sig),
        "summary": summary,
        "per_corruption": rows,
        "meets_300x_within_1_point": meets,
        "smallest_meeting_target": best,
        "seconds": round(time.time() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    plot(out, args.plot, ranks, storages)
    print(json.dumps({f: round(s["mean_ra"], 2) for f, s in summary.items()}, indent=1))
    print("smallest format meeting >=300x at <=1 point RA loss:", best)


def plot(out: dict[str, Any], path: str, ranks: list[int], storages: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = out["summary"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for st, marker in zip(storages, "osd^v", strict=False):
        xs = [s[f"r{r}-{st}"]["times_smaller_than_model"] for r in ranks]
        ys = [s[f"r{r}-{st}"]["mean_ra"] for r in ranks]
        ax.plot(xs, ys, marker=marker, label=f"low-rank, {st} factors")
        for r, x, y in zip(ranks, xs, ys, strict=True):
            ax.annotate(f"r{r}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    d = s["dense"]
    label = f"dense ({out['dense_storage']})"
    ax.scatter([d["times_smaller_than_model"]], [d["mean_ra"]], color="k", zorder=5, label=label)
    if "shipped" in s:
        sh = s["shipped"]
        ax.scatter([sh["times_smaller_than_model"]], [sh["mean_ra"]], color="tab:red", marker="*",
                   s=80, zorder=5, label=f"dense, {out['shipped_storage']} (the folder's file)")  # fmt: skip
    ax.axvline(300, color="grey", ls="--", lw=0.8)
    ax.axhline(d["mean_ra"] - 1.0, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("times smaller than the full fp32 model")
    ax.set_ylabel(f"mean RA over {len(out['per_corruption']['dense']['ra'])} corruptions (%)")
    ax.set_title(f"Low-rank signatures on {Path(out['folder']).name} ({out['test_images']} images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
