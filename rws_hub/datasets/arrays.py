"""Data loading: labelled image sets held in memory as uint8 tensors (tens of thousands of
small images).

:func:`load_images` reads the layouts users have, detected from the path:

- a ``.npz`` file with ``x`` (N, H, W, 3) or (N, 3, H, W) uint8 and ``y`` (N,), optionally
  ``classes``; or a folder holding ``train.npz`` / ``test.npz`` (``split`` picks one);
- torchvision's CIFAR-10 / CIFAR-100 python folders (``cifar-10-batches-py/``,
  ``cifar-100-python/``, or a folder containing one of them). Their batches are pickles: they
  are read with a restricted unpickler that only rebuilds NumPy arrays and plain containers and
  refuses every other global, so a tampered file cannot run code;
- an ImageFolder tree (``<root>/<class>/<image>``, or ``<root>/<split>/<class>/<image>``);
  images are resized (shorter side) and centre-cropped to ``size`` × ``size``;
- a CIFAR-10-C style folder (``<corruption>.npy`` uint8 NHWC with the severities stacked in
  blocks of N, plus ``labels.npy``), with ``corruption=`` and ``severity=``.

With ``dataset=`` (a registered :class:`~rws_hub.datasets.spec.DatasetSpec` or its name) the
split's file name and the class names come from the spec; :func:`load_dataset` reads a
registered data set from where it lives by default.

With ``corruption=`` on a clean layout the images are corrupted in memory instead (seeded, so
the same call gives the same images). :func:`save_corrupted_arrays` writes CIFAR-10-C style
folders (``rws corrupt``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rws_hub.datasets.corruptions import check_corruption, corrupt, corrupt_uint8
from rws_hub.datasets.spec import DatasetSpec, default_dataset, get_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
META_FILE = "corruptions.json"  # written beside CIFAR-10-C style arrays by save_corrupted_arrays
#: The data set whose python-pickle folder layout ``cifar-10-batches-py/`` is (its class names
#: are used when the folder lacks ``batches.meta``).
PICKLE_LAYOUT_DATASET = "cifar10"


def _default_class_names() -> tuple[str, ...]:
    return default_dataset().classes


@dataclass
class ImageArrays:
    """A labelled image set in memory: ``x`` uint8 (N, 3, H, W), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...] = field(default_factory=_default_class_names)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None) -> ImageArrays:
        """The first ``n`` images (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return ImageArrays(self.x[:n], self.y[:n], self.classes)

    def corrupted(self, name: str, severity: int = 5, *, seed: int = 0) -> ImageArrays:
        """A corrupted copy (uint8), reproducible from ``seed`` (randomness drawn per block)."""
        return ImageArrays(corrupt_blocks(self.x, name, severity, seed, 0), self.y, self.classes)

    def as_dataset(
        self,
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        corruption: str | None = None,
        severity: int = 5,
        seed: int = 0,
    ) -> ImageArraysDataset:
        """A :class:`torch.utils.data.Dataset` view yielding ``(image, label)``.

        The image is a float (3, H, W) tensor in [0, 1], passed through ``transform`` when given;
        with ``corruption`` each item is corrupted on the fly, seeded by ``(seed, index)``.
        """
        return ImageArraysDataset(self, transform, corruption, severity, seed)


class ImageArraysDataset(torch.utils.data.Dataset):
    """Dataset view of :class:`ImageArrays` (see :meth:`ImageArrays.as_dataset`)."""

    def __init__(
        self,
        arrays: ImageArrays,
        transform: Callable[[torch.Tensor], Any] | None = None,
        corruption: str | None = None,
        severity: int = 5,
        seed: int = 0,
    ) -> None:
        if corruption is not None:
            check_corruption(corruption)
        self.arrays = arrays
        self.transform = transform
        self.corruption = corruption
        self.severity = severity
        self.seed = seed

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x = self.arrays.x[i].float().div_(255)
        if self.corruption is not None:
            g = torch.Generator().manual_seed(
                _block_seed(self.seed, self.corruption, self.severity, int(i))
            )
            x = corrupt(x, self.corruption, self.severity, generator=g)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.arrays.y[i])


_BLOCK = 128  # corruption randomness is drawn per block of this many images


def _block_seed(seed: int, name: str, severity: int, start: int) -> int:
    """A 63-bit seed for the block (or item) at ``start``: distinct inputs, unrelated seeds."""
    key = f"{seed}/{name}/{severity}/{start}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def corrupt_blocks(
    x: torch.Tensor, name: str, severity: int, seed: int, start: int = 0
) -> torch.Tensor:
    """Corrupt uint8 images ``x`` (whose first one has index ``start`` in its set) in blocks
    of ``_BLOCK`` images, each block seeded by its absolute position: the result does not
    depend on how the caller batches."""
    parts = []
    for s in range(0, len(x), _BLOCK):
        g = torch.Generator().manual_seed(_block_seed(seed, name, severity, start + s))
        parts.append(corrupt_uint8(x[s : s + _BLOCK], name, severity, generator=g))
    return torch.cat(parts) if parts else x.clone()


# ---------------------------------------------------------------------------------------------
# loading


def load_images(
    path: str | Path,
    split: str = "train",
    *,
    corruption: str | None = None,
    severity: int | None = 5,
    size: int = 32,
    seed: int = 0,
    cifar100_labels: str = "fine",
    dataset: str | DatasetSpec | None = None,
) -> ImageArrays:
    """Load a labelled image set into memory; the layout is detected from ``path``.

    Layouts (see the module docstring): ``.npz`` (x/y), a folder of ``train.npz``/``test.npz``,
    CIFAR-10/100 python folders (read with a restricted unpickler that never runs code from the
    file), ImageFolder trees (resized and centre-cropped to ``size``), and CIFAR-10-C style
    folders. ``split`` is ``"train"`` or ``"test"`` (ignored by ``.npz`` files and CIFAR-10-C
    folders). ``corruption`` / ``severity`` select a block of a CIFAR-10-C folder
    (``severity=None``: all its severities, stacked); on any other layout they corrupt the
    images in memory, reproducibly from ``seed``. ``cifar100_labels`` is ``"fine"`` or
    ``"coarse"``. ``dataset`` (a spec or a registered name): the split is read from the file
    the spec names for it (``test`` -> ``val.npz`` where so mapped), and the images take the
    spec's class names (labels beyond them are refused).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no data set at {p}")
    spec = get_dataset(dataset) if dataset is not None else None
    if p.is_dir() and _is_cifar_c(p):
        return _with_classes(_load_cifar_c(p, corruption, severity), spec, p)
    stem = spec.split_file(split) if spec is not None else split
    data = _with_classes(_load_clean(p, split, size, cifar100_labels, stem), spec, p)
    if corruption is None:
        return data
    if severity is None:
        parts = [data.corrupted(corruption, s, seed=seed) for s in range(1, 6)]
        return ImageArrays(
            torch.cat([q.x for q in parts]), torch.cat([q.y for q in parts]), data.classes
        )
    return data.corrupted(corruption, severity, seed=seed)


