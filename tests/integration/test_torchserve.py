"""A real TorchServe (Java) on loopback, started with rws_hub.launch.torchserve, against the in-process
Engine: concurrent mixed requests, batching, per-request errors, token auth, KServe v2."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")

from helpers.hub import REPO_ROOT  # noqa: E402
from helpers.serving import (  # noqa: E402
    HAVE_TORCHSERVE,
    NAMES,
    assert_same,
    expected,
    free_server_ports,
    make_serving_folder,
    png,
    running_server,
    session,
    start_server,
    stop_server,
)

from rws_hub.cli import main as rws_main  # noqa: E402
from rws_hub.inference.engine import Engine  # noqa: E402
from rws_hub.launch import locations  # noqa: E402
from rws_hub.launch import torchserve as serving  # noqa: E402
from rws_hub.launch.processes import pid_alive  # noqa: E402

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(not HAVE_TORCHSERVE, reason="needs Java 17 and torchserve"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder: VGG-16 at width 0.125 and four random signatures (K=3)."""
    return make_serving_folder(tmp_path_factory.mktemp("folder") / "tiny-vgg")


@pytest.fixture(scope="module")
def engine(folder: Path) -> Engine:
    return Engine.from_folder(folder, device="cpu")


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(folder, tmp_path_factory.mktemp("serve")) as srv:
        yield srv


def random_mix(rng: random.Random):
    names = rng.sample(NAMES, rng.randint(0, 3))
    form = rng.choice(["dict", "list", "str", "none"])
    if not names or form == "none":
        return None
    if form == "list":
        return names
    alphas = {n: round(rng.uniform(0.1, 2.5), 3) for n in names}
    if form == "str":
        return ",".join(f"{n}:{a}" for n, a in alphas.items())
    return alphas


def test_concurrent_mixed_requests_match_engine(server, engine):
    rng = random.Random(0)
    jobs = []
    for i in range(64):
        mix = random_mix(rng)
        jobs.append((i, png(i, (32, 32) if i % 5 else (48, 40)), mix, rng.randint(1, 10)))

    def send(job):
        i, data, mix, k = job
        s = session(server)
        if i % 3 == 0:  # raw image; the mix in the query string of /invocations
            params = {"model_name": "tiny", "top_k": str(k)}
            if mix is not None:
                params["signatures"] = (
                    mix
                    if isinstance(mix, str)
                    else ",".join(
                        mix if isinstance(mix, list) else [f"{n}:{a}" for n, a in mix.items()]
                    )
                )
            r = s.post(
                f"{server.opts.inference_url}/invocations",
                params=params,
                data=data,
                headers={"Content-Type": "image/png"},
            )
        elif i % 3 == 1:  # raw image; the mix in headers
            headers = {"Content-Type": "image/png", "X-RWS-Top-K": str(k)}
            if mix is not None:
                headers["X-RWS-Signatures"] = (
                    mix
                    if isinstance(mix, str)
                    else ",".join(
                        mix if isinstance(mix, list) else [f"{n}:{a}" for n, a in mix.items()]
                    )
                )
            r = s.post(server.inference_url, data=data, headers=headers)
        else:
            body = {"image": base64.b64encode(data).decode(), "signatures": mix, "top_k": k}
            r = s.post(server.inference_url, json=body)
        return r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    batch_sizes = []
    for (_i, data, mix, k), (status, answer) in zip(jobs, results, strict=True):
        assert status == 200, answer
        assert answer["model"] == "tiny"
        assert len(answer["predictions"]) == k
        assert_same(answer, expected(engine, data, mix, k))
        batch_sizes.append(answer["batch_size"])
    assert max(batch_sizes) > 1, f"no batching happened: {batch_sizes}"


