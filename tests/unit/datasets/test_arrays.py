"""Loaders for every layout, the safe unpickler, CIFAR-10-C style output and ``rws corrupt``."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rws_hub.cli import main as rws_main
from rws_hub.datasets.arrays import ImageArrays, load_images, save_corrupted_arrays


def images_nhwc(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def npz(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    x, y = images_nhwc(20), np.arange(20) % 10
    p = tmp_path / "set.npz"
    np.savez(p, x=x, y=y)
    return p, x, y


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_file_and_split_folder(tmp_path: Path, npz) -> None:
    p, x, y = npz
    d = load_images(p)
    assert d.x.dtype == torch.uint8 and d.x.shape == (20, 3, 32, 32) and d.y.dtype == torch.int64
    assert torch.equal(d.x, nchw(x)) and d.y.tolist() == y.tolist() and len(d) == 20
    assert d.classes[0] == "airplane" and len(d.subset(5)) == 5
    folder = tmp_path / "splits"
    folder.mkdir()
    np.savez(folder / "train.npz", x=x[:12], y=y[:12])
    np.savez(
        folder / "test.npz", x=x[12:], y=y[12:], classes=np.array([f"c{i}" for i in range(10)])
    )
    assert len(load_images(folder)) == 12
    t = load_images(folder, "test")
    assert len(t) == 8 and t.classes[3] == "c3" and torch.equal(t.x, nchw(x[12:]))


def test_npz_channels_first_and_float(tmp_path: Path) -> None:
    x = images_nhwc(4)
    np.savez(tmp_path / "a.npz", x=x.transpose(0, 3, 1, 2), y=np.zeros(4))
    assert torch.equal(load_images(tmp_path / "a.npz").x, nchw(x))
    np.savez(tmp_path / "b.npz", x=x.astype(np.float32) / 255, y=np.zeros(4))
    assert torch.equal(load_images(tmp_path / "b.npz").x, nchw(x))


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_images(tmp_path / "nothing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        load_images(tmp_path / "empty")
    np.savez(tmp_path / "bad.npz", images=images_nhwc(2))
    with pytest.raises(ValueError, match="'x' and 'y'"):
        load_images(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", x=images_nhwc(3), y=np.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        load_images(tmp_path / "short.npz")


# ---------------------------------------------------------------------------------------------
# torchvision's CIFAR python folders


def write_cifar10(root: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A fake cifar-10-batches-py: pickled dicts with bytes keys, as the real files have."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = images_nhwc(per_batch, seed=i)
        y = [(i + k) % 10 for k in range(per_batch)]
        rows = x.transpose(0, 3, 1, 2).reshape(per_batch, -1)  # R plane, G plane, B plane
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": rows, b"labels": y}, f, protocol=2)
        xs.append(x)
        ys.append(y)
    names = [n.encode() for n in ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    return np.concatenate(xs), np.concatenate(ys)


def test_cifar10_python_folder(tmp_path: Path) -> None:
    x, y = write_cifar10(tmp_path)
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train = load_images(path, "train")
        assert len(train) == 20 and torch.equal(train.x, nchw(x[:20]))
        assert train.y.tolist() == y[:20].tolist() and train.classes[:2] == ("a", "b")
        test = load_images(path, "test")
        assert len(test) == 4 and torch.equal(test.x, nchw(x[20:]))


def test_cifar100_python_folder(tmp_path: Path) -> None:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x = images_nhwc(6)
    for split in ("train", "test"):
        with open(d / split, "wb") as f:
            pickle.dump(
                {
                    "data": x.transpose(0, 3, 1, 2).reshape(6, -1),
                    "fine_labels": [0, 1, 2, 3, 4, 99],
                    "coarse_labels": [0, 0, 1, 1, 2, 19],
                },
                f,
            )
    with open(d / "meta", "wb") as f:
        pickle.dump(
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
            f,
        )
    fine = load_images(tmp_path, "test")
    assert torch.equal(fine.x, nchw(x)) and fine.y.tolist()[-1] == 99
    assert len(fine.classes) == 100 and fine.classes[99] == "fine99"
    coarse = load_images(d, "train", cifar100_labels="coarse")
    assert coarse.y.tolist()[-1] == 19 and coarse.classes[0] == "coarse0"


class _Boom:
    """Unpickling this would call os.system."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickles_cannot_run_code(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Boom(), b"labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_images(tmp_path, "test")


# ---------------------------------------------------------------------------------------------
# ImageFolder


