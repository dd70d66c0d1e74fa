"""What the detector costs next to the backbone: FLOPs (counted) and wall time (measured)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from rws_hub.detect.model import CorruptionDetector

__all__ = ["conv_macs", "detector_flops", "measure_cost"]


def conv_macs(model: nn.Module, size: tuple[int, int] = (32, 32)) -> int:
    """Multiply-accumulates of one forward of one image through every Conv2d and Linear of
    ``model`` (measured on the shapes a forward hook sees)."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.weight[0].numel()  # in/groups * kh * kw
            total += int(out[0].numel()) * k
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
    return total


def detector_flops(detector: CorruptionDetector, size: tuple[int, int] = (32, 32)) -> int:
    """FLOPs of one image through the detector (2 × MACs of conv1 and the head, plus an
    element-wise budget for the statistics: ~12 ops per conv1 output value, ~200 per pixel for the
    image statistics, 5·N·log2 N per FFT)."""
    h, w = size
    macs = conv_macs(detector.conv, size) + sum(
        m.in_features * m.out_features for m in detector.head if isinstance(m, nn.Linear)
    )
    positions = math.ceil(h / detector.conv_stride) * math.ceil(w / detector.conv_stride)
    elementwise = 12 * detector.conv_channels * positions + 200 * h * w
    fft = int(5 * h * w * math.log2(h * w))
    return 2 * macs + elementwise + fft


def measure_cost(
    detector: CorruptionDetector,
    backbone: nn.Module,
    *,
    batch: int = 256,
    repeats: int = 5,
    size: tuple[int, int] = (32, 32),
) -> dict[str, float]:
    """Detector vs backbone: FLOPs per image and wall time of a batch (this machine).

    The two are timed alternately, ``repeats`` times; ``time_ratio`` is the median of the
    per-round ratios, so that a machine whose load changes affects both sides alike."""
    x = torch.rand(batch, 3, *size)
    detector.eval()
    backbone.eval()

    def once(fn: Any) -> float:
        t = time.perf_counter()
        fn(x)
        return time.perf_counter() - t

    det_t, bb_t = [], []
    with torch.inference_mode():
        detector(x)
        backbone(x)
        for _ in range(repeats):
            det_t.append(once(detector))
            bb_t.append(once(backbone))
    ratios = sorted(d / b for d, b in zip(det_t, bb_t, strict=True))
    det_f = detector_flops(detector, size)
    bb_f = 2 * conv_macs(backbone, size)
    return {
        "detector_flops": det_f,
        "backbone_flops": bb_f,
        "flops_ratio": det_f / bb_f,
        "detector_ms_per_batch": 1000 * sorted(det_t)[len(det_t) // 2],
        "backbone_ms_per_batch": 1000 * sorted(bb_t)[len(bb_t) // 2],
        "time_ratio": ratios[len(ratios) // 2],
        "batch": batch,
        "threads": torch.get_num_threads(),
    }
