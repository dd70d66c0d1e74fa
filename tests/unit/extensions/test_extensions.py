"""One module each registers a toy architecture, data set and quantization scheme; extract,
patch, the model folder and the engine then work with all three together."""

from __future__ import annotations

import torch
import toy_arch
import toy_data
import toy_scheme

import rws_hub
from rws_hub.archs import create_model
from rws_hub.datasets.arrays import load_dataset
from rws_hub.inference.engine import Engine
from rws_hub.io.folder import ModelFolder, save_model_folder


def test_toy_arch_data_and_scheme_together(tmp_path) -> None:
    spec = toy_data.SPEC
    build = dict(num_classes=len(spec.classes), mean=spec.mean, std=spec.std)
    torch.manual_seed(0)
    pre = create_model(toy_arch.NAME, **build)
    states = []
    for scale in (0.01, 0.03):
        m = create_model(toy_arch.NAME, **build)
        m.load_state_dict(pre.state_dict())
        with torch.no_grad():
            for t in m.state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.randn_like(t).abs() * scale)
        states.append(m)
    clean, robust = states
    sig = rws_hub.extract(pre, clean, robust, name="fog", layers=2, architecture=toy_arch.NAME)
    assert "bn1.running_var" in sig.tensors  # the unit's batch norm travels with it
    q = sig.quantize(bits=8, scheme=toy_scheme.SCHEME.name, granularity="channel")
    root = save_model_folder(
        tmp_path / "toy",
        model=clean,
        config={"architecture": toy_arch.NAME, **spec.config()},
        signatures=[q],
        pretrained=pre,
    )
    folder = ModelFolder.load(root)
    assert folder.config["classes"] == list(spec.classes)
    images = load_dataset(spec.name, "test").x.float().div(255)
    eng = Engine.from_folder(folder, device="cpu", resident="codes")
    with rws_hub.patch(folder.model, {"fog": 1.0}):
        want = folder.model(images.contiguous(memory_format=torch.channels_last))
    assert torch.equal(eng.predict(images, {"fog": 1.0}), want)
    answers = eng.classify(images[:2], "fog:0.5", top_k=2)
    assert answers[0]["predictions"][0]["class"] in spec.classes
