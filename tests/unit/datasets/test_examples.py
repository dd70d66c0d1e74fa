"""Demo example images of a data set."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rws_hub.datasets.arrays import ImageArrays
from rws_hub.datasets.examples import class_slug, example_pngs


def _images(n_classes: int = 10, per: int = 2) -> ImageArrays:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_classes * per, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(n_classes).repeat(per)
    return ImageArrays(x, y, [f"c{i}" for i in range(n_classes)])


def test_examples_are_pngs_of_distinct_classes_named_by_kind() -> None:
    images = _images()
    classes = ["American alligator", "goldfish", *[f"class {i}" for i in range(2, 10)]]
    out = example_pngs(images, classes)
    assert list(out) == [
        "american_alligator-clean.png",
        "goldfish-clean.png",
        "class_2-clean.png",
        "class_3-fog.png",
        "class_5-gaussian_noise.png",
        "class_6-motion_blur.png",
        "class_7-contrast.png",
        "class_8-snow.png",
    ]
    first = next(iter(out.values()))
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(first))))
    assert torch.equal(decoded.permute(2, 0, 1), images.x[0])  # clean: the image itself
    assert example_pngs(images, classes) == out  # reproducible


def test_fewer_classes_fewer_examples_and_bad_names() -> None:
    out = example_pngs(_images(4), ["a", "b", "c", "d"])
    assert list(out) == ["a-clean.png", "b-clean.png", "c-clean.png", "d-fog.png"]
    with pytest.raises(ValueError):
        example_pngs(_images(), [str(i) for i in range(10)], corruptions=["nope"])
    assert class_slug("koala, koala bear") == "koala_koala_bear" and class_slug("--") == "class"
