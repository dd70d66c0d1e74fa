"""The zoo pipeline: one command builds a zoo entry, step by step, resumable.

``pretrain → clean → robust (one per corruption) → extract → evaluate → export → detector``

Every step writes into the work folder and is skipped when its output exists; a training step
killed half way resumes from its last checkpoint. The export step writes the model folder
(``rws_hub.io.folder``) with the measured metrics in its config and model card; the detector
step trains the folder's corruption detector on its backbone, chooses its ``"auto"`` rule with
its signatures and installs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from rws_hub.core.extraction import extract
from rws_hub.core.lineage import fingerprint
from rws_hub.core.patching import patch
from rws_hub.core.quantization import parse_storage
from rws_hub.core.signature import Signature
from rws_hub.datasets import DatasetSpec, get_dataset
from rws_hub.datasets.arrays import load_images
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS
from rws_hub.datasets.examples import example_pngs
from rws_hub.detect import CONFIG_NAME as DETECTOR_CONFIG
from rws_hub.detect import (
    PatchedModel,
    RuleSelection,
    load_detector,
    save_detector,
    select_rule,
    train_and_record,
)
from rws_hub.detect.training import DetectorTrainConfig
from rws_hub.io.folder import (
    CONFIG_FILE,
    EVAL_FILE,
    MANIFEST_FILE,
    SIGNATURE_DIR,
    SIGNATURE_SETS,
    ModelFolder,
    add_detector,
    save_model_folder,
)
from rws_hub.zoo.entries import DEFAULT_ENTRY, STORE_DIR, get_entry
from rws_hub.zoo.evaluation import OWN, accuracy, evaluate
from rws_hub.zoo.training import TrainConfig, build_model, resolve_device, train

#: eval.json key: :meth:`ZooBuilder.signatures_digest` of the signatures it measured
SIGNATURES_DIGEST = "signatures_sha256"
STEPS = ("pretrain", "clean", "robust", "extract", "evaluate", "export", "detector")


def _all_corruptions() -> list[str]:
    return list(ALL_CORRUPTIONS)


@dataclass
class ZooSpec:
    """What a zoo entry is made of, and how (defaults: the embedded default entry of
    :mod:`rws_hub.zoo.entries`; ``data`` defaults to where its data set lives)."""

    name: str = DEFAULT_ENTRY.name
    data: str | None = None  # default: where the data set lives (its spec's root)
    work: str = DEFAULT_ENTRY.work
    export: str = DEFAULT_ENTRY.folder
    architecture: str = DEFAULT_ENTRY.architecture
    width: float = DEFAULT_ENTRY.width
    pretrain_epochs: float = 8
    pretrain_lr: float = 0.05
    label_smoothing: float = 0.0  # pretraining only
    clean_epochs: float = 0.5
    robust_epochs: float = 0.4
    finetune_lr: float = 0.01
    finetune_schedule: str = "cosine"
    corrupt_fraction: float = 0.5  # share of each fine-tuning batch that is corrupted
    severity: int = 5
    corruptions: list[str] = field(default_factory=_all_corruptions)
    layers: int = 7
    bn_stats: str = "project"  # batch-norm running statistics in signatures: project | swap
    quantization: str = "int8"  # fp32 | int8 | int4 | log8 | rank<r>[-int8|-int4]
    eval_limit: int | None = None  # test images (None = the whole test set)
    jobs: int = 2  # fine-tuning runs in parallel (one CPU thread each)
    device: str = "cpu"  # training and evaluation: "cpu", "cuda", "cuda:N" or "auto"
    precision: str = "fp32"  # training: fp32 | bf16 (autocast; evaluation stays float32)
    seed: int = 0
    dataset: str = DEFAULT_ENTRY.dataset  # a rws_hub.datasets name: classes, normalisation
    # θ_pre of another entry (a safetensors state file) instead of pretraining: the entry then
    # shares its lineage, and a new classifier for this data set is trained on the frozen
    # trunk (head_epochs) before the clean and robust fine-tunes start from it
    pretrained: str | None = None
    head_epochs: float = 2.0
    head_lr: float = 0.1
    # the head stage's frozen part: None = the whole trunk (a linear probe); K = the first K
    # units (the signature's layers keep θ_pre's values), every later layer adapts too
    head_frozen_units: int | None = None
    # the corruption detector behind "auto" (the detector step): training samples and epochs
    # of its head, and held-out images per corruption and severity when its rule is chosen
    detector_images: int = 40000
    detector_epochs: int = 30
    detector_per_cell: int = 20

    @classmethod
    def for_entry(cls, name: str | None = None, **overrides: Any) -> ZooSpec:
        """The recipe of the registered zoo entry ``name`` (default: the embedded default) with
        ``overrides``; a name that is not an entry gets the plain defaults, with its own work
        and export folders (``runs/zoo/<name>``, ``model-store/<name>``)."""
        try:
            entry = get_entry(name or DEFAULT_ENTRY.name, planned=True)
        except ValueError:
            own = {"name": name, "work": f"runs/zoo/{name}", "export": f"{STORE_DIR}/{name}"}
            return cls(**(own | overrides))
        base: dict[str, Any] = {
            "name": entry.name,
            "work": entry.work,
            "export": entry.folder,
            "architecture": entry.architecture,
            "width": entry.width,
            "dataset": entry.dataset,
            **entry.recipe,
        }
        return cls(**(base | overrides))

    def __post_init__(self) -> None:
        if self.data is None:
            root = self.dataset_spec.root
            if root is None:
                raise ValueError(f"data set {self.dataset!r} has no default location: give data")
            self.data = root

    @property
    def dataset_spec(self) -> DatasetSpec:
        """The registered spec of :attr:`dataset`."""
        return get_dataset(self.dataset)

    # --- run configurations -------------------------------------------------------------
    def _base(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "dataset": self.dataset,
            "architecture": self.architecture,
            "width": self.width,
            "seed": self.seed,
            "num_classes": self.dataset_spec.num_classes,
            "device": self.device,
            "precision": self.precision,
        }

    def pretrain_config(self) -> TrainConfig:
        return TrainConfig(
            stage="pretrain",
            out=f"{self.work}/pretrain",
            epochs=self.pretrain_epochs,
            lr=self.pretrain_lr,
            schedule="onecycle",
            nesterov=True,
            label_smoothing=self.label_smoothing,
            **self._base(),
        )

    @property
    def start(self) -> str:
        """Where the clean and robust fine-tunes start: θ_pre, or θ_pre with this data set's
        new classifier (the ``head`` stage) when θ_pre comes from another entry."""
        stage = "head" if self.pretrained else "pretrain"
        return f"{self.work}/{stage}/final.safetensors"

    def head_config(self) -> TrainConfig:
        return TrainConfig(
            stage="head",
            out=f"{self.work}/head",
            init=f"{self.work}/pretrain/final.safetensors",
            epochs=self.head_epochs,
            lr=self.head_lr,
            schedule="cosine",
            frozen_units=self.head_frozen_units,
            **self._base(),
        )

    def clean_config(self) -> TrainConfig:
        return TrainConfig(
            stage="clean",
            out=f"{self.work}/clean",
            init=self.start,
            epochs=self.clean_epochs,
            lr=self.finetune_lr,
            schedule=self.finetune_schedule,
            **self._base(),
        )

    def robust_config(self, corruption: str) -> TrainConfig:
        return TrainConfig(
            stage="robust",
            out=f"{self.work}/robust/{corruption}",
            init=self.start,
            epochs=self.robust_epochs,
            lr=self.finetune_lr,
            schedule=self.finetune_schedule,
            corruption=corruption,
            severity=self.severity,
            corrupt_fraction=self.corrupt_fraction,
            **self._base(),
        )

    def config_json(self) -> dict[str, Any]:
        """The backbone's ``config.json`` content (metrics are added by the export step); the
        data set keys (``dataset``, ``classes``, ``mean``, ``std``, ``input_size``) are its
        spec's."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "width": self.width,
            **self.dataset_spec.config(),
            "signature_layers": self.layers,
            "recipe": asdict(self),
            "rebuild": self.rebuild_command(),
        }

    def rebuild_command(self) -> str:
        """The ``rws zoo build`` command that rebuilds this entry: ``--name`` (always, so that
        the command stays right when the default entry changes) and the options that differ
        from that entry's recipe (:meth:`for_entry`)."""
        default = ZooSpec.for_entry(self.name)
        parts = ["rws zoo build", f"--name {self.name}"]
        for f in fields(self):
            if f.name == "name":
                continue
            value, base = getattr(self, f.name), getattr(default, f.name)
            if value == base:
                continue
            if isinstance(value, list):
                value = ",".join(value)
            elif value is None:
                value = "all"
            parts.append(f"--{f.name.replace('_', '-')} {value}")
        return " ".join(parts)


