"""Every registered zoo entry, as shipped in ``model-store/``: intact, rebuildable from its card,
and served the same way by torch.hub, the engine, "auto", REST (a real TorchServe, with bad
requests in the batch) and the demo (a real Gradio app)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio_client
import pytest
import torch
from helpers.serving import expected, running_server, same_answer, worker_pids
from torch import nn

import rws_hub
from rws_hub.cli.zoo import register as register_zoo_cli
from rws_hub.inference.engine import Engine
from rws_hub.inference.parsing import decode_image
from rws_hub.integrations import gradio_app
from rws_hub.io.folder import ModelFolder, verify_folder
from rws_hub.launch.client import predict
from rws_hub.zoo.entries import ENTRIES, FOLDER_ENV, STORE_DIR, ZooEntry
from rws_hub.zoo.pipeline import ZooSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
STORE_LIMIT = 100 * 2**20  # model-store/ stays under 100 MB
RUNTIME = ("data", "jobs", "device", "eval_limit")  # where and how fast, not what is built


@pytest.fixture(scope="module", params=list(ENTRIES))
def entry(request: pytest.FixtureRequest) -> ZooEntry:
    return ENTRIES[request.param]


@pytest.fixture(scope="module")
def folder(entry: ZooEntry) -> Path:
    return REPO_ROOT / entry.folder


@pytest.fixture(scope="module")
def engine(folder: Path) -> Engine:
    return Engine.from_folder(folder, device="cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def examples(folder: Path, engine: Engine) -> list[Path]:
    """What the demo shows for the entry: its folder's examples, or the package's CIFAR-10
    ones for a model with their classes."""
    files = gradio_app.example_files(ModelFolder.load(folder, signatures=None), engine.classes)
    assert len(files) == 8, files
    return [Path(f) for f in files]


def example_batch(examples: list[Path]) -> torch.Tensor:
    return torch.stack([decode_image(p.read_bytes(), (32, 32)) for p in examples])


def test_model_store_holds_the_entries_and_stays_small() -> None:
    store = REPO_ROOT / STORE_DIR
    shipped = {p.parent.name for p in store.glob("*/config.json")}
    assert shipped == set(ENTRIES), "every registered entry ships a folder, and only those"
    total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert total < STORE_LIMIT, f"model-store/ is {total / 2**20:.1f} MiB"


def test_entry_is_intact_and_its_card_rebuilds_it(entry: ZooEntry, folder: Path) -> None:
    assert verify_folder(folder) == {}
    loaded = ModelFolder.load(folder)
    # its own 19, and 19 more per signature set it serves by lineage (``<prefix><name>``)
    refs = loaded.config.get("signature_sets", [])
    assert not loaded.refused and len(loaded.signature_names()) == 19 * (1 + len(refs))
    assert len(loaded.config["signatures"]) == 19
    config = loaded.config
    assert (config["architecture"], config["width"]) == (entry.architecture, entry.width)
    # the recorded rebuild command, parsed by the real CLI, gives the recipe the folder was built
    # with (except where and how fast it runs)
    parser = argparse.ArgumentParser()
    register_zoo_cli(parser.add_subparsers())
    command = config["rebuild"]
    assert command.startswith("rws zoo build")
    args = parser.parse_args(command.split()[1:])
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ZooSpec)
        if getattr(args, f.name) is not None
    }
    spec = ZooSpec.for_entry(given.pop("name", None), **given)
    built = {k: v for k, v in config["recipe"].items() if k not in RUNTIME}
    assert {k: v for k, v in dataclasses.asdict(spec).items() if k in built} == built
    card = (folder / "README.md").read_text()
    assert command in card and f"{config['metrics']['clean_accuracy'] * 100:.2f}" in card


def test_hub_patch_equals_engine_and_unpatch_is_exact(
    entry: ZooEntry,
    folder: Path,
    engine: Engine,
    examples: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(FOLDER_ENV, raising=False)
    model = torch.hub.load(str(REPO_ROOT), entry.entrypoint, source="local", signatures="all")
    assert isinstance(model, nn.Module) and model.rws_refused == {}
    x = example_batch(examples)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mixes = [{"fog": 1.0, "contrast": 0.5}]
    # a folder that serves another entry's set by lineage: those signatures patch it too
    for ref in ModelFolder.read_config(folder).get("signature_sets", []):
        mixes.append({f"{ref['prefix']}fog": 1.0, "contrast": 0.5})
    for mix in mixes:
        with rws_hub.patch(model, mix), torch.no_grad():
            want = model(x).softmax(1)
        for k, v in model.state_dict().items():  # parameters and buffers (batch-norm stats)
            assert torch.equal(v, before[k]), k
        got = engine.classify(x, [mix] * len(x), top_k=10)
        for i, answer in enumerate(got):
            probs = {p["class"]: p["probability"] for p in answer["predictions"]}
            top = want[i].topk(10).indices.tolist()
            assert list(probs) == [engine.classes[j] for j in top]
            ref = {engine.classes[j]: float(want[i, j]) for j in top}
            assert probs == pytest.approx(ref, abs=1e-5)


def test_auto_applies_what_the_detector_saw(engine: Engine, examples: list[Path]) -> None:
    assert engine.detector is not None, "every entry ships its corruption detector"
    x = example_batch(examples)
    answers = engine.classify(x, ["auto"] * len(x), top_k=3)
    for i, answer in enumerate(answers):
        mix = answer["mix"] or None
        want = engine.classify(x[i : i + 1], [mix], top_k=3)[0]
        assert same_answer(answer | {"mix": want["mix"]}, want)
    clean = engine.classify(x, [None] * len(x), top_k=1)
    for path, answer, plain in zip(examples, answers, clean, strict=True):
        corruption = path.stem.rpartition("-")[2]
        mix = answer["mix"] or {}
        if corruption == "fog":  # a fogged image is seen as fog, and patched mostly with it
            assert answer["detected"][0]["class"] == "fog", answer["detected"]
            assert not mix or max(mix, key=mix.get) == "fog", mix
        if corruption == "clean":  # whatever "auto" adds to a clean image keeps its class
            top = answer["predictions"][0]["class"]
            assert top == plain["predictions"][0]["class"], (path.name, mix)


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("entry-server")
    with running_server(
        folder, run, name="entry", batch_size=8, max_batch_delay=400, settings={"threads": 1}
    ) as srv:
        yield srv


def test_rest_answers_a_mixed_batch_and_refuses_the_bad_requests(
    server, engine: Engine, examples: list[Path]
) -> None:
    """Good and bad requests in one batch: each good one equals the in-process answer, each
    bad one gets a 4xx JSON naming what is wrong, and the worker stays up."""
    pids = worker_pids(server)
    image = examples[0].read_bytes()
    good = [None, {"fog": 1.0}, {"fog": 0.5, "contrast": 0.5}, "auto"]
    bad = [
        ({"fog": 1e308}, "10"),  # above the α bound: the message names the bound
        ({"no_such_signature": 1.0}, "no_such_signature"),
        ("fog:nan", "fog"),
    ]
    calls = [(m, image) for m in good] + [(m, image) for m, _ in bad] + [("fog", b"not an image")]
    with ThreadPoolExecutor(len(calls)) as pool:
        replies = list(pool.map(lambda c: predict(server, c[1], c[0], top_k=3), calls))
    for mix, r in zip(good, replies, strict=False):
        assert r.status_code == 200, r.text
        assert same_answer(r.json(), expected(engine, image, mix, 3))
    for (mix, word), r in zip(bad, replies[len(good) :], strict=False):
        assert 400 <= r.status_code < 500, (mix, r.status_code)
        assert word in json.loads(r.text)["error"]
    assert 400 <= replies[-1].status_code < 500 and "image" in replies[-1].json()["error"]
    assert worker_pids(server) == pids


def test_demo_shows_the_engine_answer(engine: Engine, folder: Path, examples: list[Path]) -> None:
    backend = gradio_app.LocalBackend.from_folder(folder, device="cpu")
    assert backend.info.examples == [str(p) for p in examples]  # what the page offers
    app = gradio_app.build_app(backend)
    url = gradio_app.launch(app, port=free_port(), block=False, quiet=True)
    try:
        client = gradio_client.Client(url, verbose=False)
        path = next(p for p in examples if "fog" in p.name)
        _, clean, patched, summary, details = client.predict(
            gradio_client.handle_file(str(path)), "fog:1", "none", 5, api_name="/predict"
        )
    finally:
        app.close()
    x = decode_image(path.read_bytes(), (32, 32)).mul(255).round().div(255)
    want = engine.classify(x[None], [{"fog": 1.0}], top_k=5)[0]
    got = {c["label"]: c["confidence"] for c in patched["confidences"]}
    assert list(got) == [p["class"] for p in want["predictions"]]
    assert details["patched"]["mix"] == {"fog": 1.0}