def test_errors_are_per_request(server, engine):
    good = png(1000)
    bad_bodies = [
        ({"image": "not base64!"}, 400, "base64"),
        ({"image": base64.b64encode(b"plain text").decode()}, 400, "not an image"),
        ({"image": base64.b64encode(good).decode(), "signatures": {"snow": 1}}, 400, "known:"),
        ({"image": base64.b64encode(good).decode(), "signatures": {"fog": 9.0}}, 400, "maximum"),
        ({"image": base64.b64encode(good).decode(), "signatures": {"fog": -1}}, 400, "negative"),
        ({"image": base64.b64encode(good).decode(), "top_k": 0}, 400, "top_k"),
        ({"image": base64.b64encode(good[:100]).decode()}, 400, "truncated"),
    ]
    jobs = []
    for _ in range(4):  # 56 requests: whole waves of 8 clients
        for item in bad_bodies:
            jobs.append(("bad", item))
            jobs.append(("good", ({"image": base64.b64encode(good).decode(), "top_k": 2}, 200, "")))
    barrier = threading.Barrier(8)

    def send(job):
        kind, (body, _, _) = job
        s = session(server)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)
        r = s.post(server.inference_url, json=body)
        return r.status_code, r.headers.get("Content-Type", ""), r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    want_good = expected(engine, good, None, 2)
    mixed_batches = 0
    for (kind, (_, status, text)), (got, _ctype, answer) in zip(jobs, results, strict=True):
        if kind == "good":
            assert got == 200, answer
            assert_same(answer, want_good)
        else:
            assert got == status, answer
            assert text in answer["error"] and answer["status"] == status
            mixed_batches += answer["batch_size"] > 1
    assert mixed_batches > 0, "no bad request shared a batch with others"
    # a raw body with an unsupported type, and an empty one
    s = session(server)
    r = s.post(server.inference_url, data=b"hello", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415 and "Content-Type" in r.json()["error"]
    r = s.post(server.inference_url, data=b"", headers={"Content-Type": "image/png"})
    assert 400 <= r.status_code < 500
    # the worker survived all of that and still answers correctly
    r = s.post(server.inference_url, json={"image": base64.b64encode(good).decode(), "top_k": 2})
    assert r.status_code == 200 and server.status() == "READY"
    assert_same(r.json(), want_good)


def test_token_auth(server):
    body = {"image": base64.b64encode(png(7)).decode()}
    r = requests.post(server.inference_url, json=body, timeout=30)
    assert r.status_code in (400, 401, 403) and "Token" in r.text
    r = requests.post(
        server.inference_url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30
    )
    assert r.status_code in (400, 401, 403)
    r = requests.get(f"{server.opts.inference_url}/ping", timeout=30)
    assert r.status_code != 200
    keys = server.keys()
    assert set(keys) >= {"inference", "management"}
    r = requests.post(
        server.inference_url,
        json=body,
        headers={"Authorization": f"Bearer {keys['inference']}"},
        timeout=30,
    )
    assert r.status_code == 200 and "predictions" in r.json()


def test_describe_lists_signatures(server):
    r = requests.get(
        f"{server.opts.management_url}/models/tiny",
        params={"customized": "true"},
        headers=server.headers("management"),
        timeout=30,
    )
    assert r.status_code == 200
    meta = r.json()[0]["customizedMetadata"]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    assert [s["name"] for s in meta["signatures"]] == list(NAMES)
    assert meta["signatures"][1]["default_alpha"] == 0.75
    assert meta["max_alpha"] == 3.0 and meta["refused"] == {}
    assert r.json()[0]["batchSize"] == 8


def test_kservev2_envelope_via_cli(folder, engine, tmp_path):
    """The KServe v2 envelope, started by the CLI without the gateway (TorchServe on the
    public port, as KServe runs the archive)."""
    port, mport, xport, gport = free_server_ports()
    run_dir = tmp_path / "kserve"
    argv = ["serve", str(folder), "--run-dir", str(run_dir), "--name", "tiny2", "--kservev2"]
    argv += ["--port", str(port), "--management-port", str(mport), "--metrics-port", str(xport)]
    argv += ["--grpc-port", str(gport), "--resident", "codes", "--no-gateway"]
    assert rws_main(argv + ["--timeout", "180"]) == 0
    srv = serving.Server.attach(run_dir)
    assert srv is not None
    # without the gateway (as under KServe) TorchServe itself listens on the public port
    assert srv.gateway_pid is None and srv.opts.gateway is False
    props = (run_dir / "config.properties").read_text()
    assert f"inference_address=http://127.0.0.1:{port}\n" in props
    java = srv.java_pid()
    try:
        data = [png(50), png(51)]
        body = {
            "id": "req-1",
            "inputs": [
                {
                    "name": "first",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(data[0]).decode()],
                    "parameters": {"signatures": "fog:0.5,contrast:1", "top_k": 3},
                },
                {
                    "name": "second",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [{"image": base64.b64encode(data[1]).decode(), "signatures": ["fog"]}],
                },
            ],
        }
        url = f"http://127.0.0.1:{port}/v2/models/tiny2/infer"
        r = requests.post(url, json=body, headers=srv.headers(), timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "req-1" and out["model_name"] == "tiny2"
        assert [o["name"] for o in out["outputs"]] == ["first", "second"]
        assert_same(
            out["outputs"][0]["data"][0], expected(engine, data[0], "fog:0.5,contrast:1", 3)
        )
        assert_same(out["outputs"][1]["data"][0], expected(engine, data[1], ["fog"], 5))
        body["inputs"][0]["parameters"] = {"signatures": "snow:1"}
        r = requests.post(url, json=body, headers=srv.headers(), timeout=60)
        assert r.status_code == 400
        assert "unknown signature 'snow'" in r.json()["outputs"][0]["data"][0]["error"]
        r = requests.get(
            f"{srv.opts.management_url}/models/tiny2",
            params={"customized": "true"},
            headers=srv.headers("management"),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        meta = r.json()[0]["customizedMetadata"]
        assert (json.loads(meta) if isinstance(meta, str) else meta)["resident"] == "codes"
        # a body the envelope cannot parse is the client's error: 400 with a message
        for bad in (b"not json", b'{"id": "x"}', b'{"inputs": [{"name": "a"}]}'):
            r = requests.post(url, data=bad, headers=srv.headers(), timeout=60)
            assert r.status_code == 400, (bad, r.status_code, r.text)
            assert "not a KServe v2 inference request" in r.text
        r = requests.post(url, json=body | {"inputs": body["inputs"][1:]}, headers=srv.headers())
        assert r.status_code == 200, r.text  # and the worker still answers
    finally:
        assert rws_main(["serve", "--stop", "--run-dir", str(run_dir)]) == 0
    assert java is not None and not pid_alive(java)
    assert serving.Server.attach(run_dir) is None


def test_the_worker_runs_the_archived_handler_and_package(server):
    """The archive holds the packaged handler and a copy of the running ``rws_hub``; the
    worker runs that copy (the archive's directory comes first on its path)."""
    archive = server.run_dir / "model-store" / server.opts.model_name
    handler = archive / "torchserve_handler.py"
    assert handler.read_bytes() == locations.handler_file().read_bytes()
    package = locations.package_dir()
    copied = {p.relative_to(archive / "rws_hub") for p in (archive / "rws_hub").rglob("*.py")}
    assert copied == {p.relative_to(package) for p in package.rglob("*.py")}
    log = (server.run_dir / "logs" / "model_log.log").read_text(errors="replace")
    found = re.findall(r"rws: serving .* \(rws_hub from (\S+)\)", log)
    assert found, log[-2000:]  # TorchServe may run the archive from a copy under tmp/models/
    used = Path(found[-1])
    assert used.name == "rws_hub" and used.parent.name == server.opts.model_name, used
    assert used.is_relative_to(server.run_dir), used


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("rws_hub/integrations/torchserve_handler.py", "torchserve_handler"),
        ("handlers/rws_handler.py", "rws_handler"),
    ],
)
def test_torchserve_finds_one_handler_class(path, name):
    """TorchServe 0.12 imports the handler file as a top-level module and takes the one class
    defined in it: the packaged file and the checkout's thin file both have exactly one."""
    import importlib.util
    import sys

    from ts.torch_handler.base_handler import BaseHandler
    from ts.utils.util import list_classes_from_module

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        classes = list_classes_from_module(module)
    finally:
        del sys.modules[name]
    assert len(classes) == 1 and issubclass(classes[0], BaseHandler), classes
    assert not hasattr(module, "handle"), "a module-level handle() would be used instead"


