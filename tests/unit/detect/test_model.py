"""The detector module (rws_hub.detect.model): shapes, probabilities, the backbone's conv1,
and its files (save / load round trip, refusals of foreign or mismatched state)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rws_hub.detect.features import image_features
from rws_hub.detect.model import (
    CLEAN,
    CorruptionDetector,
    detector_classes,
    load_detector,
    save_detector,
)
from rws_hub.detect.rules import AutoRule
from rws_hub.errors import ArtifactError

CLASSES = detector_classes()


def test_detector_shapes_probabilities_and_features(backbone, tiny_detector) -> None:
    det = tiny_detector(backbone)
    x = torch.rand(5, 3, 32, 32)
    assert image_features(x).shape == (5, 40)
    assert det.raw_features(x).shape == (5, det.num_features) == (5, 4 * 8 + 40)
    p = det.probabilities(x)
    assert p.shape == (5, 20)
    assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
    assert (p >= 0).all()
    assert det.classes[0] == CLEAN and len(set(det.classes)) == 20
    # conv1 is the backbone's: at stride 2 its outputs are the backbone's at even positions
    conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        full = conv(backbone.normalize(x))
        assert torch.allclose(det.conv(det.normalize(x)), full[..., ::2, ::2], atol=1e-5)


def test_save_load_round_trip_and_refusals(backbone, tiny_detector, tmp_path: Path) -> None:
    det = tiny_detector(backbone)
    with torch.no_grad():
        det.feature_mean.normal_()
    save_detector(tmp_path / "d", det, {"rule": AutoRule("top1", 0.7).to_json()})
    loaded, cfg = load_detector(tmp_path / "d")
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(loaded.probabilities(x), det.probabilities(x))
    assert cfg["rule"]["threshold"] == 0.7 and cfg["classes"] == CLASSES
    state = det.state_dict()
    # a state from a differently sized head is refused, naming the tensor
    with pytest.raises(ArtifactError, match="shape"):
        CorruptionDetector.from_spec(det.spec() | {"hidden": 32}, state)
    with pytest.raises(ArtifactError, match="missing"):
        CorruptionDetector.from_spec(
            det.spec(), {k: v for k, v in state.items() if "head.0" not in k}
        )
    with pytest.raises(ArtifactError, match="kind"):
        CorruptionDetector.from_spec(det.spec() | {"kind": "resnet"}, state)
    with pytest.raises(ArtifactError, match="feature version"):
        CorruptionDetector.from_spec(det.spec() | {"feature_version": 99}, state)
    # a backbone whose conv1 does not fit
    with pytest.raises(ValueError, match="first conv"):
        CorruptionDetector(conv_channels=32).set_backbone_conv(backbone)
