"""Training: pretrain from scratch (θ_pre), fine-tune on clean data (θ_std), or fine-tune on
data corrupted by one corruption (θ_c).

A run lives in one folder: ``config.json`` (what was asked), ``metrics.jsonl`` (one JSON object
per log line), ``checkpoint.safetensors`` + ``checkpoint.json`` (model, optimizer momentum and
position, written every ``checkpoint_every`` steps and at each epoch's end) and, when finished,
``final.safetensors``. Every random choice (order, augmentation, corruption) is drawn from a
generator seeded by ``(seed, epoch, step)``, so ``resume=True`` continues exactly where a killed
run stopped: the resumed run sees the same batches it would have seen.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from rws_hub.archs import create_model
from rws_hub.core.layers import shallow_units
from rws_hub.core.seeding import seeded_generator
from rws_hub.datasets import DatasetSpec, default_dataset, get_dataset
from rws_hub.datasets.arrays import ImageArrays, load_images
from rws_hub.datasets.corruptions import corrupt
from rws_hub.zoo.entries import DEFAULT_ENTRY
from rws_hub.zoo.evaluation import accuracy

STAGES = ("pretrain", "head", "clean", "robust")
#: Training precisions: float32, or bfloat16 autocast for the forward pass and the loss.
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that decides a training run (saved as the run's ``config.json``).

    ``dataset`` names the :mod:`rws_hub.datasets` spec the images belong to: the model's
    normalisation comes from it, and so do ``data`` (where it lives) and ``num_classes`` when
    they are not given.
    """

    stage: str = "pretrain"
    data: str | None = None  # default: the data set's location
    out: str = "runs/train"
    architecture: str = DEFAULT_ENTRY.architecture
    width: float = DEFAULT_ENTRY.width
    num_classes: int | None = None  # default: the data set's number of classes
    init: str | None = None  # safetensors state dict to start from (fine-tuning stages)
    epochs: float = 1.0  # may be fractional: 0.5 = half an epoch
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "step"  # step (x0.1 at milestones) | onecycle | cosine | constant
    milestones: list[float] = field(default_factory=lambda: [0.4, 0.8])  # fractions of the run
    label_smoothing: float = 0.0
    augment: bool = True  # random crop (pad 4) + horizontal flip
    # head stage: None trains only the classifier on a frozen trunk; K keeps the first K units
    # (conv + batch norm, forward order) frozen and trains every later layer with the classifier
    frozen_units: int | None = None
    corruption: str | None = None  # robust stage: which corruption
    severity: int | list[int] = 5  # one severity, or a list to draw from per batch
    corrupt_fraction: float = 1.0  # robust stage: share of each batch that is corrupted
    limit: int | None = None  # use only the first N training images
    eval_limit: int | None = 2000  # test images for the end-of-epoch check (None = all)
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (CUDA when available)
    checkpoint_every: int = 100  # steps
    channels_last: bool = True
    # mixed precision: "bf16" runs the forward pass and the loss under bfloat16 autocast (weights,
    # gradients and optimizer state stay float32); 1.7x faster on CPUs with AVX512-BF16 or AMX
    precision: str = "fp32"
    dataset: str = default_dataset().name

    def __post_init__(self) -> None:
        spec = self.dataset_spec
        if self.data is None:
            if spec.root is None:
                raise ValueError(f"data set {spec.name!r} has no default location: give data")
            self.data = spec.root
        if self.num_classes is None:
            self.num_classes = spec.num_classes

    @property
    def dataset_spec(self) -> DatasetSpec:
        """The registered spec of :attr:`dataset`."""
        return get_dataset(self.dataset)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.stage == "robust" and not self.corruption:
            raise ValueError("the robust stage needs a corruption (--corruption NAME)")
        if self.stage != "pretrain" and not self.init:
            raise ValueError(f"the {self.stage} stage fine-tunes: give --init CHECKPOINT")
        if self.schedule not in ("step", "onecycle", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if not 0.0 < self.corrupt_fraction <= 1.0:
            raise ValueError("corrupt_fraction must be in (0, 1]")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.frozen_units is not None:
            if self.stage != "head":
                raise ValueError("frozen_units belongs to the head stage")
            if isinstance(self.frozen_units, bool) or self.frozen_units < 1:
                raise ValueError(f"frozen_units must be a positive int, not {self.frozen_units!r}")


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate at ``step`` of ``total`` under the configured schedule."""
    t = step / max(1, total)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * 0.1 ** sum(t >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))
    # one-cycle: linear warm-up over 15% of the run, then cosine down to lr/1000
    warm = 0.15
    if t < warm:
        return cfg.lr * (0.04 + 0.96 * t / warm)
    return cfg.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm))))


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; other names as torch spells them. Asking
    for CUDA on a machine without it raises ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return device


def augment_batch(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip, batched."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=g)
    dy = torch.randint(0, 9, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def _severities(cfg: TrainConfig) -> list[int]:
    """``cfg.severity`` as a list (one severity, or the list to draw from)."""
    return cfg.severity if isinstance(cfg.severity, list) else [cfg.severity]


def make_batch(
    cfg: TrainConfig, data: ImageArrays, idx: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (float [0, 1]) and labels of one training batch, augmented and corrupted."""
    x = data.x[idx].float().div_(255)
    y = data.y[idx]
    if cfg.augment:
        x = augment_batch(x, g)
    if cfg.stage == "robust":
        n_c = max(1, round(cfg.corrupt_fraction * len(x)))
        severities = _severities(cfg)
        sev = severities[int(torch.randint(0, len(severities), (1,), generator=g))]
        x[:n_c] = corrupt(x[:n_c], cfg.corruption, sev, generator=g)
    return x, y


def channels_last_trains(model: nn.Module) -> bool:
    """Whether ``model`` may train in the channels-last memory format.

    torch 2.14.1's CPU backward of a strided 1x1 convolution in channels-last crashes the
    process (segmentation fault) when the convolution has few input channels (measured: 2 to 5
    crash, 6 and more do not): a ResNet-20's shortcut at width 0.25 or less has one. Models
    with such a convolution of fewer than 8 input channels train in the standard layout.
    """
    return not any(
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride != (1, 1)
        and m.in_channels < 8
        for m in model.modules()
    )


def build_model(cfg: TrainConfig) -> nn.Module:
    """The architecture of the run (normalising with the data set's mean / std), initialised
    from ``cfg.init`` when given."""
    torch.manual_seed(cfg.seed)  # the initial weights are part of the run's identity
    spec = cfg.dataset_spec
    model = create_model(
        cfg.architecture,
        num_classes=cfg.num_classes,
        width=cfg.width,
        mean=spec.mean,
        std=spec.std,
    )
    if cfg.init:
        state = load_file(cfg.init)
        head = classifier_names(model)
        mismatched = sorted(
            k for k, v in model.state_dict().items() if k in state and state[k].shape != v.shape
        )
        if mismatched and set(mismatched) <= head:
            # another data set's model: keep the trunk, the classifier starts fresh (seeded)
            state = {k: v for k, v in state.items() if k not in head}
            missing, _ = model.load_state_dict(state, strict=False)
            if set(missing) - head:
                raise ValueError(f"{cfg.init} lacks {sorted(set(missing) - head)}")
        else:
            model.load_state_dict(state)
    return model


def classifier_names(model: nn.Module) -> set[str]:
    """State-dict names of the model's last ``nn.Linear`` (its classifier head)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        return set()
    return {f"{last}.{k}" for k, _ in model.get_submodule(last).named_parameters()}


def frozen_modules(model: nn.Module, cfg: TrainConfig) -> set[str]:
    """Names of the modules the ``head`` stage keeps as they are (parameters frozen, batch
    norms in eval mode): the whole trunk, or the first ``cfg.frozen_units`` units' convs and
    batch norms. Empty for the other stages."""
    if cfg.stage != "head":
        return set()
    if cfg.frozen_units is None:
        head = {n.rsplit(".", 1)[0] for n in classifier_names(model)}
        return {n for n, _ in model.named_modules() if n and n not in head}
    units = shallow_units(model, cfg.frozen_units)
    return {u.conv for u in units} | {u.norm for u in units if u.norm is not None}


def _train_mode(model: nn.Module, cfg: TrainConfig) -> None:
    """Training mode, but the modules the ``head`` stage freezes stay in eval mode (their batch
    norms keep their statistics)."""
    model.train()
    frozen = frozen_modules(model, cfg)
    for name, m in model.named_modules():
        if name in frozen:
            m.eval()


def _save_checkpoint(
    run: Path, model: nn.Module, opt: torch.optim.Optimizer, pos: dict[str, Any]
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf.detach().cpu().contiguous()
    tmp = run / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(run / "checkpoint.safetensors")
    (run / "checkpoint.json.tmp").write_text(json.dumps(pos))
    (run / "checkpoint.json.tmp").replace(run / "checkpoint.json")


def _load_checkpoint(run: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    tensors = load_file(str(run / "checkpoint.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(opt.param_groups[0]["params"]):
        if f"momentum.{i}" in tensors:
            opt.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device).clone()
    return json.loads((run / "checkpoint.json").read_text())


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
    max_seconds: float | None = None,
) -> Path | None:
    """Run (or resume) one training run; returns the path of ``final.safetensors``.

    ``max_steps`` / ``max_seconds`` stop this call early (after writing a checkpoint) and
    return None; ``resume=True`` later continues exactly where it stopped.
    """
    cfg.validate()
    run = Path(cfg.out)
    final = run / "final.safetensors"
    if final.exists() and resume:
        return final
    run.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_set = load_images(cfg.data, "train", dataset=cfg.dataset).subset(cfg.limit)
    test_set = load_images(cfg.data, "test", dataset=cfg.dataset).subset(cfg.eval_limit)

    device = resolve_device(cfg.device)
    model = build_model(cfg).to(device)
    channels_last = cfg.channels_last and channels_last_trains(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters())
    if cfg.stage == "head":  # a new classifier; the trunk or its first units stay frozen
        frozen = frozen_modules(model, cfg)
        params = []
        for name, p in model.named_parameters():
            keep = name.rsplit(".", 1)[0] in frozen
            p.requires_grad_(not keep)
            if not keep:
                params.append(p)
    opt = torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    steps_per_epoch = len(train_set) // cfg.batch_size
    total = max(1, round(cfg.epochs * steps_per_epoch))
    step = 0
    if resume and (run / "checkpoint.json").exists():
        saved = json.loads((run / "config.json").read_text())
        now = json.loads(json.dumps(asdict(cfg)))
        # a run saved before a field existed ran with that field's default
        defaults = json.loads(json.dumps(asdict(TrainConfig())))
        saved = {k: saved.get(k, defaults.get(k)) for k in set(saved) | set(now)}
        # knobs that do not change what is trained (a run may resume on another device)
        runtime = ("threads", "checkpoint_every", "out", "device")
        if {k: v for k, v in saved.items() if k not in runtime} != {
            k: v for k, v in now.items() if k not in runtime
        }:
            raise ValueError(f"{run}: resume with a different configuration than the run's")
        step = _load_checkpoint(run, model, opt)["step"]
    else:
        (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        (run / "metrics.jsonl").write_text("")

    log = (run / "metrics.jsonl").open("a")
    bar = tqdm(total=total, initial=step, disable=not progress, desc=f"{cfg.stage} {run.name}")
    t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
    started, done_here = time.time(), 0
    _train_mode(model, cfg)
    while step < total:
        out_of_time = max_seconds is not None and time.time() - started > max_seconds
        if (max_steps is not None and done_here >= max_steps) or out_of_time:
            _save_checkpoint(run, model, opt, {"step": step})
            bar.close()
            log.close()
            return None
        epoch, pos = divmod(step, steps_per_epoch)
        order = torch.randperm(len(train_set), generator=seeded_generator(cfg.seed, epoch))
        idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        x, y = make_batch(cfg, train_set, idx, seeded_generator(cfg.seed, epoch, pos, 1))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(cfg, step, total)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        done_here += 1
        seen += len(y)
        loss_sum += loss.item() * len(y)
        correct += int((out.argmax(1) == y).sum())
        bar.update(1)
        end_of_epoch = step % steps_per_epoch == 0 or step == total
        if step % 50 == 0 or end_of_epoch:
            rec = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "lr": lr,
                "loss": loss_sum / seen,
                "train_acc": 100.0 * correct / seen,
                "images_per_s": seen / (time.time() - t0),
            }
            if end_of_epoch:
                rec["test_acc"] = accuracy(model, test_set, channels_last=channels_last)
                if cfg.corruption:
                    rec["test_acc_corrupted"] = accuracy(
                        model,
                        test_set,
                        corruption=cfg.corruption,
                        severity=max(_severities(cfg)),
                        channels_last=channels_last,
                    )
                _train_mode(model, cfg)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['train_acc']:.1f}")
            t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        if step % cfg.checkpoint_every == 0 or end_of_epoch:
            _save_checkpoint(run, model, opt, {"step": step})
    bar.close()
    log.close()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(run / "final.tmp"), metadata={"stage": cfg.stage, "steps": str(total)})
    (run / "final.tmp").replace(final)
    return final
