"""CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 train, 10,000 test).

The only place CIFAR-10's class names and normalisation are written; everything else reads
them from this spec (``get_dataset("cifar10")``) or from a model folder's ``config.json``.
It is the default data set: model folders written before configs named their data set were
made for it. Its default location is ``../shared/data/cifar10`` (``train.npz`` /
``test.npz``); torchvision's ``cifar-10-batches-py/`` folder and CIFAR-10-C style corruption
folders are read by the same loaders (:mod:`rws_hub.datasets.arrays`).
"""

from __future__ import annotations

from rws_hub.datasets.spec import DatasetSpec, register_dataset

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

CIFAR10 = register_dataset(
    DatasetSpec(
        name="cifar10",
        title="CIFAR-10",
        classes=CIFAR10_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        image_size=32,
        root="../shared/data/cifar10",
        description="CIFAR-10: 50,000 train / 10,000 test images, 32x32, 10 classes",
    ),
    default=True,
)
