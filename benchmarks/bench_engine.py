"""Benchmark the serving engine side by side with the unpatched backbone and naive patching.

Measured in one run, interleaved round by round (so a noisy, shared machine hits every variant
alike), batch 64 requests:

(a)  the unpatched backbone, ``model(x)`` (and (a') the same in channels-last memory format);
(b)  the engine, every request with a different random mix of 0-3 signatures (random alphas,
     so no two mixes repeat and the weight cache never helps: the worst case);
(b0) the engine with every request clean (its own overhead-free path);
(b3) as (b) with the signatures as rank-``--rank`` int8 factors served as branches
     (``resident="factors"``: the base layer once for the batch, a thin branch per signature);
(c)  the naive way: for each request, under a lock, patch in place, run it alone, unpatch;
(d)  memory: one separately loaded model per corruption versus the engine's.

Sweeps: distinct mixes per batch (1..64) and the number of loaded signatures.

Writes ``docs/performance.md`` (tables), ``docs/perf_*.png`` (plots) and a JSON of the raw
numbers. Run: ``.venv/bin/python benchmarks/bench_engine.py`` (about 1-3 minutes).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rws_hub.archs import create_model
from rws_hub.core.patching import patch
from rws_hub.core.signature import Signature
from rws_hub.inference.engine import Engine

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# setup


def random_setup(
    width: float, n_signatures: int, layers: int, seed: int = 0
) -> tuple[torch.nn.Module, dict[str, Signature]]:
    """A VGG-16 (CIFAR) of ``width`` with ``n_signatures`` random signatures on the first
    ``layers`` conv layers (weight and bias), deltas about 5% of each tensor's scale."""
    torch.manual_seed(seed)
    model = create_model("vgg16_cifar", width=width).eval()
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][:layers]
    sd = model.state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    sigs = {}
    for i in range(n_signatures):
        tensors = {}
        for c in convs:
            for t in ("weight", "bias"):
                ref = sd[f"{c}.{t}"]
                scale = 0.05 * float(ref.std()) if ref.numel() > 1 and ref.std() > 0 else 0.01
                tensors[f"{c}.{t}"] = torch.randn(ref.shape, generator=gen) * scale
        name = f"sig{i:02d}"
        sigs[name] = Signature(name, tensors, layers=layers)
    return model, sigs


def folder_setup(path: Path) -> tuple[torch.nn.Module, dict[str, Signature]]:
    from rws_hub.io.folder import ModelFolder

    folder = ModelFolder.load(path, device="cpu")
    return folder.model, dict(folder.signatures)


