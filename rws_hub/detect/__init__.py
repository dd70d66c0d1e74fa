"""The corruption detector behind ``"auto"``: which corruption (if any) is in an image?

Modules, by job:

* :mod:`~rws_hub.detect.features`: the input features computed from images.
* :mod:`~rws_hub.detect.model`: :class:`CorruptionDetector` (an ``nn.Module``), its spec and
  its files (``detector.safetensors`` + config).
* :mod:`~rws_hub.detect.rules`: how detector probabilities become a mix (:class:`AutoRule`,
  :func:`rule_mix`) and the engine's hook (:class:`AutoPatcher`,
  :func:`auto_patcher_from_folder`).
* :mod:`~rws_hub.detect.cost`: FLOPs and wall time next to the backbone.
* :mod:`~rws_hub.detect.training`: corrupted training samples and the resumable training loop.
* :mod:`~rws_hub.detect.evaluation`: measuring the detector and ``"auto"``, choosing a rule.
* :mod:`~rws_hub.detect.build`: making a folder's detector: train and record its cost, choose
  and record its rule (the ``rws detector`` verbs and the zoo's ``detector`` step).

Every public name of these modules is importable from here.
"""

from __future__ import annotations

from rws_hub.detect.build import (
    RuleSelection,
    conv1_sha256,
    select_rule,
    train_and_record,
)
from rws_hub.detect.cost import (
    conv_macs,
    detector_flops,
    measure_cost,
)
from rws_hub.detect.evaluation import (
    CANDIDATE_RULES,
    CachedPredictor,
    Cell,
    PatchedModel,
    choose_rule,
    evaluate_auto,
    make_cells,
    per_class_accuracy,
    summarize,
)
from rws_hub.detect.features import (
    FEATURE_VERSION,
    N_IMAGE_FEATURES,
    conv_features,
    image_features,
)
from rws_hub.detect.model import (
    CLEAN,
    CONFIG_NAME,
    DETECTOR_KIND,
    WEIGHTS_NAME,
    CorruptionDetector,
    detector_classes,
    load_detector,
    save_detector,
)
from rws_hub.detect.rules import (
    AutoPatcher,
    AutoRule,
    Detection,
    auto_patcher_from_folder,
    rule_mix,
)
from rws_hub.detect.training import (
    DetectorTrainConfig,
    batch_features,
    make_samples,
    train_detector,
)

__all__ = [
    "CANDIDATE_RULES",
    "CLEAN",
    "CONFIG_NAME",
    "DETECTOR_KIND",
    "FEATURE_VERSION",
    "N_IMAGE_FEATURES",
    "WEIGHTS_NAME",
    "AutoPatcher",
    "AutoRule",
    "CachedPredictor",
    "Cell",
    "CorruptionDetector",
    "Detection",
    "PatchedModel",
    "RuleSelection",
    "DetectorTrainConfig",
    "auto_patcher_from_folder",
    "batch_features",
    "choose_rule",
    "conv1_sha256",
    "conv_features",
    "conv_macs",
    "detector_classes",
    "detector_flops",
    "evaluate_auto",
    "image_features",
    "load_detector",
    "make_cells",
    "make_samples",
    "measure_cost",
    "per_class_accuracy",
    "rule_mix",
    "save_detector",
    "select_rule",
    "summarize",
    "train_and_record",
    "train_detector",
]