def write_image_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(((48, 40), (20, 64), (32, 32))):
            arr = np.clip(np.array(colour) + rng.normal(0, 5, (h, w, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "flat")
    d = load_images(tmp_path / "flat")
    assert d.x.shape == (6, 3, 32, 32) and d.x.dtype == torch.uint8
    assert d.classes == ("cat", "dog") and d.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert float(d.x[:3, 0].float().mean()) > 150 and float(d.x[3:, 2].float().mean()) > 150
    assert load_images(tmp_path / "flat", size=16).x.shape == (6, 3, 16, 16)
    # <root>/<split>/<class>/...
    write_image_folder(tmp_path / "split" / "test")
    assert len(load_images(tmp_path / "split", "test")) == 6


# ---------------------------------------------------------------------------------------------
# CIFAR-10-C style folders


def test_cifar_c_folder_released_layout(tmp_path: Path) -> None:
    # the released layout: <name>.npy (5·N, 32, 32, 3) uint8, labels.npy (5·N,), no metadata
    n = 6
    blocks = [images_nhwc(n, seed=s) for s in range(5)]
    np.save(tmp_path / "fog.npy", np.concatenate(blocks))
    np.save(tmp_path / "labels.npy", np.tile(np.arange(n, dtype=np.uint8), 5))
    for sev in (1, 3, 5):
        d = load_images(tmp_path, corruption="fog", severity=sev)
        assert torch.equal(d.x, nchw(blocks[sev - 1])) and d.y.tolist() == list(range(n))
    assert len(load_images(tmp_path, corruption="fog", severity=None)) == 5 * n
    with pytest.raises(ValueError, match="available: fog"):
        load_images(tmp_path, corruption="snow")
    with pytest.raises(ValueError, match="corruption=NAME"):
        load_images(tmp_path)


def test_save_corrupted_arrays_round_trip(tmp_path: Path) -> None:
    x = nchw(images_nhwc(10))
    data = ImageArrays(x, torch.arange(10) % 3, ("a", "b", "c"))
    files = save_corrupted_arrays(data, tmp_path / "c", ["fog", "contrast"], (2, 5), seed=3)
    assert {f.name for f in files} == {"fog.npy", "contrast.npy", "labels.npy", "corruptions.json"}
    arr = np.load(tmp_path / "c" / "fog.npy")
    assert arr.shape == (20, 32, 32, 3) and arr.dtype == np.uint8
    labels = np.load(tmp_path / "c" / "labels.npy")
    assert labels.dtype == np.uint8 and labels.tolist() == (data.y.tolist() * 2)
    meta = json.loads((tmp_path / "c" / "corruptions.json").read_text())
    assert meta["severities"] == [2, 5] and meta["corruptions"] == ["contrast", "fog"]
    back = load_images(tmp_path / "c", corruption="fog", severity=5)
    assert back.classes == ("a", "b", "c") and back.y.tolist() == data.y.tolist()
    # the same as corrupting in memory with the same seed, and reproducible
    assert torch.equal(back.x, data.corrupted("fog", 5, seed=3).x)
    assert not torch.equal(back.x, data.corrupted("fog", 5, seed=4).x)
    with pytest.raises(ValueError, match="severities"):
        load_images(tmp_path / "c", corruption="fog", severity=1)
    with pytest.raises(ValueError, match="other severities"):
        save_corrupted_arrays(data, tmp_path / "c", ["snow"], (1,))


def test_corrupt_on_the_fly(npz) -> None:
    p, x, _ = npz
    clean = load_images(p)
    a = load_images(p, corruption="gaussian_noise", severity=5, seed=1)
    assert a.x.dtype == torch.uint8 and not torch.equal(a.x, clean.x)
    assert torch.equal(a.x, load_images(p, corruption="gaussian_noise", severity=5, seed=1).x)
    assert len(load_images(p, corruption="contrast", severity=None)) == 5 * len(clean)


def test_dataset_view(npz) -> None:
    p, x, y = npz
    data = load_images(p)
    ds = data.as_dataset()
    img, label = ds[3]
    assert len(ds) == 20 and label == int(y[3]) and img.dtype == torch.float32
    assert torch.allclose(img * 255, nchw(x[3:4])[0].float())
    ds_c = data.as_dataset(lambda t: t * 2, corruption="fog", severity=3, seed=0)
    a, b = ds_c[3][0], ds_c[3][0]
    assert torch.equal(a, b) and float(a.max()) <= 2.0 and not torch.allclose(a, img * 2)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 3, 32, 32) and yb.tolist() == y[:8].tolist()
    with pytest.raises(ValueError, match="known"):
        data.as_dataset(corruption="rain")


# ---------------------------------------------------------------------------------------------
# rws corrupt


def test_rws_corrupt_end_to_end(tmp_path: Path, npz, capsys: pytest.CaptureFixture) -> None:
    p, x, y = npz
    out = tmp_path / "out"
    argv = ["corrupt", "--data", str(p), "--corruptions", "fog,pixelate", "--severities", "4-5"]
    rc = rws_main([*argv, "--limit", "7", "--seed", "1", "-q", "-o", str(out)])
    assert rc == 0 and "wrote 2 corruption(s)" in capsys.readouterr().out
    arr = np.load(out / "pixelate.npy")
    assert arr.shape == (14, 32, 32, 3) and arr.dtype == np.uint8
    assert np.load(out / "labels.npy").tolist() == y[:7].tolist() * 2
    d = load_images(out, corruption="fog", severity=4)
    assert torch.equal(d.x, load_images(p).subset(7).corrupted("fog", 4, seed=1).x)
    # bad arguments are reported in one line with exit code 2
    assert rws_main(["corrupt", "--data", str(p), "--corruptions", "rain", "-o", str(out)]) == 2
    assert rws_main(["corrupt", "--data", str(p), "--severities", "0-2", "-o", str(out)]) == 2
    assert "1..5" in capsys.readouterr().err
