"""Example images of a data set for demos: a few test images, some corrupted, as PNG files
named ``<class>-<corruption|clean>.png`` (what ``examples/`` of a model folder holds and the
demo shows)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import torch
from PIL import Image

from rws_hub.datasets.arrays import ImageArrays
from rws_hub.datasets.corruptions import check_corruption, corrupt_uint8

__all__ = ["EXAMPLE_CORRUPTIONS", "class_slug", "example_pngs"]

EXAMPLE_CORRUPTIONS: tuple[str, ...] = ("fog", "gaussian_noise", "motion_blur", "contrast", "snow")
"""The corruptions :func:`example_pngs` applies by default (one image each)."""


def class_slug(name: str) -> str:
    """A class name as a file-name part: lower case, runs of other characters as ``_``
    (``"American alligator"`` -> ``"american_alligator"``)."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return slug or "class"


def example_pngs(
    images: ImageArrays,
    classes: Sequence[str],
    *,
    clean: int = 3,
    corruptions: Sequence[str] = EXAMPLE_CORRUPTIONS,
    severity: int = 5,
    seed: int = 0,
) -> dict[str, bytes]:
    """``clean`` clean images and one per corruption (at ``severity``), each the first image of
    a different class (spread over the classes the images hold; fewer examples when they hold
    fewer classes), as ``{file name: PNG bytes}``."""
    for c in corruptions:
        check_corruption(c)
    present = [int(c) for c in torch.unique(images.y)]
    kinds = (["clean"] * clean + list(corruptions))[: len(present)]
    out: dict[str, bytes] = {}
    gen = torch.Generator().manual_seed(seed)
    for i, kind in enumerate(kinds):
        label = present[i * len(present) // len(kinds)]
        x = images.x[int((images.y == label).nonzero()[0])]
        if kind != "clean":
            x = corrupt_uint8(x[None], kind, severity, generator=gen)[0]
        buf = io.BytesIO()
        Image.fromarray(x.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
        out[f"{class_slug(classes[label])}-{kind}.png"] = buf.getvalue()
    return out
