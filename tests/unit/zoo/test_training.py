"""Training: schedules, batches, and the exact resume of a stopped run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rws_hub.archs import create_model
from rws_hub.datasets import get_dataset
from rws_hub.datasets.arrays import load_images
from rws_hub.zoo.training import (
    TrainConfig,
    augment_batch,
    build_model,
    channels_last_trains,
    lr_at,
    make_batch,
    train,
)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        stage="pretrain",
        data=str(data),
        out=str(out),
        width=0.125,
        epochs=2,
        batch_size=32,
        lr=0.02,
        schedule="onecycle",
        eval_limit=64,
        checkpoint_every=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_schedules_shape() -> None:
    cfg = TrainConfig(lr=0.1, schedule="step", milestones=[0.5])
    assert lr_at(cfg, 0, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 60, 100) == pytest.approx(0.01)
    cfg.schedule = "cosine"
    assert lr_at(cfg, 0, 100) == pytest.approx(0.1) and lr_at(cfg, 100, 100) == pytest.approx(0)
    cfg.schedule = "onecycle"
    peak = max(lr_at(cfg, s, 100) for s in range(100))
    assert peak == pytest.approx(0.1, rel=0.05) and lr_at(cfg, 99, 100) < 0.01


def test_augment_is_crop_and_flip() -> None:
    x = torch.rand(16, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, g)
    assert out.shape == x.shape
    # every output image is a shifted (possibly flipped) window of its zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        found = any(
            torch.equal(out[i], w) or torch.equal(out[i], w.flip(2))
            for dy in range(9)
            for dx in range(9)
            for w in [padded[i, :, dy : dy + 32, dx : dx + 32]]
        )
        assert found


def test_invalid_configs_are_refused(tiny_cifar: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="corruption"):
        train(_cfg(tiny_cifar, tmp_path, stage="robust", init="x.safetensors"))
    with pytest.raises(ValueError, match="--init"):
        train(_cfg(tiny_cifar, tmp_path, stage="clean"))


def test_two_epochs_learn_and_resume_exactly(tiny_cifar: Path, tmp_path: Path) -> None:
    whole = train(_cfg(tiny_cifar, tmp_path / "a"), progress=False)
    assert whole is not None
    log = [json.loads(line) for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert log[-1]["epoch"] == pytest.approx(2.0)
    assert "test_acc" in log[-1]

    # the same run, stopped mid-epoch twice, then resumed: bitwise the same weights
    cfg = _cfg(tiny_cifar, tmp_path / "b")
    assert train(cfg, progress=False, max_steps=5) is None
    assert train(cfg, progress=False, resume=True, max_steps=6) is None
    resumed = train(cfg, progress=False, resume=True)
    a, b = load_file(str(whole)), load_file(str(resumed))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_head_stage_freezes_the_trunk_or_its_first_units(
    tiny_cifar: Path, tmp_path: Path
) -> None:
    """``frozen_units=None`` trains the classifier alone; ``frozen_units=K`` keeps the first K
    units (conv weights, batch-norm affine and statistics) at their initial values and trains
    everything after them."""
    from rws_hub.core.layers import unit_params

    start = train(_cfg(tiny_cifar, tmp_path / "pre", architecture="vgg16_bn_cifar", epochs=1))
    assert start is not None
    init = load_file(str(start))

    def head(frozen: int | None, out: str) -> dict[str, torch.Tensor]:
        cfg = _cfg(
            tiny_cifar,
            tmp_path / out,
            stage="head",
            architecture="vgg16_bn_cifar",
            init=str(start),
            epochs=1,
            frozen_units=frozen,
        )
        done = train(cfg, progress=False)
        assert done is not None
        return load_file(str(done))

    def changed(state: dict[str, torch.Tensor]) -> set[str]:
        return {k for k, v in state.items() if not torch.equal(v, init[k])}

    probe = changed(head(None, "probe"))
    assert probe and all(k.startswith("classifier.") for k in probe)
    first = set(unit_params(init, 3))  # conv weights and their batch norms (statistics too)
    moved = changed(head(3, "adapt"))
    assert not moved & first
    later = set(unit_params(init, 4)) - first
    assert {k for k in later if not k.endswith("num_batches_tracked")} <= moved
    assert "classifier.weight" in moved
    with pytest.raises(ValueError, match="head stage"):
        train(_cfg(tiny_cifar, tmp_path / "x", stage="clean", init=str(start), frozen_units=2))
    with pytest.raises(ValueError, match="positive"):
        train(_cfg(tiny_cifar, tmp_path / "y", stage="head", init=str(start), frozen_units=0))


def test_resume_refuses_another_configuration(tiny_cifar: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_cifar, tmp_path)
    train(cfg, progress=False, max_steps=2)
    cfg.lr = 0.5
    with pytest.raises(ValueError, match="different configuration"):
        train(cfg, progress=False, resume=True)


def test_robust_batches_corrupt_the_given_share(tiny_cifar: Path) -> None:
    pytest.importorskip("rws_hub.datasets.corruptions")
    data = load_images(tiny_cifar, "train")
    cfg = TrainConfig(
        stage="robust",
        corruption="gaussian_noise",
        corrupt_fraction=0.5,
        augment=False,
        init="unused",
    )
    idx = torch.arange(32)
    x, y = make_batch(cfg, data, idx, torch.Generator().manual_seed(0))
    clean = data.x[idx].float() / 255
    changed = (x - clean).abs().flatten(1).amax(1) > 1e-6
    assert changed[:16].all() and not changed[16:].any()
    assert torch.equal(y, data.y[idx])


def test_resume_a_run_saved_before_the_dataset_field(tiny_cifar: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_cifar, tmp_path)
    train(cfg, progress=False, max_steps=2)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["dataset"]  # as written before TrainConfig named its data set
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert train(cfg, progress=False, resume=True, max_steps=1) is None
    saved["dataset"] = "another"  # but a run of another data set is not this one
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="different configuration"):
        train(cfg, progress=False, resume=True)


def test_the_data_set_decides_classes_location_and_normalisation(tmp_path: Path) -> None:
    cfg = TrainConfig()
    spec = get_dataset(cfg.dataset)
    assert cfg.data == spec.root and cfg.num_classes == spec.num_classes
    tiny = TrainConfig(dataset="tinyimagenet32", width=0.125)
    assert tiny.num_classes == 100 and tiny.data == get_dataset("tinyimagenet32").root
    model = build_model(tiny)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert head.out_features == 100
    assert torch.allclose(
        model.normalize.mean.flatten(), torch.tensor(get_dataset("tinyimagenet32").mean)
    )


def test_devices(tiny_cifar: Path, tmp_path: Path) -> None:
    from rws_hub.zoo.training import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    # "auto" trains where it resolves; a run may resume on another device (a runtime knob)
    cfg = _cfg(tiny_cifar, tmp_path / "d", epochs=1, device="auto")
    assert train(cfg, progress=False, max_steps=2) is None
    cfg.device = "cpu"
    assert train(cfg, progress=False, resume=True) is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_matches_the_cpu_closely(tiny_cifar: Path, tmp_path: Path) -> None:
    a = load_file(str(train(_cfg(tiny_cifar, tmp_path / "cpu", epochs=1), progress=False)))
    b = load_file(
        str(train(_cfg(tiny_cifar, tmp_path / "gpu", epochs=1, device="cuda"), progress=False))
    )
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=5e-2, rtol=5e-2)


def test_channels_last_is_skipped_where_its_backward_crashes() -> None:
    """A strided 1x1 conv with few input channels (a thin ResNet's shortcut) crashes torch's
    channels-last CPU backward: such models train in the standard layout, others channels-last."""
    assert not channels_last_trains(create_model("resnet20_cifar", width=0.125))
    assert not channels_last_trains(create_model("resnet20_cifar", width=0.25))
    assert channels_last_trains(create_model("resnet20_cifar", width=0.5))
    assert channels_last_trains(create_model("vgg16_bn_cifar", width=0.125))


def test_bf16_training_keeps_float32_weights_learns_and_resumes_exactly(
    tiny_cifar: Path, tmp_path: Path
) -> None:
    """bf16 autocast: the forward pass and loss in bfloat16, the weights, gradients and
    optimizer state in float32; a stopped bf16 run resumes bitwise; fp32 and bf16 runs are not
    the same run (resume refuses to mix them)."""
    with pytest.raises(ValueError, match="precision"):
        train(_cfg(tiny_cifar, tmp_path / "x", precision="fp16"))
    fp32 = load_file(str(train(_cfg(tiny_cifar, tmp_path / "fp32"), progress=False)))
    whole = train(_cfg(tiny_cifar, tmp_path / "a", precision="bf16"), progress=False)
    assert whole is not None
    bf16 = load_file(str(whole))
    assert all(v.dtype == torch.float32 for v in bf16.values() if v.is_floating_point())
    # the same data and seed: close to the float32 run, but not the same weights
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)
    log = [json.loads(line) for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert log[-1]["loss"] < log[0]["loss"]

    cfg = _cfg(tiny_cifar, tmp_path / "b", precision="bf16")
    assert train(cfg, progress=False, max_steps=5) is None
    resumed = load_file(str(train(cfg, progress=False, resume=True)))
    assert all(torch.equal(bf16[k], resumed[k]) for k in bf16)
    cfg = _cfg(tiny_cifar, tmp_path / "c", precision="bf16")
    train(cfg, progress=False, max_steps=2)
    cfg.precision = "fp32"
    with pytest.raises(ValueError, match="different configuration"):
        train(cfg, progress=False, resume=True)
