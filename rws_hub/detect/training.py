"""Training a detector: the run's config, the corrupted samples (seeded, cached) and the
resumable training loop of the head (:func:`train_detector`).

The output folder holds ``train.json`` (the config), ``cache/`` (corrupted samples and
features), ``checkpoint.safetensors`` + ``checkpoint.json`` (head and optimizer, every epoch)
and, when done, ``detector.safetensors`` + ``detector.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rws_hub.core.seeding import seeded_generator
from rws_hub.datasets import default_dataset
from rws_hub.datasets.arrays import load_images
from rws_hub.datasets.corruptions import corrupt_uint8
from rws_hub.detect.evaluation import per_class_accuracy
from rws_hub.detect.features import FEATURE_VERSION
from rws_hub.detect.model import (
    WEIGHTS_NAME,
    CorruptionDetector,
    detector_classes,
    save_detector,
)
from rws_hub.detect.rules import AutoRule

__all__ = [
    "DetectorTrainConfig",
    "batch_features",
    "make_samples",
    "train_detector",
]


@dataclass
class DetectorTrainConfig:
    """What decides a detector training run (saved as ``train.json`` in the output folder)."""

    data: str = str(default_dataset().root)  # training images (rws_hub.datasets.arrays)
    images: int = 40000  # training samples (each a train image with one random class)
    heldout: int = 2000  # validation samples from train images not used for training
    heldout_start: int = 45000  # train images from here on are never used for training
    clean_share: float = 0.1  # share of samples left clean (the rest: 19 corruptions evenly)
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    dropout: float = 0.2
    seed: int = 0
    chunk: int = 2000  # corrupted samples cached per file


def _plan(
    cfg: DetectorTrainConfig, n: int, start: int, stop: int, key: int
) -> dict[str, torch.Tensor]:
    """Which image, class and severity each sample uses (seeded)."""
    g = seeded_generator(cfg.seed, key)
    index = torch.randint(start, stop, (n,), generator=g)
    n_corr = len(detector_classes()) - 1
    clean = torch.rand(n, generator=g) < cfg.clean_share
    label = torch.randint(1, n_corr + 1, (n,), generator=g)
    label[clean] = 0
    sevs = torch.tensor(cfg.severities)
    severity = sevs[torch.randint(0, len(sevs), (n,), generator=g)]
    return {"index": index, "label": label, "severity": severity}


def make_samples(x: torch.Tensor, plan: Mapping[str, torch.Tensor], seed: int) -> torch.Tensor:
    """uint8 images for a plan: each sample's image corrupted as its label and severity say
    (batched per corruption and severity, seeded)."""
    classes = detector_classes()
    out = x[plan["index"]].clone()
    for li in range(1, len(classes)):
        for s in plan["severity"].unique().tolist():
            rows = ((plan["label"] == li) & (plan["severity"] == s)).nonzero().flatten()
            if len(rows) == 0:
                continue
            g = torch.Generator().manual_seed(seed * 7919 + li * 101 + int(s))
            out[rows] = corrupt_uint8(out[rows], classes[li], int(s), generator=g)
    return out


def _cached_samples(
    out: Path,
    tag: str,
    cfg: DetectorTrainConfig,
    x: torch.Tensor,
    plan: dict[str, torch.Tensor],
    log: Any,
) -> torch.Tensor:
    """Corrupted samples of a plan, made chunk by chunk and cached (resumable)."""
    parts = []
    n = len(plan["index"])
    for k, s in enumerate(range(0, n, cfg.chunk)):
        path = out / "cache" / f"{tag}-{k:03d}.safetensors"
        if path.is_file():
            parts.append(load_file(str(path))["x"])
            continue
        sub = {key: v[s : s + cfg.chunk] for key, v in plan.items()}
        t = time.perf_counter()
        imgs = make_samples(x, sub, cfg.seed * 1000 + k + (500 if tag == "heldout" else 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"x": imgs.contiguous()}, str(path))
        log(f"{tag}: samples {s + len(imgs)}/{n} ({time.perf_counter() - t:.1f}s)")
        parts.append(imgs)
    return torch.cat(parts)


@torch.no_grad()
def batch_features(det: CorruptionDetector, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Raw features of uint8 images ``(N, 3, H, W)``."""
    return torch.cat(
        [det.raw_features(x[i : i + batch].float().div(255)) for i in range(0, len(x), batch)]
    )


