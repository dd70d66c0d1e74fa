"""A short soak of a real TorchServe with :func:`rws_hub.launch.soak.run_soak` (the long form is
``benchmarks/soak.py``, the same function): concurrent
requests with random mixes (and "auto") through batching; every answer equals the single-request
in-process reference, nothing fails, and the worker is never restarted."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.serving import (
    HAVE_TORCHSERVE,
    add_test_detector,
    make_serving_folder,
    running_server,
    workers,
)

from rws_hub.inference.engine import Engine
from rws_hub.launch.soak import run_soak

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not HAVE_TORCHSERVE, reason="needs Java 17 and torchserve"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny folder with a (random) corruption detector, so the soak sends "auto" too."""
    return add_test_detector(make_serving_folder(tmp_path_factory.mktemp("folder") / "tiny-vgg"))


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(folder, tmp_path_factory.mktemp("serve"), max_batch_delay=5) as srv:
        yield srv


def test_short_soak(server, folder) -> None:
    engine = Engine.from_folder(folder, device="cpu", max_alpha=3.0)
    before = [(w["pid"], w["startTime"]) for w in workers(server)]
    result = run_soak(server, engine, total=400, clients=8, seed=7, max_seconds=45)
    print("\nsoak:", result.summary())
    assert result.requests == 400, "the time bound cut the soak short"
    assert result.mismatches == 0, result.mismatch_examples
    assert result.errors == 0, result.error_statuses
    assert result.answered == 400
    assert max(int(k) for k in result.batch_sizes) > 1, "no batching happened"
    assert result.distinct_mixes > 50 and set(result.forms) == {"json", "raw"}
    assert engine.detector is not None and result.auto_requests > 20
    assert [(w["pid"], w["startTime"]) for w in workers(server)] == before


def test_soak_detects_wrong_answers(server, folder) -> None:
    """The comparison is not vacuous: against a reference with other weights, every answer of
    a small soak is a mismatch."""
    import torch

    engine = Engine.from_folder(folder, device="cpu", max_alpha=3.0)
    with torch.no_grad():
        last = [m for m in engine.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.add_(torch.linspace(-2.0, 2.0, last.bias.numel()))
    result = run_soak(server, engine, total=24, clients=4, seed=3, max_seconds=30)
    assert result.errors == 0 and result.mismatches == result.answered == 24