def branch_mac_share(
    model: torch.nn.Module, sig: Signature, rank: int, per_image: float = 1.5
) -> float:
    """Extra multiply-accumulates of the low-rank branches over one forward of the backbone:
    each signature on an image adds, per patched conv, ``conv(x, V)`` (rank outputs) and the
    1x1 ``U`` (Cout outputs from rank inputs) at the conv's output size; ``per_image``
    signatures on average (1.5 for a uniform 0-3). This bounds the branch path from above:
    (b3)/(a) <= 1 / (1 + share) even if the branches' calls cost nothing beyond their MACs."""
    from rws_hub.detect.cost import conv_macs

    convs = {k[: -len(".weight")] for k, t in sig.tensors.items() if k.endswith(".weight")}
    extra = 0

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal extra
        pixels = out[0, 0].numel()
        extra += pixels * rank * (mod.weight[0].numel() + mod.out_channels)

    named = dict(model.named_modules())
    handles = [
        named[n].register_forward_hook(hook)
        for n in convs
        if isinstance(named.get(n), torch.nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    return per_image * extra / conv_macs(model)


def describe_layers(sig: Signature) -> tuple[int, str]:
    """(number of patched convs, what they are called): "units (conv + batch norm)" when the
    signature carries batch-norm tensors, else "conv layers"."""
    convs = {k for k, t in sig.tensors.items() if k.endswith(".weight") and t.dim() == 4}
    bn = any(k.endswith(".running_mean") for k in sig.tensors)
    return len(convs), "units (conv + batch norm)" if bn else "conv layers"


def low_rank(sigs: dict[str, Signature], rank: int) -> dict[str, Signature]:
    """The signatures as rank-``rank`` factors stored as int8 codes."""
    return {n: s.low_rank(rank=rank, bits=8) for n, s in sigs.items()}


def factors_engine(model: torch.nn.Module, sigs: dict[str, Signature], rank: int) -> Engine:
    return Engine(model, low_rank(sigs, rank), device="cpu", resident="factors")


def random_mixes(rng: random.Random, names: list[str], n: int, lo: int = 0, hi: int = 3) -> list:
    """``n`` mixes of ``lo``..``hi`` signatures with random alphas (distinct in practice)."""
    out = []
    for _ in range(n):
        k = rng.randint(lo, min(hi, len(names)))
        out.append({s: round(rng.uniform(0.25, 1.5), 6) for s in rng.sample(names, k)})
    return out


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# --------------------------------------------------------------------------------------------
# timing


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(latencies: list[float], batch: int) -> dict[str, float]:
    """images/s over all rounds, and p50/p99 of the per-batch latency (ms)."""
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    return {
        "images_per_s": batch * len(lat) / sum(lat),
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * p99,
        "rounds": len(lat),
    }


def compare(
    variants: dict[str, Callable[[int], Callable[[], Any]]], rounds: int, batch: int
) -> dict[str, dict[str, float]]:
    """Run every variant once per round, in a rotating order; warm-up round not counted."""
    lat: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            job = variants[name](r)  # prepare inputs outside the timed region
            t = timed(job)
            if r > 0:
                lat[name].append(t)
    return {k: summary(v, batch) for k, v in lat.items()}


# --------------------------------------------------------------------------------------------
# benchmark parts


def main_comparison(model, sigs, args) -> dict[str, Any]:
    names = list(sigs)
    batch = args.batch
    rng = random.Random(1)
    images = [torch.rand(batch, 3, 32, 32) for _ in range(4)]
    plain = copy.deepcopy(model).eval()
    cl = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    naive = copy.deepcopy(model).eval()
    engine = Engine(model, sigs, device="cpu")
    engine_named = Engine(model, sigs, device="cpu")
    # int8 codes resident (signatures quantized per channel when they come as fp32)
    qsigs = {
        n: s if s.is_quantized else s.quantize(8, granularity="channel") for n, s in sigs.items()
    }
    engine_codes = Engine(model, qsigs, device="cpu", resident="codes")
    engine_factors = factors_engine(model, sigs, args.rank)
    lock = threading.Lock()

    def run_plain(r):
        x = images[r % 4]
        return lambda: _no_grad(plain, x)

    def run_cl(r):
        x = images[r % 4]
        return lambda: _no_grad(cl, x.contiguous(memory_format=torch.channels_last))

    def run_engine(r):
        x, mixes = images[r % 4], random_mixes(rng, names, batch)
        return lambda: engine.predict(x, mixes)

    def run_engine_codes(r):
        x, mixes = images[r % 4], random_mixes(rng, names, batch)
        return lambda: engine_codes.predict(x, mixes)

    def run_engine_factors(r):
        x, mixes = images[r % 4], random_mixes(rng, names, batch)
        return lambda: engine_factors.predict(x, mixes)

    def run_engine_named(r):
        x = images[r % 4]
        mixes = [list(m) for m in random_mixes(rng, names, batch)]  # names: default alphas
        return lambda: engine_named.predict(x, mixes)

    def run_engine_clean(r):
        x = images[r % 4]
        return lambda: engine.predict(x, None)

    def run_naive(r):
        x, mixes = images[r % 4], random_mixes(rng, names, batch)

        def job():
            with torch.inference_mode():
                for i in range(batch):  # one request at a time, as a locked server would
                    with lock, patch(naive, mixes[i], signatures=sigs):
                        naive(x[i : i + 1])

        return job

    variants = {
        "a_backbone": run_plain,
        "a_backbone_channels_last": run_cl,
        "b_engine_random_mixes": run_engine,
        "b2_engine_random_mixes_codes": run_engine_codes,
        "b3_engine_random_mixes_factors": run_engine_factors,
        "b1_engine_named_mixes": run_engine_named,
        "b0_engine_clean": run_engine_clean,
        "c_naive_patch_per_request": run_naive,
    }
    out = compare(variants, args.rounds, batch)
    out["_memory_engine"] = engine.memory_bytes()
    out["_memory_engine_codes"] = engine_codes.memory_bytes()
    out["_memory_engine_factors"] = engine_factors.memory_bytes()
    out["_cache"] = engine.cache_info()
    out["_cache_named"] = engine_named.cache_info()
    return out


def _robust(res: dict[str, float], batch: int) -> float:
    """images/s at the median batch latency (robust to contention spikes)."""
    return 1000.0 * batch / res["p50_ms"]


def _engine_job(engine: Engine, x: torch.Tensor, mixes: list) -> Callable[[], Any]:
    return lambda: engine.predict(x, mixes)


def _no_grad(model, x):
    with torch.inference_mode():
        return model(x)


def distinct_sweep(model, sigs, args) -> list[dict[str, Any]]:
    names = list(sigs)
    batch = args.batch
    rng = random.Random(2)
    x = torch.rand(batch, 3, 32, 32)
    plain = copy.deepcopy(model).eval()
    engine = Engine(model, sigs, device="cpu", cache_bytes=0)  # cold: every mix is built
    factors = factors_engine(model, sigs, args.rank)
    rows = []
    for d in args.distinct:

        def mixes_of(d: int) -> list:
            pool = random_mixes(rng, names, d, lo=1)
            return [pool[i % d] for i in range(batch)]

        def run_engine(r, d=d):
            mixes = mixes_of(d)
            return lambda: engine.predict(x, mixes)

        def run_factors(r, d=d):
            mixes = mixes_of(d)
            return lambda: factors.predict(x, mixes)

        res = compare(
            {
                "backbone": lambda r: lambda: _no_grad(plain, x),
                "engine": run_engine,
                "engine_factors": run_factors,
            },
            args.sweep_rounds,
            batch,
        )
        rows.append({"distinct": d, **{k: _robust(v, batch) for k, v in res.items()}})
    return rows


def signature_sweep(model, sigs, args) -> list[dict[str, Any]]:
    batch = args.batch
    rng = random.Random(3)
    x = torch.rand(batch, 3, 32, 32)
    plain = copy.deepcopy(model).eval()
    all_names = list(sigs)
    rows = []
    for n in args.loaded:
        names = all_names[:n]
        engine = Engine(model, {k: sigs[k] for k in names}, device="cpu")
        factors = factors_engine(model, {k: sigs[k] for k in names}, args.rank)

        def run_engine(r, names=names, engine=engine):
            mixes = random_mixes(rng, names, batch)
            return lambda: engine.predict(x, mixes)

        def run_factors(r, names=names, factors=factors):
            mixes = random_mixes(rng, names, batch)
            return lambda: factors.predict(x, mixes)

        res = compare(
            {
                "backbone": lambda r: lambda: _no_grad(plain, x),
                "engine": run_engine,
                "engine_factors": run_factors,
            },
            args.sweep_rounds,
            batch,
        )
        mem = engine.memory_bytes()
        rows.append(
            {
                "loaded": n,
                "backbone": _robust(res["backbone"], batch),
                "engine": _robust(res["engine"], batch),
                "engine_factors": _robust(res["engine_factors"], batch),
                "engine_bytes": mem["total"],
                "signature_bytes": mem["signatures"],
                "engine_factors_bytes": factors.memory_bytes()["total"],
            }
        )
    return rows


def thread_check(model, sigs, args, threads: int) -> dict[str, Any]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        names = list(sigs)
        rng = random.Random(4)
        x = torch.rand(args.batch, 3, 32, 32)
        plain = copy.deepcopy(model).eval()
        engine = Engine(model, sigs, device="cpu")
        res = compare(
            {
                "a_backbone": lambda r: lambda: _no_grad(plain, x),
                "b_engine_random_mixes": lambda r: _engine_job(
                    engine, x, random_mixes(rng, names, args.batch)
                ),
            },
            args.thread_rounds,
            args.batch,
        )
    finally:
        torch.set_num_threads(before)
    return res


# --------------------------------------------------------------------------------------------
# report


def plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    main = results["main"]
    labels = {
        "a_backbone": "(a) backbone",
        "a_backbone_channels_last": "(a') backbone\nchannels-last",
        "b_engine_random_mixes": "(b) engine\nrandom mixes",
        "b2_engine_random_mixes_codes": "(b2) engine\ncodes resident",
        "b3_engine_random_mixes_factors": "(b3) engine\nlow-rank",
        "b1_engine_named_mixes": "(b1) engine\nnamed mixes",
        "b0_engine_clean": "(b0) engine\nclean",
        "c_naive_patch_per_request": "(c) naive patch\nper request",
    }
    keys = [k for k in labels if k in main]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    axes[0].bar([labels[k] for k in keys], [main[k]["images_per_s"] for k in keys], color="C0")
    axes[0].set_ylabel("images / s (batch 64)")
    axes[0].set_title("throughput")
    width = 0.38
    pos = range(len(keys))
    axes[1].bar([p - width / 2 for p in pos], [main[k]["p50_ms"] for k in keys], width, label="p50")
    axes[1].bar([p + width / 2 for p in pos], [main[k]["p99_ms"] for k in keys], width, label="p99")
    axes[1].set_xticks(list(pos), [labels[k] for k in keys])
    axes[1].set_ylabel("ms per batch of 64")
    axes[1].set_title("latency")
    axes[1].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = out_dir / "perf_main.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    sweep = results["distinct_sweep"]
    d = [r["distinct"] for r in sweep]
    axes[0].plot(d, [r["backbone"] for r in sweep], "o-", label="(a) backbone")
    axes[0].plot(d, [r["engine"] for r in sweep], "o-", label="engine (cold cache)")
    if all("engine_factors" in r for r in sweep):
        axes[0].plot(d, [r["engine_factors"] for r in sweep], "o-", label="engine, low-rank")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("distinct mixes in a batch of 64")
    axes[0].set_ylabel("images / s")
    axes[0].set_title("distinct mixes per batch")
    axes[0].legend()
    sig = results["signature_sweep"]
    n = [r["loaded"] for r in sig]
    axes[1].plot(n, [r["backbone"] for r in sig], "o-", label="(a) backbone")
    axes[1].plot(n, [r["engine"] for r in sig], "o-", label="(b) engine")
    if all("engine_factors" in r for r in sig):
        axes[1].plot(n, [r["engine_factors"] for r in sig], "o-", label="(b3) engine, low-rank")
    axes[1].set_xlabel("signatures loaded")
    axes[1].set_ylabel("images / s")
    axes[1].set_title("loaded signatures")
    axes[1].legend()
    mem = results["memory"]
    mb = 1 / (1 << 20)
    axes[2].plot(n, [r["engine_bytes"] * mb for r in sig], "o-", label="engine")
    if all("engine_factors_bytes" in r for r in sig):
        axes[2].plot(
            n, [r["engine_factors_bytes"] * mb for r in sig], "o-", label="engine, low-rank"
        )
    axes[2].plot(
        n, [(k + 1) * mem["backbone_bytes"] * mb for k in n], "o-", label="one model per corruption"
    )
    axes[2].axhline(mem["backbone_bytes"] * mb, color="gray", ls="--", label="one backbone")
    axes[2].set_xlabel("signatures loaded")
    axes[2].set_ylabel("MiB")
    axes[2].set_title("memory")
    axes[2].legend()
    fig.tight_layout()
    path = out_dir / "perf_sweeps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)
    return files


def markdown(results: dict[str, Any], figs: list[str]) -> str:
    m = results["main"]
    env = results["environment"]
    a = m["a_backbone"]["images_per_s"]
    a2 = m["a_backbone_channels_last"]["images_per_s"]
    b = m["b_engine_random_mixes"]["images_per_s"]
    b0 = m["b0_engine_clean"]["images_per_s"]
    c = m["c_naive_patch_per_request"]["images_per_s"]
    mem = results["memory"]
    mib = 1 / (1 << 20)
    lines = [
        "# Serving performance",
        "",
        "Generated by `benchmarks/bench_engine.py` "
        f"({env['date']}, {env['seconds']:.0f} s). Model: {env['model']}; "
        f"{env['signatures']} signatures on the first {env['layers']} "
        f"{env.get('layer_word', 'conv layers')}; batch "
        f"{env['batch']}; CPU, {env['threads']} torch thread(s); torch {env['torch']}.",
        "",
        f"Command: `{env.get('command', '.venv/bin/python benchmarks/bench_engine.py')}`; every "
        "number below, with the per-round timings, is in "
        "[../benchmarks/results_engine.json](../benchmarks/results_engine.json).",
        "",
        f"**Machine**: {env['machine']}. A small shared machine, so absolute numbers are noisy "
        "and low; every variant ran in the same rounds, interleaved in a rotating order, so the "
        "**ratios** are the meaningful figures. The engine in process is measured here; what "
        "the REST path adds on top (the gateway in front of TorchServe) is in "
        "[performance-rest.md](performance-rest.md).",
        "",
        "## Side by side (one run)",
        "",
        f"{m['a_backbone']['rounds']} timed rounds of one batch per variant (p99 is therefore "
        "the slowest round).",
        "",
        "| variant | images/s | images/s at p50 | p50 ms / batch | p99 ms / batch |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "a_backbone": "(a) unpatched backbone, `model(x)`",
        "a_backbone_channels_last": "(a') unpatched backbone, channels-last",
        "b_engine_random_mixes": "(b) engine, each request a different random mix of 0-3",
        "b2_engine_random_mixes_codes": '(b2) as (b), int8 codes resident (`resident="codes"`)',
        "b3_engine_random_mixes_factors": f"(b3) as (b), rank-{env.get('rank', 8)} int8 factors "
        'as branches (`resident="factors"`)',
        "b1_engine_named_mixes": "(b1) engine, random 0-3 names at default alphas (cache warms)",
        "b0_engine_clean": "(b0) engine, all requests clean",
        "c_naive_patch_per_request": "(c) naive: lock, patch in place, run one, unpatch",
    }
    names = {k: v for k, v in names.items() if k in m}
    for k, label in names.items():
        r = m[k]
        lines.append(
            f"| {label} | {r['images_per_s']:.0f} | {1000 * env['batch'] / r['p50_ms']:.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    p50 = {k: m[k]["p50_ms"] for k in names}
    lines += [
        "",
        f"- **(b)/(a) = {b / a:.2f}** (target >= 0.8; at p50: "
        f"{p50['a_backbone'] / p50['b_engine_random_mixes']:.2f}); (b)/(a') = {b / a2:.2f}; "
        f"(b)/(b0) = {b / b0:.2f}; (b)/(c) = {b / c:.1f}x."
        + (
            f" (b2)/(a) = {m['b2_engine_random_mixes_codes']['images_per_s'] / a:.2f}: "
            "dequantizing the codes in every weight build."
            if "b2_engine_random_mixes_codes" in m
            else ""
        )
        + (
            f" **(b3)/(a) = {m['b3_engine_random_mixes_factors']['images_per_s'] / a:.2f}** "
            f"(low-rank branches; at p50 "
            f"{p50['a_backbone'] / p50['b3_engine_random_mixes_factors']:.2f}; target >= 0.95)."
            if "b3_engine_random_mixes_factors" in m
            else ""
        ),
        f"- (b1)/(a) = {m['b1_engine_named_mixes']['images_per_s'] / a:.2f}: mixes named "
        "without alphas repeat (1,160 possible with 19 signatures), so the weight cache serves "
        f"them after their second sighting (hits {results['cache_named']['hits']}, "
        f"misses {results['cache_named']['misses']}, "
        f"{results['cache_named']['bytes'] / (1 << 20):.0f} MiB held).",
    ]
    for t, res in results.get("threads", {}).items():
        ta = res["a_backbone"]["images_per_s"]
        tb = res["b_engine_random_mixes"]["images_per_s"]
        lines.append(
            f"- With {t} torch threads: (a) {ta:.0f} images/s, (b) {tb:.0f} images/s, "
            f"(b)/(a) = {tb / ta:.2f}."
        )
    same = [r for r in results["signature_sweep"] if r["loaded"] == env["signatures"]]
    if same:
        r = same[0]
        lines.append(
            f"- Noise check: the loaded-signature sweep repeats workload (b) with all "
            f"{env['signatures']} signatures (fewer variants interleaved) and measured "
            f"{r['engine'] / r['backbone']:.2f} in this same run; read the ratio as a range."
        )
    lines += [
        "",
        "## Memory (d)",
        "",
        "| | MiB | x one backbone |",
        "| --- | ---: | ---: |",
        f"| one backbone | {mem['backbone_bytes'] * mib:.1f} | 1.00 |",
        f"| one model per corruption ({env['signatures']} + the clean one) | "
        f"{mem['per_corruption_bytes'] * mib:.1f} | "
        f"{mem['per_corruption_bytes'] / mem['backbone_bytes']:.2f} |",
        f"| engine: backbone + {env['signatures']} signatures (fp32 deltas) + cache | "
        f"{mem['engine']['total'] * mib:.1f} | "
        f"{mem['engine']['total'] / mem['backbone_bytes']:.2f} |",
        f"| of which signatures | {mem['engine']['signatures'] * mib:.1f} | "
        f"{mem['engine']['signatures'] / mem['backbone_bytes']:.2f} |",
        f"| of which weight cache (after the run) | {mem['engine']['cache'] * mib:.1f} | "
        f"{mem['engine']['cache'] / mem['backbone_bytes']:.2f} |",
        *(
            [
                f'| engine, int8 codes resident (`resident="codes"`) | '
                f"{mem['engine_codes']['total'] * mib:.1f} | "
                f"{mem['engine_codes']['total'] / mem['backbone_bytes']:.2f} |",
                f"| of which signatures (codes + scales) | "
                f"{mem['engine_codes']['signatures'] * mib:.1f} | "
                f"{mem['engine_codes']['signatures'] / mem['backbone_bytes']:.2f} |",
            ]
            if "engine_codes" in mem
            else []
        ),
        *(
            [
                f"| engine, rank-{env.get('rank', 8)} int8 factors resident "
                f'(`resident="factors"`) | {mem["engine_factors"]["total"] * mib:.1f} | '
                f"{mem['engine_factors']['total'] / mem['backbone_bytes']:.3f} |",
            ]
            if "engine_factors" in mem
            else []
        ),
        f"| weight cache of (b1) after the run (bound: cache_bytes = "
        f"{results['cache_named']['max_bytes'] * mib:.0f} MiB) | "
        f"{results['cache_named']['bytes'] * mib:.1f} | "
        f"{results['cache_named']['bytes'] / mem['backbone_bytes']:.2f} |",
        "",
        f"Each signature covers {mem['signature_fraction'] * 100:.1f}% of the backbone's "
        f"parameters (the first {env['layers']} {env.get('layer_word', 'conv layers')}), so "
        f"{env['signatures']} fp32 "
        f"signatures add {env['signatures']} x {mem['signature_fraction']:.3f} = "
        f"{env['signatures'] * mem['signature_fraction']:.2f} backbones.",
        "",
        "## Sweeps",
        "",
        "Images/s at the median batch latency. Distinct mixes in a batch of 64 (cold weight "
        "cache; each mix 1-3 signatures):",
        "",
        "| distinct mixes | backbone images/s | engine images/s | ratio "
        "| low-rank engine images/s | ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["distinct_sweep"]:
        lr = r.get("engine_factors")
        lines.append(
            f"| {r['distinct']} | {r['backbone']:.0f} | {r['engine']:.0f} | "
            f"{r['engine'] / r['backbone']:.2f} | "
            + (f"{lr:.0f} | {lr / r['backbone']:.2f} |" if lr else "– | – |")
        )
    lines += [
        "",
        "Loaded signatures (each request a random mix of 0-3 of them; images/s at the median):",
        "",
        "| loaded | backbone images/s | engine images/s | ratio | engine MiB | x backbone "
        "| low-rank images/s | ratio | low-rank MiB | x backbone |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["signature_sweep"]:
        lr, lrb = r.get("engine_factors"), r.get("engine_factors_bytes")
        lines.append(
            f"| {r['loaded']} | {r['backbone']:.0f} | {r['engine']:.0f} | "
            f"{r['engine'] / r['backbone']:.2f} | {r['engine_bytes'] * mib:.1f} | "
            f"{r['engine_bytes'] / mem['backbone_bytes']:.2f} | "
            + (
                f"{lr:.0f} | {lr / r['backbone']:.2f} | {lrb * mib:.1f} | "
                f"{lrb / mem['backbone_bytes']:.3f} |"
                if lr and lrb
                else "– | – | – | – |"
            )
        )
    lines += [""] + [f"![{f}]({f})" for f in figs] + [""]
    lines += ANALYSIS.format(
        ratio=b / a,
        verdict="meets" if b / a >= 0.8 else "below",
        sigs=env["signatures"],
        frac=mem["signature_fraction"],
        total=mem["engine"]["total"] / mem["backbone_bytes"],
        codes_total=mem.get("engine_codes", mem["engine"])["total"] / mem["backbone_bytes"],
        layers=f"{env['layers']} {env.get('layer_word', 'conv layers')}",
    ).splitlines()
    bound = results.get("low_rank_bound")
    if bound and "engine_factors" in mem and "b3_engine_random_mixes_factors" in m:
        b3 = m["b3_engine_random_mixes_factors"]["images_per_s"]
        fact = mem["engine_factors"]["total"] / mem["backbone_bytes"]
        lines += LOW_RANK.format(
            rank=bound["rank"],
            sigs=env["signatures"],
            fact=fact,
            mem_verdict="meets" if fact <= 1.1 else "above",
            b3=b3 / a,
            b=b / a,
            share=bound["mac_share"],
            ceiling=bound["ceiling"],
            max_mean=1.5 * (1 / 0.95 - 1) / bound["mac_share"],
        ).splitlines()
    return "\n".join(lines) + "\n"


ANALYSIS = """
## Reading the numbers

**How the engine runs a batch.** Requests are grouped by mix. Only the layers some signature
patches (here the first {layers}) run per group, each group with its own weights
``base + sum(alpha * delta)``; every deeper layer runs once for the whole batch. Clean rows use
the shared weights. Nothing shared is ever written, so any number of threads can call the same
engine.

**Where (b) loses against (a).** With every request carrying a different random mix, a batch of
64 holds about 49 distinct mixes (a quarter of the requests are clean). Two costs follow, and
they are the price of per-request weights, not overheads that a better implementation removes:

1. The shallow convolutions run per group, i.e. mostly at batch 1. On one thread that is close
   to batched efficiency in the default layout (per-sample loops measured 0.85-0.95 of one
   batched call per layer; about 0.6 in channels-last, which speeds the batched call more);
   with several intra-op threads per process each small call pays the threads' synchronisation,
   which on a shared 2-core machine is ruinous (the 2-thread line above). Hence `rws serve`
   runs one torch thread per worker and scales with `--workers`.
2. Every distinct mix needs its own weights for the patched layers: one clone and one in-place
   axpy per signature per tensor: 0.43 M values (1.7 MB) per mix for this model, about 85 MB
   of weights written per batch of 49 mixes. That is 10-20% of the batch time here.

The ratio grows towards 1 as mixes repeat (the distinct-mix sweep: a batch with a handful of
mixes runs at the backbone's speed, and the engine's channels-last layout can make it faster
than a plain `model(x)`); repeated mixes are also served from the weight cache (a mix is
admitted on its second miss, so one-off random alphas never evict the popular ones), see (b1).
The measured worst case on this machine is (b)/(a) = {ratio:.2f} ({verdict} the 0.8 target);
in the sweep the target holds while a batch of 64 carries up to about 16 distinct mixes, not
when nearly all of them differ.

**(c) naive patching** serialises requests behind one lock and runs each alone (batch 1 through
the whole network, deep layers included) plus a patch and a bitwise restore per request: the
engine is several times faster and, unlike (c), serves concurrent callers without a lock.

**Memory (d).** The engine holds one backbone, the fp32 deltas of the loaded signatures and the
bounded weight cache; one model per corruption holds a full copy of the network per corruption.
A signature on the first {layers} covers {frac:.1%} of the parameters, so
{sigs} fp32 signatures weigh {sigs} x {frac:.3f} backbones and the engine totals {total:.2f}x one
backbone: far below one model per corruption, but above the 1.2x target. With
`resident="codes"` (`rws serve --resident codes`) the engine keeps the shipped int8 codes and
per-channel scales instead and dequantizes them inside each weight build (same float operations,
bitwise-equal answers): {codes_total:.2f}x one backbone, at the throughput shown as (b2). The
1.2x target needs all 19 signatures to cost at most 0.2 backbones together, which at K = 7
means under 3 bits per value (int4 codes, packed, would be 19 x 0.118 / 8 = 0.28x);
it is not met by this engine at K = 7 with 19 signatures. The weight cache is bounded separately (`cache_bytes`, default 256 MiB): empty
after (b) because random alphas never repeat, but under (b1)'s repeating mixes it holds patched
weights worth many backbones; size it to the traffic (popular mixes x 1.7 MB here).

**Threads and contention.** All figures use one torch thread; the machine's two cores are
shared with other work (earlier runs of this benchmark overlapped a training job), so absolute
images/s vary several-fold between runs while the interleaved ratios move much less. Re-run on an idle machine (or a GPU, where the per-group
calls are kernel launches and the target is 0.9) before quoting absolute numbers.
"""

LOW_RANK = """
**Low-rank branches (b3).** With rank-{rank} int8 factors resident (`resident="factors"`) the
engine holds {fact:.3f}x one backbone with all {sigs} signatures ({mem_verdict} the 1.1x memory
target): the base layers stay shared and each signature costs its factors only. Under the
worst-case traffic it runs at (b3)/(a) = {b3:.2f} against {b:.2f} for the dense path (b). The
0.95 target is out of reach on this model for any implementation of the branches, not only
this one: each signature on an image adds rank x (Cin x k x k + Cout) multiply-accumulates per
output pixel of every patched conv (`conv(x, V)` then the 1x1 `U`), which for the mean 1.5
signatures of a random 0-3 mix is {share:.1%} of the whole backbone's MACs, so branches that
cost nothing but their arithmetic would still run at most 1 / (1 + {share:.3f}) = {ceiling:.2f}
of the backbone. Reaching 0.95 needs a mean of at most {max_mean:.2f} signatures per image at
this rank and depth (fewer units, or a lower rank, for the 1.5 of this traffic). The branches pay off in memory (and on a GPU, where
the per-signature calls are kernel launches on sub-batches); for throughput on 2 CPU threads the
dense path, which builds each mix's weights once and runs one conv per group, is the faster.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=None, help="a model folder (else random)")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--signatures", type=int, default=19)
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--sweep-rounds", type=int, default=6)
    p.add_argument("--thread-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (main run)")
    p.add_argument("--rank", type=int, default=8, help="rank of the low-rank variant (b3)")
    p.add_argument("--also-threads", type=int, nargs="*", default=[2])
    p.add_argument("--distinct", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--loaded", type=int, nargs="*", default=[1, 4, 8, 19])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results_engine.json")
    p.add_argument("--render", action="store_true", help="only re-render the report from --json")
    args = p.parse_args()
    if args.render:
        results = json.loads(args.json.read_text())
        args.out.write_text(markdown(results, plots(results, args.out.parent)))
        return

    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.folder:
        model, sigs = folder_setup(args.folder)
        model_desc = f"model folder {args.folder}"
        args.layers, layer_word = describe_layers(next(iter(sigs.values())))
    else:
        model, sigs = random_setup(args.width, args.signatures, args.layers)
        model_desc = f"VGG-16 (CIFAR) width {args.width}, random weights and signatures"
        layer_word = "conv layers"
    args.loaded = [n for n in args.loaded if n <= len(sigs)]

    results: dict[str, Any] = {}
    print("main comparison ...", flush=True)
    results["main"] = main_comparison(model, sigs, args)
    print("distinct-mix sweep ...", flush=True)
    results["distinct_sweep"] = distinct_sweep(model, sigs, args)
    print("loaded-signature sweep ...", flush=True)
    results["signature_sweep"] = signature_sweep(model, sigs, args)
    results["threads"] = {}
    for t in args.also_threads:
        if t != args.threads:
            print(f"{t} threads ...", flush=True)
            results["threads"][str(t)] = thread_check(model, sigs, args, t)

    backbone = state_bytes(model)
    sig_elems = sum(t.numel() for t in next(iter(sigs.values())).tensors.values())
    results["memory"] = {
        "backbone_bytes": backbone,
        "per_corruption_bytes": backbone * (len(sigs) + 1),
        "engine": results["main"].pop("_memory_engine"),
        "engine_codes": results["main"].pop("_memory_engine_codes"),
        "engine_factors": results["main"].pop("_memory_engine_factors"),
        "signature_fraction": sig_elems / sum(t.numel() for t in model.state_dict().values()),
    }
    share = branch_mac_share(model, next(iter(sigs.values())), args.rank)
    results["low_rank_bound"] = {"rank": args.rank, "mac_share": share, "ceiling": 1 / (1 + share)}
    results["cache"] = results["main"].pop("_cache")
    results["cache_named"] = results["main"].pop("_cache_named")
    results["environment"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": time.time() - t0,
        "model": model_desc,
        "signatures": len(sigs),
        "layers": args.layers,
        "layer_word": layer_word,
        "command": " ".join([".venv/bin/python benchmarks/bench_engine.py", *sys.argv[1:]]),
        "batch": args.batch,
        "threads": args.threads,
        "rank": args.rank,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = markdown(results, plots(results, args.out.parent))
    args.out.write_text(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(report)


if __name__ == "__main__":
    main()
