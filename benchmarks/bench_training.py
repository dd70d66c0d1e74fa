"""Training throughput in float32 and with bfloat16 autocast (``--precision bf16``), side by side.

For each architecture and thread count: images/s of the real training step of
:func:`rws_hub.zoo.training.train` (channels-last where it trains, forward and loss under
autocast when bf16, backward, SGD with momentum) on batches of 128 random 32×32 images. The two
precisions alternate in rounds, so a machine that slows down mid-run slows both; the ratio is
the median of the per-round ratios.

    .venv/bin/python benchmarks/bench_training.py --json benchmarks/results_training.json \
        --markdown docs/performance-training.md

bf16 pays off where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX; the flags are
recorded) and on CUDA; elsewhere autocast emulates it and is slower than float32.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rws_hub.archs import create_model
from rws_hub.zoo.training import channels_last_trains

CASES = [("vgg16_bn_cifar", 0.5), ("resnet20_cifar", 1.0), ("resnet18_cifar", 0.5)]


def _cpu() -> tuple[str, list[str]]:
    """The CPU's model name and its bfloat16 / AMX flags (Linux; elsewhere what platform says)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []

    def field(key: str) -> str:
        return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")

    flags = sorted(f for f in field("flags").split() if "bf16" in f or f.startswith("amx"))
    return field("model name") or platform.machine(), flags


def _stepper(arch: str, width: float, precision: str, batch: int):
    torch.manual_seed(0)
    model = create_model(arch, width=width, num_classes=10)
    channels_last = channels_last_trains(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(arch: str, width: float, threads: int, rounds: int, steps: int, batch: int) -> dict:
    torch.set_num_threads(threads)
    steppers = {p: _stepper(arch, width, p, batch) for p in ("fp32", "bf16")}
    for step in steppers.values():  # warm-up: allocator, oneDNN kernels
        for _ in range(2):
            step()
    rates: dict[str, list[float]] = {p: [] for p in steppers}
    for _ in range(rounds):
        for p, step in steppers.items():
            t = time.perf_counter()
            for _ in range(steps):
                step()
            rates[p].append(steps * batch / (time.perf_counter() - t))
    ratios = [b / f for f, b in zip(rates["fp32"], rates["bf16"], strict=True)]
    return {
        "architecture": arch,
        "width": width,
        "threads": threads,
        "fp32_img_s": statistics.median(rates["fp32"]),
        "bf16_img_s": statistics.median(rates["bf16"]),
        "speedup": statistics.median(ratios),
    }


def to_markdown(result: dict) -> str:
    rows = [
        "# Training throughput: float32 and bfloat16 autocast",
        "",
        "Measured by `benchmarks/bench_training.py` (one training step: forward, loss, backward,",
        f"SGD; batch {result['batch']}, 32×32 images; the precisions alternate in "
        f"{result['rounds']} rounds, the speedup is the median per-round ratio). CPU: "
        f"{result['cpu']}, bf16 flags: {', '.join(result['cpu_bf16_flags']) or 'none'}; "
        f"torch {result['torch']}.",
        "",
        "| architecture | width | threads | fp32 img/s | bf16 img/s | bf16 speedup |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["cases"]:
        rows.append(
            f"| {r['architecture']} | {r['width']} | {r['threads']} | {r['fp32_img_s']:.0f} | "
            f"{r['bf16_img_s']:.0f} | {r['speedup']:.2f}× |"
        )
    rows += [
        "",
        "`rws train --precision bf16` and `rws zoo build --precision bf16` train this way (the",
        "weights, gradients and optimizer state stay float32; evaluation always runs in float32).",
        "What it does to accuracy is measured on the entries built with it: their cards record the",
        "recipe, and [results.md](results.md) their numbers.",
        "",
    ]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="training steps per round")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--markdown", help="write a markdown page here")
    args = ap.parse_args()
    cases = []
    for arch, width in CASES:
        for threads in (int(t) for t in args.threads.split(",")):
            r = measure(arch, width, threads, args.rounds, args.steps, args.batch)
            print(
                f"{arch} x{width} threads={threads}: fp32 {r['fp32_img_s']:.0f} img/s, "
                f"bf16 {r['bf16_img_s']:.0f} img/s, speedup {r['speedup']:.2f}",
                flush=True,
            )
            cases.append(r)
    cpu, flags = _cpu()
    result = {
        "cpu": cpu,
        "cpu_bf16_flags": flags,
        "torch": torch.__version__,
        "batch": args.batch,
        "rounds": args.rounds,
        "cases": cases,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(result))


if __name__ == "__main__":
    main()
