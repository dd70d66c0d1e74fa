"""The core's registries: quantization schemes and file formats."""

from __future__ import annotations

import pytest
import torch
import toy_scheme  # noqa: F401  (registers "toysign")

import rws_hub
from rws_hub.archs import create_model
from rws_hub.core import formats
from rws_hub.core.quantization import (
    LinearScheme,
    get_scheme,
    list_schemes,
    parse_storage,
    quantize_tensor,
    register_scheme,
)
from rws_hub.inference.engine import Engine
from rws_hub.io.folder import ModelFolder, save_model_folder


def test_schemes_registered_once() -> None:
    assert {"linear", "log", "toysign"} <= set(list_schemes())
    with pytest.raises(ValueError, match="already registered"):
        register_scheme(LinearScheme())
    with pytest.raises(ValueError, match="scheme must be one of"):
        get_scheme("nope")
    with pytest.raises(ValueError, match="scheme must be one of"):
        quantize_tensor(torch.ones(3), scheme="nope")


def test_parse_storage() -> None:
    assert parse_storage("fp32") is None
    assert parse_storage("int8") == {"bits": 8, "scheme": "linear", "granularity": "channel"}
    assert parse_storage("log4") == {"bits": 4, "scheme": "log", "granularity": "channel"}
    assert parse_storage("toysign8")["scheme"] == "toysign"
    assert parse_storage("rank8") == {"rank": 8}
    assert parse_storage("rank8-int4") == {"rank": 8, "bits": 4, "scheme": "linear"}
    assert parse_storage("rank16-log8") == {"rank": 16, "bits": 8, "scheme": "log"}
    for bad in ("int3", "foo8", "int", "", "rank", "rank0-int8", "rank8-int3", "rank8-fp32"):
        with pytest.raises(ValueError, match="unknown storage"):
            parse_storage(bad)


def test_formats_refuse_a_second_reader() -> None:
    with pytest.raises(ValueError, match="already registered"):
        formats.register_format("signature", read=lambda p: None)
    with pytest.raises(rws_hub.RWSError, match="no reader"):
        formats.read("nothing", "x.bin")


def test_toy_scheme_end_to_end(tmp_path) -> None:
    """A scheme registered in one module works for quantize, save/load, folders, patching and
    the engine's resident codes."""
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", width=0.125).eval()
    sd = model.state_dict()
    names = rws_hub.shallow_params(model, 2)
    sig = rws_hub.Signature("fog", {n: 0.01 * torch.randn(sd[n].shape) for n in names})
    q = sig.quantize(bits=8, scheme="toysign", granularity="channel")
    assert q.quantization["scheme"] == "toysign"
    q.save(tmp_path / "fog.safetensors")
    back = rws_hub.Signature.load(tmp_path / "fog.safetensors")
    for n in names:
        assert torch.equal(back.tensors[n], q.tensors[n])
    folder = save_model_folder(
        tmp_path / "f",
        model=model,
        config={"architecture": "vgg16_cifar", "width": 0.125, "lineage": "toy"},
        signatures=[q],
    )
    loaded = ModelFolder.load(folder)
    x = torch.rand(3, 3, 32, 32)
    eng = Engine.from_folder(loaded, device="cpu", resident="codes")
    with rws_hub.patch(loaded.model, {"fog": 1.0}):
        want = loaded.model(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(eng.predict(x, {"fog": 1.0}), want)