def test_keys_keep_working_past_their_expiry(folder, engine, tmp_path):
    """TorchServe keys expire (60 minutes by default). `rws serve` writes token_expiration_min
    on purpose (default: as long as the server runs); with a short expiry (12 s here) the old
    key really stops working, the client renews it through the API key and retries, and a
    KeyKeeper (what `rws serve --foreground` runs) keeps key_file.json valid past the expiry
    point so that a plain request with the key read from the file authenticates."""
    import time

    from rws_hub.launch.client import predict

    cfg, _ = serving.write_configs(
        serving.ServeOptions(folder=folder, run_dir=tmp_path / "cfg", model_name="m")
    )
    assert f"token_expiration_min={serving.DEFAULT_KEY_EXPIRY_MIN}" in cfg.read_text()
    expiry_min = 0.2  # 12 s; TorchServe reads the value as a double
    srv = start_server(folder, tmp_path / "serve", name="keys", key_expiry_min=expiry_min)
    try:
        assert "token_expiration_min=0.2" in (srv.run_dir / "config.properties").read_text()
        started = time.monotonic()
        old = srv.keys()
        body = {"image": base64.b64encode(png(8)).decode(), "top_k": 3}
        want = expected(engine, png(8), None, 3)

        def plain(key: str) -> requests.Response:
            return requests.post(
                srv.inference_url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
            )

        assert plain(old["inference"]).status_code == 200
        time.sleep(max(0.0, expiry_min * 60 + 3 - (time.monotonic() - started)))
        r = plain(old["inference"])  # past the expiry point: TorchServe refuses the old key
        assert r.status_code == 400 and "Token" in r.text, r.text
        # the package's client renews (API key, never expires) and retries once
        r = predict(srv, png(8), None, top_k=3)
        assert r.status_code == 200, r.text
        assert_same(r.json(), want)
        renewed = srv.keys()
        assert renewed["inference"] != old["inference"]
        assert renewed["API"] == old["API"]
        # a KeyKeeper renews each key before it expires: the file's keys always work
        with serving.KeyKeeper(srv, margin_s=4.0, poll_s=0.5) as keeper:
            t1 = time.monotonic()
            while time.monotonic() - t1 < expiry_min * 60 + 4:
                time.sleep(1.0)
            assert keeper.renewals >= 2 and not keeper.errors, (keeper.renewals, keeper.errors)
            # a renewal replaces a key at once: like any client, read the file again on a
            # refusal (at most twice; the keeper renews every few seconds here)

            def call(api: str, send) -> requests.Response:
                for _ in range(3):
                    r = send(srv.keys()[api])
                    if r.status_code == 200:
                        break
                return r

            r = call("inference", plain)
            assert r.status_code == 200, r.text
            assert_same(r.json(), want)
            for api, url in (
                ("inference", f"{srv.opts.inference_url}/ping"),
                ("management", f"{srv.opts.management_url}/models"),
            ):
                r = call(
                    api,
                    lambda key, url=url: requests.get(
                        url, headers={"Authorization": f"Bearer {key}"}, timeout=30
                    ),
                )
                assert r.status_code == 200, (url, r.text)
        # rws serve --renew-keys: new keys on demand, the old ones stop working
        before = srv.keys()
        assert rws_main(["serve", "--renew-keys", "--run-dir", str(srv.run_dir)]) == 0
        after = srv.keys()
        assert after["inference"] != before["inference"]
        assert plain(after["inference"]).status_code == 200
        assert plain(before["inference"]).status_code == 400
    finally:
        stop_server(srv)
