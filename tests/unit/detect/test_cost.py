"""What the detector costs next to the backbone (rws_hub.detect.cost)."""

from __future__ import annotations

from rws_hub.archs import create_model
from rws_hub.detect.cost import measure_cost
from rws_hub.detect.model import CorruptionDetector


def test_cost_is_a_small_fraction_of_the_backbone() -> None:
    model = create_model("vgg16_cifar", width=0.5).eval()
    det = CorruptionDetector(conv_channels=32)
    det.set_backbone_conv(model)
    cost = measure_cost(det, model, batch=32, repeats=1)
    assert 0 < cost["flops_ratio"] < 0.02
    assert cost["backbone_flops"] > 100e6
