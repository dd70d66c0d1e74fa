"""The zoo's entries: which model folders the project publishes, defined in one place.

An entry names its folder (``model-store/<name>/`` in a checkout, ``<repo_id>`` on the hub),
its architecture (a :mod:`rws_hub.archs` registry name) and width, its data set (a
:mod:`rws_hub.datasets` spec name) and its ``hubconf.py`` entrypoint. The weights enums of
:mod:`rws_hub.zoo.weights`, the ``rws zoo build`` defaults and the command-line examples are
derived from these definitions. Plain data: importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Environment variable: a model folder that replaces the default entry's folder.
FOLDER_ENV = "RWS_HUB_FOLDER"
#: Where a checkout keeps the entries' folders (relative to the repository root).
STORE_DIR = "model-store"


@dataclass(frozen=True)
class ZooEntry:
    """One published model folder and how it is made."""

    name: str  # folder name, e.g. "<dataset>-<architecture family>"
    entrypoint: str  # hubconf.py function name
    architecture: str
    width: float
    dataset: str
    repo_id: str  # hub model repository
    summary: str  # one line: what the model is
    env: str | None = None  # environment variable that overrides the folder
    #: ``rws zoo build`` options of this entry that differ from the pipeline's defaults
    #: (:class:`rws_hub.zoo.pipeline.ZooSpec` field names).
    recipe: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def folder(self) -> str:
        """The folder in a checkout, relative to the repository root (``model-store/<name>``)."""
        return f"{STORE_DIR}/{self.name}"

    @property
    def work(self) -> str:
        """The ``rws zoo build`` work folder (relative to the working directory)."""
        return f"runs/zoo/{self.name}"


CIFAR10_VGG16 = ZooEntry(
    name="cifar10-vgg16",
    entrypoint="cifar10_vgg16",
    architecture="vgg16_cifar",
    width=0.5,
    dataset="cifar10",
    repo_id="rws-hub/cifar10-vgg16",
    summary="VGG-16 (32x32 variant, half width) trained on CIFAR-10, with its corruption "
    "signatures",
    env=None,
)

CIFAR10_VGG16_BN = ZooEntry(
    name="cifar10-vgg16-bn",
    entrypoint="cifar10_vgg16_bn",
    architecture="vgg16_bn_cifar",
    width=0.5,
    dataset="cifar10",
    repo_id="rws-hub/cifar10-vgg16-bn",
    summary="VGG-16 with batch norm (32x32 variant, half width) trained on CIFAR-10, with its "
    "corruption signatures",
    env=FOLDER_ENV,
    recipe={
        "pretrain_epochs": 40,
        "pretrain_lr": 0.1,
        "label_smoothing": 0.1,
        # 30% corrupted images per fine-tuning batch, as the ResNet entry (docs/training.md)
        "corrupt_fraction": 0.3,
        # every stage under bfloat16 autocast: 2.2x the float32 throughput on this CPU
        # (docs/performance-training.md); 40 epochs fit where 20 did in float32
        "precision": "bf16",
    },
)

TINYIMAGENET32_VGG16_BN = ZooEntry(
    name="tinyimagenet32-vgg16-bn",
    entrypoint="tinyimagenet32_vgg16_bn",
    architecture="vgg16_bn_cifar",
    width=0.5,
    dataset="tinyimagenet32",
    repo_id="rws-hub/tinyimagenet32-vgg16-bn",
    summary="The CIFAR-10 VGG-16-BN's pretrained weights fine-tuned on Tiny-ImageNet-32 (100 "
    "classes), with its corruption signatures (same lineage: the CIFAR-10 signatures patch it)",
    recipe={
        "pretrained": "model-store/cifar10-vgg16-bn/pretrained.safetensors",
        # adapt: the first 7 units (the signature's) keep θ_pre, the rest learns the 100 classes
        "head_epochs": 6.0,
        "head_lr": 0.05,
        "head_frozen_units": 7,
        # the CIFAR-10 fine-tunes' step counts (about 190 clean, 150 robust at batch 128)
        "clean_epochs": 1.0,
        "robust_epochs": 0.8,
        # its detector's rule was chosen on 40 held-out images per corruption and severity
        "detector_per_cell": 40,
        "precision": "bf16",
        # low-rank signatures (rank 16, int4 factors), as the low-rank sweep chose on the
        # CIFAR-10 VGG-16-BN: about 1 MB for the 19 instead of 8 (model-store/ stays < 100 MB)
        "quantization": "rank16-int4",
    },
)

CIFAR10_RESNET20 = ZooEntry(
    name="cifar10-resnet20",
    entrypoint="cifar10_resnet20",
    architecture="resnet20_cifar",
    width=1.0,
    dataset="cifar10",
    repo_id="rws-hub/cifar10-resnet20",
    summary="ResNet-20 (the CIFAR ResNet with batch norm) trained on CIFAR-10, with its corruption "
    "signatures",
    env=FOLDER_ENV,
    recipe={
        "pretrain_epochs": 40,
        "pretrain_lr": 0.1,
        "label_smoothing": 0.1,
        # the architecture's recommended K (its K sweep, docs/results/cifar10-resnet20): the
        # stem, the first two stages and layer3.0's convs; K = 7 (the VGG default) recovered
        # 71% of the robust models' gain on the full test set
        "layers": 16,
        # the robust model's batch-norm statistics swapped in: better RA and TA than projected
        # deltas on this entry (docs/results/cifar10-resnet20, batch-norm comparison)
        "bn_stats": "swap",
        # 30% corrupted images per fine-tuning batch (50% elsewhere): the patched TA stays
        # within 2 points of the backbone (docs/results/cifar10-resnet20, fine-tuning recipe)
        "corrupt_fraction": 0.3,
    },
)

#: Every published entry by name (each ships its folder in ``model-store/``), the default first.
ENTRIES: dict[str, ZooEntry] = {
    e.name: e for e in (CIFAR10_RESNET20, CIFAR10_VGG16_BN, CIFAR10_VGG16, TINYIMAGENET32_VGG16_BN)
}
#: Entries whose recipe is defined but whose folder has not landed yet: ``rws zoo build --name``
#: builds them; they get a weights enum and a hub entrypoint when they move to :data:`ENTRIES`.
PLANNED: dict[str, ZooEntry] = {}
#: The embedded default: what ``rws zoo build``, ``rws serve`` and the examples use. The entry
#: that meets all three of the zoo's CIFAR-10 targets (backbone TA >= 91, patched TA within 2
#: points, >= 85% of the robust models' RA gain; docs/results.md).
DEFAULT_ENTRY: ZooEntry = CIFAR10_RESNET20


def get_entry(name: str, *, planned: bool = False) -> ZooEntry:
    """An entry by folder name or entrypoint name (``planned``: also the planned ones);
    ``ValueError`` listing the known ones."""
    pool = {**ENTRIES, **PLANNED} if planned else ENTRIES
    for entry in pool.values():
        if name in (entry.name, entry.entrypoint):
            return entry
    raise ValueError(f"unknown zoo entry {name!r}; known: {', '.join(pool)}")