def load_dataset(
    dataset: str | DatasetSpec,
    split: str = "train",
    *,
    path: str | Path | None = None,
    **kwargs: Any,
) -> ImageArrays:
    """A registered data set's ``split`` (from ``path``, default: where the spec says it
    lives), with the spec's class names; other keyword arguments as :func:`load_images`."""
    spec = get_dataset(dataset)
    where = path if path is not None else spec.root
    if where is None:
        raise ValueError(f"data set {spec.name!r} has no default location: pass path=")
    return load_images(where, split, dataset=spec, **kwargs)


def _with_classes(data: ImageArrays, spec: DatasetSpec | None, p: Path) -> ImageArrays:
    """``data`` with the spec's class names (labels must fit them); as is without a spec."""
    if spec is None:
        return data
    if len(data.y) and (int(data.y.min()) < 0 or int(data.y.max()) >= spec.num_classes):
        raise ValueError(
            f"{p}: labels {int(data.y.min())}..{int(data.y.max())} do not fit the "
            f"{spec.num_classes} classes of data set {spec.name!r}"
        )
    return ImageArrays(data.x, data.y, spec.classes)


def _load_clean(
    p: Path, split: str, size: int, cifar100_labels: str, stem: str | None = None
) -> ImageArrays:
    stem = stem or split
    if p.is_file():
        if p.suffix == ".npz":
            return _load_npz(p)
        raise ValueError(f"unsupported data file {p} (expected a .npz)")
    if (p / f"{stem}.npz").is_file():
        return _load_npz(p / f"{stem}.npz")
    cifar10 = _find_dir(p, "cifar-10-batches-py", ("data_batch_1", "test_batch"))
    if cifar10 is not None:
        return _load_cifar10_python(cifar10, split)
    cifar100 = _find_dir(p, "cifar-100-python", ("train", "test", "meta"))
    if cifar100 is not None:
        return _load_cifar100_python(cifar100, split, cifar100_labels)
    root = p / split if _is_image_folder(p / split) else p
    if _is_image_folder(root):
        return _load_image_folder(root, size)
    raise FileNotFoundError(
        f"no data set recognised at {p}: expected a .npz (x, y), a folder with {stem}.npz, "
        "cifar-10-batches-py/, cifar-100-python/, an ImageFolder tree (class folders of "
        "images), or a CIFAR-10-C folder (<corruption>.npy + labels.npy)"
    )