def _run_minutes(run: Path) -> tuple[float, dict[str, Any]] | None:
    """A training run's duration in minutes: its steps at its median logged throughput (the
    median ignores the intervals a paused or shared machine slowed down), and its config."""
    metrics, config = run / "metrics.jsonl", run / "config.json"
    if not (metrics.exists() and config.exists()):
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    speeds = sorted(r["images_per_s"] for r in rows if r.get("images_per_s"))
    if not speeds:
        return None
    cfg = json.loads(config.read_text())
    steps = max(r.get("step", 0) for r in rows)
    median = speeds[len(speeds) // 2]
    return steps * cfg["batch_size"] / median / 60.0, cfg


def training_compute(work: str | Path) -> dict[str, Any]:
    """What training this entry took, measured from its runs' logs: the device, θ_pre's minutes
    (and the adapt stage's, when there is one) and the fine-tunes' minutes summed over runs
    (with ``--jobs`` > 1 they ran side by side, one thread each, so the wall time is less)."""
    work = Path(work)
    out: dict[str, Any] = {"method": "each run's steps at its median logged throughput"}
    for stage in ("pretrain", "head"):
        found = _run_minutes(work / stage)
        if found is not None:
            out[f"{stage}_minutes"] = round(found[0], 2)
            out["device"] = found[1].get("device", "cpu")
    runs = [work / "clean", *sorted((work / "robust").glob("*"))]
    found_runs = [f for f in (_run_minutes(r) for r in runs) if f is not None]
    if found_runs:
        out["finetune_runs"] = len(found_runs)
        out["finetune_minutes"] = round(sum(f[0] for f in found_runs), 2)
        out.setdefault("device", found_runs[0][1].get("device", "cpu"))
    if out.get("device") == "cpu":
        out["cpus"] = os.cpu_count()  # of the machine that exported (and, normally, trained)
    return out


def _train_quietly(cfg: TrainConfig) -> str:
    torch.set_num_threads(1)
    return str(train(cfg, resume=True, progress=False))


def load_state_model(spec: ZooSpec, path: str | Path) -> nn.Module:
    """A model of the zoo's architecture with the state dict at ``path`` (safetensors)."""
    return build_model(dataclasses.replace(spec.pretrain_config(), init=str(path))).eval()


def quantize_signature(sig: Signature, storage: str) -> Signature:
    """Apply the zoo's storage choice (``fp32``, ``int8``, ``int4``, ``log8``, any registered
    ``<scheme><bits>``, low-rank ``rank<r>[-<storage>]``; see
    :func:`rws_hub.core.quantization.parse_storage`)."""
    options = parse_storage(storage)
    if options is None:
        return sig
    if "rank" in options:
        return sig.low_rank(**options)
    return sig.quantize(**options)


def _reference(source: Path, export: Path, pre: dict[str, torch.Tensor]) -> dict[str, str]:
    """A ``signature_sets`` entry for the folder whose θ_pre an entry adopted: its signatures
    serve this backbone too, as ``<its data set>.<name>``."""
    other = json.loads((source / "config.json").read_text())
    rel = os.path.relpath(source.resolve(), export.resolve())
    ref = {
        "folder": Path(rel).as_posix(),
        "lineage": fingerprint(pre),
        "prefix": f"{other.get('dataset', source.name)}.",
    }
    # a published entry: where the hub has it (a hub snapshot has no sibling folders)
    with contextlib.suppress(ValueError):
        ref["repo_id"] = get_entry(str(other.get("name", source.name)), planned=True).repo_id
    return ref


def _exported_digest(folder: Path) -> str | None:
    """The signature digest of the measurement an exported folder carries (its ``eval.json``),
    if recorded."""
    path = folder / EVAL_FILE
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get(SIGNATURES_DIGEST)
    return value if isinstance(value, str) else None


def _quiet(*_: Any, **__: Any) -> None:
    """A log function that says nothing."""


def _digest(directory: Path, names: list[str]) -> str:
    """sha256 over the signature files ``directory/<name>.safetensors`` that exist (name and
    content, in name order)."""
    h = hashlib.sha256()
    for name in sorted(names):
        path = directory / f"{name}.safetensors"
        if path.is_file():
            h.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def eval_rows(
    res: dict[str, Any], severity: int | str, corruptions: list[str] | None = None
) -> dict[str, dict[str, float | None]]:
    """Per corruption, from a zoo's ``eval.json`` (percent): ``backbone_ra``, ``patched_ra``,
    ``patched_ta`` (backbone + own signature), ``robust_model_ra``, ``robust_model_ta``, and
    for an entry on another data set ``transferred_ra``/``transferred_ta`` (backbone + the
    referenced entry's signature of the same corruption)."""
    bb = res["backbone"]
    sev = str(severity)
    own_clean = bb["meta"].get("own_clean", {})
    robust = res["robust_models"]
    transferred = res.get("transferred", {}).get("corruptions", {})
    rows: dict[str, dict[str, float | None]] = {}
    for c in corruptions if corruptions is not None else list(robust):
        rows[c] = {
            "backbone_ra": bb["corrupted"][c][sev]["none"],
            "patched_ra": bb["corrupted"][c][sev].get("own"),
            "patched_ta": own_clean.get(c),
            "robust_model_ra": robust[c]["corrupted"],
            "robust_model_ta": robust[c]["clean"],
        }
        if c in transferred:
            rows[c]["transferred_ra"] = transferred[c]["ra"]
            rows[c]["transferred_ta"] = transferred[c]["ta"]
    return rows


class ZooBuilder:
    """Runs the steps of :class:`ZooSpec`; each step skips work already done."""

    def __init__(self, spec: ZooSpec, *, progress: bool = True) -> None:
        self.spec = spec
        self.work = Path(spec.work)
        self.progress = progress

    # --- training -------------------------------------------------------------------------
    def pretrain(self) -> Path:
        if self.spec.pretrained:
            return self._adopt_pretrained(Path(self.spec.pretrained))
        return train(self.spec.pretrain_config(), resume=True, progress=self.progress)

    def _adopt_pretrained(self, source: Path) -> Path:
        """θ_pre copied from another entry, byte for byte (so the lineage is the same)."""
        final = self.work / "pretrain" / "final.safetensors"
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(final)
            record = {"stage": "pretrain", "copied_from": str(source)}
            record["fingerprint"] = fingerprint(load_file(str(final)))
            (final.parent / "config.json").write_text(json.dumps(record, indent=2))
        return final

    def head(self) -> Path | None:
        """This data set's classifier on θ_pre's frozen trunk (only with ``pretrained``)."""
        if not self.spec.pretrained:
            return None
        return train(self.spec.head_config(), resume=True, progress=self.progress)

    def clean(self) -> Path:
        self.head()
        return train(self.spec.clean_config(), resume=True, progress=self.progress)

    def robust(self, corruptions: list[str] | None = None) -> list[Path]:
        self.head()
        names = corruptions or self.spec.corruptions
        return self._train_all([self.spec.robust_config(c) for c in names])

    def finetune(self) -> list[Path]:
        """The clean and every robust fine-tuning, sharing the ``jobs`` parallel workers."""
        self.head()
        configs = [self.spec.clean_config()]
        configs += [self.spec.robust_config(c) for c in self.spec.corruptions]
        return self._train_all(configs)

    def _train_all(self, configs: list[TrainConfig]) -> list[Path]:
        if self.spec.jobs <= 1:
            return [train(c, resume=True, progress=self.progress) for c in configs]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(self.spec.jobs, mp_context=get_context("spawn")) as pool:
            return [Path(p) for p in pool.map(_train_quietly, configs)]

    # --- signatures -----------------------------------------------------------------------
    def extract(self) -> dict[str, Path]:
        out = self.work / "signatures"
        out.mkdir(parents=True, exist_ok=True)
        pre = load_file(str(self.work / "pretrain/final.safetensors"))
        # a module, not the file's state dict: its units are traced in forward order (a file
        # keeps no registration order to pair convs with their batch norms)
        clean = load_state_model(self.spec, self.work / "clean/final.safetensors")
        paths = {}
        for c in self.spec.corruptions:
            path = out / f"{c}.safetensors"
            paths[c] = path
            if path.exists():
                continue
            robust = load_file(str(self.work / f"robust/{c}/final.safetensors"))
            sig = extract(
                pre,
                clean,
                robust,
                name=c,
                layers=self.spec.layers,
                architecture=self.spec.architecture,
                stats=self.spec.bn_stats,
                provenance={
                    "zoo": self.spec.name,
                    "corruption": c,
                    "severity": self.spec.severity,
                    "corrupt_fraction": self.spec.corrupt_fraction,
                    "robust_epochs": self.spec.robust_epochs,
                },
            )
            quantize_signature(sig, self.spec.quantization).save(path)
        return paths

    def signatures(self) -> dict[str, Any]:
        return {
            c: Signature.load(self.work / "signatures" / f"{c}.safetensors")
            for c in self.spec.corruptions
        }

    # --- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Measure backbone, patched backbone and each robust model; cached in eval.json."""
        torch.set_num_threads(os.cpu_count() or 1)
        path = self.work / "eval.json"
        results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        test = load_images(self.spec.data, "test", dataset=self.spec.dataset)
        test = test.subset(self.spec.eval_limit)
        if results.get("images") not in (None, len(test)):
            # measured on another number of test images: keep it aside, measure again
            path.rename(path.with_name(f"eval-{results['images']}.json"))
            results = {}
        sev = self.spec.severity
        digest = self.signatures_digest()
        if "backbone" in results and results.get(SIGNATURES_DIGEST) not in (None, digest):
            # the signature files changed since they were measured (another storage, say):
            # measure the patched numbers again; the backbone's own and the robust models stay
            # (a record without every corruption at this severity is measured again whole)
            measured = results["backbone"].get("corrupted", {})
            if all(str(sev) in measured.get(c, {}) for c in self.spec.corruptions):
                self._remeasure_own(results["backbone"], test)
                results[SIGNATURES_DIGEST] = digest
            else:
                del results["backbone"]
            path.write_text(json.dumps(results, indent=2))
        if "backbone" not in results:
            model = load_state_model(self.spec, self.work / "clean/final.safetensors")
            model = model.to(resolve_device(self.spec.device))
            model.rws_signatures = self.signatures()
            rep = evaluate(
                model,
                test,
                corruptions=self.spec.corruptions,
                severities=[sev],
                mixes={"none": None, OWN: OWN},
                progress=self.progress,
            )
            results["backbone"] = rep.to_json()
            results["images"] = len(test)
            results[SIGNATURES_DIGEST] = digest
            path.write_text(json.dumps(results, indent=2))
        robust = results.setdefault("robust_models", {})
        for c in self.spec.corruptions:
            if c in robust:
                continue
            model = load_state_model(self.spec, self.work / f"robust/{c}/final.safetensors")
            model = model.to(resolve_device(self.spec.device))
            robust[c] = {
                "clean": accuracy(model, test),
                "corrupted": accuracy(model, test, corruption=c, severity=sev),
            }
            path.write_text(json.dumps(results, indent=2))
        source = self.source_folder()
        if source is not None:
            self._evaluate_transferred(results, source, test)
        results.setdefault(SIGNATURES_DIGEST, digest)  # a record from before digests were kept
        path.write_text(json.dumps(results, indent=2))
        return results

    def signatures_digest(self) -> str:
        """sha256 over the extracted signature files (name and content, in name order): what
        ``eval.json``'s patched numbers were measured with."""
        return _digest(self.work / "signatures", self.spec.corruptions)

    def _remeasure_own(self, backbone: dict[str, Any], test: Any) -> None:
        """Replace the ``"own"`` numbers of an ``eval.json`` backbone record (patched RA per
        corruption, patched TA per signature and their mean) by a measurement with the current
        signature files."""
        model = load_state_model(self.spec, self.work / "clean/final.safetensors")
        model = model.to(resolve_device(self.spec.device))
        model.rws_signatures = self.signatures()
        sev = self.spec.severity
        rep = evaluate(
            model,
            test,
            corruptions=self.spec.corruptions,
            severities=[sev],
            mixes={OWN: OWN},
            progress=self.progress,
        ).to_json()
        backbone["clean"][OWN] = rep["clean"][OWN]
        backbone["meta"]["own_clean"] = rep["meta"]["own_clean"]
        for c, per in rep["corrupted"].items():
            backbone["corrupted"][c][str(sev)][OWN] = per[str(sev)][OWN]

    def source_folder(self) -> Path | None:
        """The published model folder whose θ_pre this entry adopted (``pretrained`` is its
        ``pretrained.safetensors``), else None."""
        if not self.spec.pretrained:
            return None
        source = Path(self.spec.pretrained).parent
        is_folder = (source / CONFIG_FILE).is_file() and (source / MANIFEST_FILE).is_file()
        return source if is_folder else None  # not a training run's folder

    def _evaluate_transferred(self, results: dict[str, Any], source: Path, test: Any) -> None:
        """The backbone with the source folder's signature of each corruption (α = 1): RA on
        that corruption and TA, under ``results["transferred"]``."""
        digest = _digest(source / SIGNATURE_DIR, self.spec.corruptions)
        out = results.setdefault("transferred", {"from": str(source), "corruptions": {}})
        if out.setdefault(SIGNATURES_DIGEST, digest) != digest:
            # the referenced set changed since it was measured (another storage, say)
            out.update({"corruptions": {}, SIGNATURES_DIGEST: digest})
        todo = [c for c in self.spec.corruptions if c not in out["corruptions"]]
        if not todo:
            return
        theirs = ModelFolder.load(source, signatures=todo).signatures
        model = load_state_model(self.spec, self.work / "clean/final.safetensors")
        model = model.to(resolve_device(self.spec.device))
        sev = self.spec.severity
        for c in todo:
            if c not in theirs:
                continue
            with patch(model, {theirs[c]: 1.0}):
                out["corruptions"][c] = {
                    "ra": accuracy(model, test, corruption=c, severity=sev),
                    "ta": accuracy(model, test),
                }

    def metrics(self) -> dict[str, Any]:
        """The measured numbers in the form the model folder's config keeps them (accuracies
        as fractions in [0, 1]; eval.json keeps percent)."""
        res = json.loads((self.work / "eval.json").read_text())

        def frac(x: float | None) -> float | None:
            return None if x is None else round(x / 100.0, 6)

        rows = eval_rows(res, self.spec.severity, self.spec.corruptions)
        return {
            "dataset": self.spec.dataset,
            "split": "test",
            "test_images": res["images"],
            "severity": self.spec.severity,
            "clean_accuracy": frac(res["backbone"]["clean"]["none"]),
            "corruptions": {c: {k: frac(v) for k, v in r.items()} for c, r in rows.items()},
        }

    # --- export ---------------------------------------------------------------------------
    def export(self) -> Path:
        pre = load_file(str(self.work / "pretrain/final.safetensors"))
        model = load_state_model(self.spec, self.work / "clean/final.safetensors")
        config = self.spec.config_json()  # lineage: save_model_folder fingerprints ``pre``
        if self.spec.pretrained:
            # θ_pre is another entry's (it ships there): this folder names its lineage only
            config["lineage"] = fingerprint(pre)
            source = self.source_folder()
            if source is not None:  # θ_pre of a published model folder
                config[SIGNATURE_SETS] = [_reference(source, Path(self.spec.export), pre)]
            pre = None
            # and its normalisation, which the fine-tunes kept (a part of θ_pre)
            state = model.state_dict()
            for key in ("mean", "std"):
                if f"normalize.{key}" in state:
                    config[key] = [float(v) for v in state[f"normalize.{key}"].reshape(-1)]
        config["metrics"] = self.metrics()
        config["compute"] = training_compute(self.work)
        config["default_signatures"] = list(self.spec.corruptions)
        path = save_model_folder(
            self.spec.export,
            model=model,
            config=config,
            signatures=self.signatures(),
            pretrained=pre,
            evaluation=json.loads((self.work / "eval.json").read_text()),
            examples=self.examples(),
        )
        self._install_detector()  # the folder is written anew: keep a detector already made
        return path

    # --- the corruption detector ------------------------------------------------------------
    def detector_config(self) -> DetectorTrainConfig:
        """The detector's training run: the entry's data and seed, ``detector_images`` samples
        (a twentieth of them, at most 2000, held out) and ``detector_epochs`` epochs."""
        images = self.spec.detector_images
        return DetectorTrainConfig(
            data=str(self.spec.data),
            images=images,
            heldout=max(1, min(2000, images // 20)),
            epochs=self.spec.detector_epochs,
            seed=self.spec.seed,
        )

    def detector(self) -> Path:
        """Train the folder's corruption detector on its backbone (resumable; kept in
        ``<work>/detector``), choose its ``"auto"`` rule on held-out training images with the
        folder's signatures, and install both in the folder. The rule is chosen again when the
        signature files change (the record keeps their sha256)."""
        out = self.work / "detector"
        folder = ModelFolder.load(self.spec.export)
        if (out / DETECTOR_CONFIG).is_file():
            det, config = load_detector(out)
            if not det.has_backbone_conv(folder.model):
                raise ValueError(
                    f"{out} holds a detector made for another backbone (its conv1 differs from "
                    f"{self.spec.export}'s); remove that folder to train one for this backbone"
                )
        else:
            config = {}
        if "cost" not in config:  # not trained to the end (or by an older version): resume
            log = print if self.progress else _quiet
            det, config = train_and_record(
                folder.model, str(out), self.detector_config(), source=self.spec.export, log=log
            )
        digest = self.signatures_digest()
        exported = _exported_digest(Path(self.spec.export))
        if exported not in (None, digest):
            raise ValueError(
                f"{self.spec.export} was exported from other signature files than "
                f"{self.work / SIGNATURE_DIR}: run the export step first"
            )
        chosen = config.get("rule_selection")
        if chosen is None or chosen.get(SIGNATURES_DIGEST, digest) != digest:
            torch.set_num_threads(os.cpu_count() or 1)  # a few thousand images: the CPU
            model = PatchedModel(folder.model, folder.signatures)
            data = load_images(self.spec.data, "train", dataset=self.spec.dataset)
            selection = RuleSelection(per_cell=self.spec.detector_per_cell, seed=self.spec.seed)
            select_rule(model, det, config, data, selection)
        config["rule_selection"][SIGNATURES_DIGEST] = digest
        save_detector(out, det, config)
        add_detector(self.spec.export, det.state_dict(), config)
        return Path(self.spec.export)

    def _install_detector(self) -> None:
        """Add ``<work>/detector`` to the exported folder when its rule is chosen."""
        out = self.work / "detector"
        if not (out / DETECTOR_CONFIG).is_file():
            return
        det, config = load_detector(out)
        if "rule" not in config or "rule_selection" not in config:
            return
        if not det.has_backbone_conv(ModelFolder.load(self.spec.export, signatures=None).model):
            print(f"not installed: {out} holds a detector made for another backbone")
            return
        digest = self.signatures_digest()
        if config["rule_selection"].get(SIGNATURES_DIGEST, digest) != digest:
            print(
                f"note: the detector's auto rule was chosen with other signature files; the "
                f"detector step chooses it again for {self.spec.export}"
            )
        add_detector(self.spec.export, det.state_dict(), config)

    def examples(self) -> dict[str, bytes]:
        """The folder's demo examples: test images of its data set, some corrupted
        (:func:`rws_hub.datasets.examples.example_pngs`)."""
        test = load_images(self.spec.data, "test", dataset=self.spec.dataset)
        return example_pngs(test, self.spec.dataset_spec.classes)

    def run(self, steps: tuple[str, ...] = STEPS) -> None:
        """Run the given steps in pipeline order."""
        for step in STEPS:
            if step == "robust" and "clean" in steps:
                continue  # ran together with the clean fine-tuning
            if step == "clean" and "robust" in steps:
                self.finetune()
            elif step in steps:
                getattr(self, step)()
