"""Data-set specs: the registry refuses duplicates; a toy data set registered here works with
the loaders that take a spec; the built-in specs match their data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rws_hub.datasets import (
    DatasetSpec,
    dataset_of,
    default_dataset,
    get_dataset,
    list_datasets,
    register_dataset,
    unregister_dataset,
)
from rws_hub.datasets.arrays import load_dataset, load_images
from rws_hub.zoo.entries import DEFAULT_ENTRY

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"


@pytest.fixture
def toy_data(tmp_path: Path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("holdout", 6)):
        x = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{split}.npz", x=x, y=np.arange(n) % 3)
    spec = register_dataset(
        DatasetSpec(
            name="toy3",
            title="Toy-3",
            classes=("red", "green", "blue"),
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            image_size=16,
            root=str(tmp_path),
            splits={"test": "holdout"},
        )
    )
    yield spec
    unregister_dataset("toy3")


def test_builtins_and_default() -> None:
    assert {"cifar10", "tinyimagenet32"} <= set(list_datasets())
    assert default_dataset().name == "cifar10"
    assert get_dataset("cifar10").num_classes == 10
    assert get_dataset("tinyimagenet32").num_classes == 100
    with pytest.raises(ValueError, match="known: cifar10"):
        get_dataset("nope")


def test_duplicate_refused(toy_data: DatasetSpec) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(toy_data)
    with pytest.raises(ValueError, match="default"):
        register_dataset(DatasetSpec("other", "Other", ("a",), (0, 0, 0), (1, 1, 1)), default=True)
    with pytest.raises(ValueError, match="distinct"):
        DatasetSpec("bad", "Bad", ("a", "a"), (0, 0, 0), (1, 1, 1))


def test_toy_dataset_with_the_loaders(toy_data: DatasetSpec) -> None:
    train = load_dataset("toy3")
    assert len(train) == 12 and train.classes == ("red", "green", "blue")
    assert tuple(train.x.shape[1:]) == (3, 16, 16)
    test = load_dataset(toy_data, "test")  # the spec maps test -> holdout.npz
    assert len(test) == 6
    same = load_images(toy_data.root, "test", dataset="toy3")
    assert same.classes == test.classes and len(same) == 6
    noisy = load_dataset("toy3", "test", corruption="fog", severity=3)
    assert noisy.classes == test.classes and not bool((noisy.x == test.x).all())
    with pytest.raises(ValueError, match="do not fit"):
        load_images(
            toy_data.root,
            "train",
            dataset=DatasetSpec("two", "Two", ("a", "b"), (0,) * 3, (1,) * 3),
        )


def test_config_keys_and_lookup(toy_data: DatasetSpec) -> None:
    cfg = toy_data.config()
    assert cfg == {
        "dataset": "toy3",
        "classes": ["red", "green", "blue"],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "input_size": [3, 16, 16],
    }
    assert dataset_of(cfg) is toy_data
    assert dataset_of({"classes": ["red", "green", "blue"]}) is toy_data  # by classes
    assert dataset_of({"metrics": {"dataset": "toy3"}}) is toy_data
    assert dataset_of({}) is default_dataset()  # old folders name none
    assert dataset_of({"dataset": "unregistered"}) is None


def test_cifar10_spec_matches_the_embedded_folder() -> None:
    folder = Path(__file__).resolve().parents[3] / DEFAULT_ENTRY.folder
    if not (folder / "config.json").is_file():
        pytest.skip("no embedded model folder")
    config = json.loads((folder / "config.json").read_text())
    spec = dataset_of(config)
    assert spec is get_dataset("cifar10")
    assert list(spec.classes) == config["classes"]
    assert list(spec.mean) == config["mean"] and list(spec.std) == config["std"]


@pytest.mark.skipif(
    not (SHARED / "tinyimagenet32" / "classes.json").is_file(), reason="no tinyimagenet32 data"
)
def test_tinyimagenet32_matches_its_data() -> None:
    spec = get_dataset("tinyimagenet32")
    meta = json.loads((SHARED / "tinyimagenet32" / "classes.json").read_text())
    assert list(spec.classes) == [n.split(",")[0].strip() for n in meta["names"]]
    test = load_dataset(spec, "test", path=SHARED / "tinyimagenet32")
    assert len(test) == 5000 and test.classes == spec.classes
    x = test.x[:2000].float().div(255)
    mean = x.mean((0, 2, 3))
    assert all(abs(float(m) - s) < 0.03 for m, s in zip(mean, spec.mean, strict=True))