def _load_npz(p: Path) -> ImageArrays:
    with np.load(p, allow_pickle=False) as d:
        if "x" not in d or "y" not in d:
            raise ValueError(f"{p} needs arrays 'x' and 'y' (has {', '.join(d.files)})")
        x, y = d["x"], d["y"]
        classes = tuple(str(c) for c in d["classes"]) if "classes" in d else None
    xt = _to_nchw_uint8(x, p)
    yt = torch.from_numpy(np.asarray(y).astype(np.int64).reshape(-1))
    if len(yt) != len(xt):
        raise ValueError(f"{p}: {len(xt)} images but {len(yt)} labels")
    return ImageArrays(xt, yt, classes or _default_classes(yt))


def _to_nchw_uint8(x: np.ndarray, where: Path | str) -> torch.Tensor:
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"{where}: images must be (N, H, W, 3) or (N, 3, H, W), got {x.shape}")
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and float(x.max()) <= 1.0:
            x = np.round(x * 255.0)
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.shape[-1] == 3:  # NHWC (also when ambiguous, as in (N, 3, 3, 3))
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def _default_classes(y: torch.Tensor) -> tuple[str, ...]:
    """Class names for labels ``y`` of a file that names none: the default data set's when
    they fit, else the label numbers."""
    n = int(y.max()) + 1 if len(y) else 0
    default = default_dataset().classes
    if n <= len(default):
        return default
    return tuple(str(i) for i in range(n))


def _find_dir(p: Path, name: str, files: tuple[str, ...]) -> Path | None:
    for cand in (p, p / name):
        if cand.is_dir() and all((cand / f).is_file() for f in files):
            return cand
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only NumPy arrays and plain containers; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_pickle(p: Path) -> dict:
    with open(p, "rb") as f:
        obj = _RestrictedUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: expected a dict, got {type(obj).__name__}")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _names(values: Iterable) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _cifar_rows(d: dict, p: Path) -> torch.Tensor:
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{p}: 'data' must be (N, 3072) uint8, got {data.shape}")
    return torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))


def _load_cifar10_python(root: Path, split: str) -> ImageArrays:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for f in files:
        if not (root / f).is_file():
            raise FileNotFoundError(f"missing {root / f}")
        d = _read_pickle(root / f)
        xs.append(_cifar_rows(d, root / f))
        ys.append(torch.as_tensor(np.asarray(d["labels"], dtype=np.int64)))
    classes = get_dataset(PICKLE_LAYOUT_DATASET).classes
    if (root / "batches.meta").is_file():
        classes = _names(_read_pickle(root / "batches.meta")["label_names"])
    return ImageArrays(torch.cat(xs), torch.cat(ys), classes)


def _load_cifar100_python(root: Path, split: str, labels: str) -> ImageArrays:
    if labels not in ("fine", "coarse"):
        raise ValueError("cifar100_labels must be 'fine' or 'coarse'")
    d = _read_pickle(root / ("train" if split == "train" else "test"))
    x = _cifar_rows(d, root)
    y = torch.as_tensor(np.asarray(d[f"{labels}_labels"], dtype=np.int64))
    meta = _read_pickle(root / "meta")
    return ImageArrays(x, y, _names(meta[f"{labels}_label_names"]))


def _is_image_folder(p: Path) -> bool:
    if not p.is_dir():
        return False
    for sub in p.iterdir():
        if sub.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()):
            return True
    return False


def _load_image_folder(root: Path, size: int) -> ImageArrays:
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(f) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
                xs.append(np.asarray(im, dtype=np.uint8))
            ys.append(label)
    if not xs:
        raise FileNotFoundError(f"no images under {root}")
    x = torch.from_numpy(np.ascontiguousarray(np.stack(xs).transpose(0, 3, 1, 2)))
    return ImageArrays(x, torch.tensor(ys, dtype=torch.int64), tuple(classes))