def train_detector(
    backbone: nn.Module,
    out: str | Path,
    cfg: DetectorTrainConfig | None = None,
    *,
    log: Any = print,
) -> tuple[CorruptionDetector, dict[str, Any]]:
    """Train a detector on corrupted training images; resumable.

    The output folder holds ``train.json`` (the config), ``cache/`` (corrupted samples and
    features), ``checkpoint.safetensors`` + ``checkpoint.json`` (head and optimizer, every epoch)
    and, when done, ``detector.safetensors`` + ``detector.json``. Returns the detector and its
    config (with held-out accuracy per class).
    """
    cfg = cfg or DetectorTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    data = load_images(cfg.data, "train")
    stop = min(cfg.heldout_start, len(data))
    if stop <= 0 or stop >= len(data) and cfg.heldout > 0:
        stop = max(1, int(len(data) * 0.9))
    train_plan = _plan(cfg, cfg.images, 0, stop, key=1)
    held_plan = _plan(cfg, cfg.heldout, stop, len(data), key=2)
    x_train = _cached_samples(out, "train", cfg, data.x, train_plan, log)
    x_held = _cached_samples(out, "heldout", cfg, data.x, held_plan, log)

    det = CorruptionDetector(
        conv_channels=next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).out_channels,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
    )
    det.set_backbone_conv(backbone)
    # Features depend on the samples and on conv1: cache them under a digest of both.
    digest = hashlib.sha256(
        det.conv.weight.detach().numpy().tobytes()
        + det.conv.bias.detach().numpy().tobytes()
        + json.dumps([cfg.images, cfg.heldout, cfg.seed, FEATURE_VERSION]).encode()
    ).hexdigest()[:16]
    fpath = out / "cache" / f"features-{digest}.safetensors"
    if fpath.is_file():
        cached = load_file(str(fpath))
        f_train, f_held = cached["train"], cached["heldout"]
    else:
        t = time.perf_counter()
        f_train = batch_features(det, x_train)
        f_held = batch_features(det, x_held)
        save_file({"train": f_train.contiguous(), "heldout": f_held.contiguous()}, str(fpath))
        log(f"features: {tuple(f_train.shape)} in {time.perf_counter() - t:.1f}s")
    det.feature_mean.copy_(f_train.mean(0))
    det.feature_std.copy_(f_train.std(0).clamp_min(1e-4))
    y_train, y_held = train_plan["label"], held_plan["label"]

    torch.manual_seed(cfg.seed)
    for m in det.head:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    opt = torch.optim.AdamW(det.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch = 0
    ck, ckj = out / "checkpoint.safetensors", out / "checkpoint.json"
    if ck.is_file() and ckj.is_file():
        meta = json.loads(ckj.read_text())
        state = load_file(str(ck))
        det.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        opt_state = opt.state_dict()
        for i, p in enumerate(opt_state["param_groups"][0]["params"]):
            if f"opt.{i}.exp_avg" in state:
                opt_state["state"][p] = {
                    "step": torch.tensor(float(meta["steps"])),
                    "exp_avg": state[f"opt.{i}.exp_avg"],
                    "exp_avg_sq": state[f"opt.{i}.exp_avg_sq"],
                }
        opt.load_state_dict(opt_state)
        start_epoch = int(meta["epoch"])
        log(f"resumed at epoch {start_epoch}")
    n = len(y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        det.head.train()
        order = torch.randperm(n, generator=seeded_generator(cfg.seed, epoch))
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for group in opt.param_groups:  # cosine schedule
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            loss = F.cross_entropy(det.head_logits(f_train[rows]), y_train[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(rows)
        state = {f"head.{k}": v.detach().clone() for k, v in det.head.state_dict().items()}
        for i, p in enumerate(opt.param_groups[0]["params"]):
            st = opt.state.get(p, {})
            if "exp_avg" in st:
                state[f"opt.{i}.exp_avg"] = st["exp_avg"]
                state[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"]
        save_file(state, str(ck))
        ckj.write_text(json.dumps({"epoch": epoch + 1, "steps": (epoch + 1) * steps_per_epoch}))
        if (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
            det.head.eval()
            with torch.no_grad():
                acc = (det.head_logits(f_held).argmax(1) == y_held).float().mean()
            log(f"epoch {epoch + 1}: loss {loss_sum / n:.4f}, held-out accuracy {float(acc):.4f}")
    det.eval()
    with torch.no_grad():
        probs = torch.softmax(det.head_logits(f_held), 1)
    accs = per_class_accuracy(probs, y_held, det.classes)
    config = {
        "rule": AutoRule().to_json(),
        "accuracy": {"heldout_samples": len(y_held), "severities": list(cfg.severities), **accs},
        "training": asdict(cfg) | {"severities": list(cfg.severities)},
    }
    save_detector(out, det, config)
    log(f"wrote {out / WEIGHTS_NAME} (held-out mean per-class accuracy {accs['mean']:.4f})")
    return det, det.spec() | config
