"""The detector's public names in one module (kept for existing importers).

The code lives in the modules of :mod:`rws_hub.detect` by job (``features``, ``model``,
``rules``, ``cost``, ``training``, ``evaluation``); this module only re-exports their public
names. New code may import from :mod:`rws_hub.detect` or from those modules directly.
"""

from __future__ import annotations

from rws_hub.detect.cost import (
    conv_macs,
    detector_flops,
    measure_cost,
)
from rws_hub.detect.evaluation import (
    CANDIDATE_RULES,
    CachedPredictor,
    Cell,
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
    "DetectorTrainConfig",
    "auto_patcher_from_folder",
    "batch_features",
    "choose_rule",
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
    "summarize",
    "train_detector",
]