# ---------------------------------------------------------------------------------------------
# CIFAR-10-C style folders


def _is_cifar_c(p: Path) -> bool:
    return (p / "labels.npy").is_file() and any(f.stem != "labels" for f in p.glob("*.npy"))


def _cifar_c_severities(p: Path) -> tuple[int, ...]:
    meta = p / META_FILE
    if meta.is_file():
        return tuple(int(s) for s in json.loads(meta.read_text())["severities"])
    return (1, 2, 3, 4, 5)


def _load_cifar_c(p: Path, corruption: str | None, severity: int | None) -> ImageArrays:
    available = sorted(f.stem for f in p.glob("*.npy") if f.stem != "labels")
    if corruption is None or corruption not in available:
        what = "needs corruption=NAME" if corruption is None else f"has no {corruption!r}"
        raise ValueError(f"CIFAR-10-C folder {p} {what}; available: {', '.join(available)}")
    sevs = _cifar_c_severities(p)
    arr = np.load(p / f"{corruption}.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(p / "labels.npy", allow_pickle=False)
    if len(arr) % len(sevs):
        raise ValueError(f"{p / f'{corruption}.npy'}: {len(arr)} images is not {len(sevs)} blocks")
    n = len(arr) // len(sevs)
    if severity is None:
        rows = slice(0, len(arr))
    else:
        if severity not in sevs:
            raise ValueError(f"{p} holds severities {list(sevs)}, not {severity}")
        k = sevs.index(severity)
        rows = slice(k * n, (k + 1) * n)
    x = _to_nchw_uint8(np.asarray(arr[rows]), p / f"{corruption}.npy")
    y = labels[rows] if len(labels) == len(arr) else np.tile(labels[:n], len(sevs))[rows]
    yt = torch.from_numpy(np.asarray(y).astype(np.int64))
    classes = _default_classes(yt)
    meta = p / META_FILE
    if meta.is_file():
        classes = tuple(json.loads(meta.read_text()).get("classes", classes))
    return ImageArrays(x, yt, classes)


def save_corrupted_arrays(
    images: ImageArrays,
    out_dir: str | Path,
    names: Sequence[str],
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    *,
    progress: bool = False,
) -> list[Path]:
    """Write CIFAR-10-C style arrays for ``names`` at ``severities``; return the files written.

    Each ``<name>.npy`` is uint8 (len(severities)·N, H, W, 3), severities stacked in blocks of N
    in the given order; ``labels.npy`` repeats the labels once per block (uint8 when they fit,
    like the released CIFAR-10-C); ``corruptions.json`` records severities, seed and classes.
    Reproducible: the same ``seed`` writes the same bytes.
    """
    for name in names:
        check_corruption(name)
    sevs = tuple(int(s) for s in severities)
    if not sevs or any(not 1 <= s <= 5 for s in sevs):
        raise ValueError(f"severities must be in 1..5, got {list(severities)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(images)
    old = json.loads((out / META_FILE).read_text()) if (out / META_FILE).is_file() else {}
    if old and (old.get("severities") != list(sevs) or old.get("images") != n):
        raise ValueError(f"{out} already holds arrays with other severities or image count")
    h, w = images.x.shape[-2:]
    written = []
    bar = tqdm(total=len(names) * len(sevs) * n, unit="img", disable=not progress)
    for name in names:
        bar.set_description(name)
        target = out / f"{name}.npy"
        tmp = out / f".{name}.npy.partial"
        arr = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(sevs) * n, h, w, 3)
        )
        for k, sev in enumerate(sevs):
            for start in range(0, n, _BLOCK):
                xb = images.x[start : start + _BLOCK]
                yb = corrupt_blocks(xb, name, sev, seed, start)
                arr[k * n + start : k * n + start + len(xb)] = yb.permute(0, 2, 3, 1).numpy()
                bar.update(len(xb))
        arr.flush()
        del arr
        tmp.replace(target)
        written.append(target)
    bar.close()
    y = images.y.numpy()
    y = y.astype(np.uint8) if len(y) and y.min() >= 0 and y.max() < 256 else y.astype(np.int64)
    np.save(out / "labels.npy", np.tile(y, len(sevs)))
    meta = {"severities": list(sevs), "seed": seed, "images": n, "classes": list(images.classes)}
    meta["corruptions"] = sorted(set(old.get("corruptions", [])) | set(names))
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    written += [out / "labels.npy", out / META_FILE]
    return written
