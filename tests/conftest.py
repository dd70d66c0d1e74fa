"""Shared fixtures: small data sets made on the fly (tests never need the real CIFAR-10).

Under ``CI=true`` a test that needs a real server or browser must run: a skip of a test marked
``server`` or ``browser`` (no Java, no torchserve, no Chromium, ...) is reported as a FAILURE,
and so is a test module of ``tests/integration`` skipped at collection (``importorskip`` of a
dev dependency that is missing). Locally such tests are skipped as before (see ``-ra``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def make_npz(path: Path, n: int, seed: int = 0) -> Path:
    """A learnable toy image set in the CIFAR .npz layout: the class sets the mean colour."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    base = np.stack([(y * 25) % 256, (y * 70) % 256, (255 - y * 25) % 256], axis=1)
    x = base[:, None, None, :] + rng.normal(0, 20, (n, 32, 32, 3))
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y.astype(np.int64))
    return path


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train.npz (256 images) and test.npz (128 images)."""
    d = tmp_path_factory.mktemp("tiny_cifar")
    make_npz(d / "train.npz", 256, seed=0)
    make_npz(d / "test.npz", 128, seed=1)
    return d


MUST_RUN_MARKERS = ("server", "browser")
"""Tests with these markers may not be skipped under ``CI=true``."""

_INTEGRATION = Path(__file__).resolve().parent / "integration"


def in_ci() -> bool:
    """Whether this run is CI (the environment variable ``CI`` is ``true``)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()):
        return
    if getattr(report, "wasxfail", None) is not None:
        return
    marks = [m for m in MUST_RUN_MARKERS if item.get_closest_marker(m) is not None]
    if marks:
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: a test marked {'/'.join(marks)} may not be skipped "
            f"(skip reason: {_skip_reason(report.longrepr)})"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci() and isinstance(collector, pytest.Module)):
        return
    if Path(str(collector.path)).resolve().is_relative_to(_INTEGRATION):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: the integration module {collector.path.name} may not be skipped "
            f"(skip reason: {_skip_reason(report.longrepr)})"
        )
