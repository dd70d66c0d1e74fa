"""The web demo, driven through ``gradio_client`` against the real app on a loopback port.

The app runs the real engine on a tiny model folder; every answer is compared with the engine
called directly on the same pixels.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from helpers.hub import NAMES, REPO_ROOT, make_tiny_folder  # noqa: E402
from helpers.serving import sigint_default  # noqa: E402

from rws_hub.datasets.corruptions import corrupt  # noqa: E402
from rws_hub.inference.engine import Engine  # noqa: E402
from rws_hub.inference.parsing import decode_image  # noqa: E402
from rws_hub.integrations import gradio_app as demo_app  # noqa: E402

# Gradio's queue uses pandas options that pandas 3 deprecates (not this project's code).
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

EXAMPLE = REPO_ROOT / "demo" / "examples" / "airplane-fog.png"
TOL = 1e-5
RWS = [sys.executable, "-c", "import sys; from rws_hub.cli import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("demo") / "tiny-vgg")


@pytest.fixture(scope="module")
def engine(folder: Path) -> Engine:
    return Engine.from_folder(folder, device="cpu")


@pytest.fixture(scope="module")
def url(engine: Engine):
    """The real demo app on a free loopback port, stopped at the end (also on failure)."""
    app = demo_app.build_app(demo_app.LocalBackend(engine))
    address = demo_app.launch(app, port=free_port(), block=False, quiet=True)
    try:
        yield address
    finally:
        app.close()


@pytest.fixture(scope="module")
def client(url: str):
    return gradio_client.Client(url, verbose=False)


def model_pixels(path: Path, corruption: str = "none", severity: int = 5) -> torch.Tensor:
    """What the demo promises the model sees: decoded at 32x32, corrupted with seed 0, 8-bit."""
    x = decode_image(path.read_bytes(), (32, 32))
    if corruption != "none":
        x = corrupt(x[None], corruption, severity, generator=torch.Generator().manual_seed(0))[0]
    return x.mul(255).round().div(255)


def probs(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def expected(engine: Engine, x: torch.Tensor, mix) -> dict[str, float]:
    answer = engine.classify(x[None], [mix], top_k=5)[0]
    return {p["class"]: p["probability"] for p in answer["predictions"]}


def assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert list(got) == list(want)  # same classes, same order (top-1 first)
    for cls, p in want.items():
        assert got[cls] == pytest.approx(p, abs=TOL)


def test_predict_with_signatures_matches_the_engine(client, engine):
    seen, clean, patched, summary, details = client.predict(
        gradio_client.handle_file(str(EXAMPLE)),
        "fog:3,contrast:1.5",
        "none",
        5,
        api_name="/predict",
    )
    x = model_pixels(EXAMPLE)
    assert_same(probs(clean), expected(engine, x, None))
    assert_same(probs(patched), expected(engine, x, {"fog": 3.0, "contrast": 1.5}))
    assert clean["label"] == next(iter(expected(engine, x, None)))
    # The patch really changed the model's output (so the comparison above can fail).
    diff = max(abs(probs(clean).get(c, 0) - p) for c, p in probs(patched).items())
    assert diff > 1e-4
    assert details["patched"]["mix"] == {"fog": 3.0, "contrast": 1.5}
    assert "`fog` × 3" in summary and "`contrast` × 1.5" in summary
    assert Path(seen).is_file()


def test_corruption_in_the_page_and_list_of_names(client, engine):
    _, clean, patched, _, details = client.predict(
        gradio_client.handle_file(str(REPO_ROOT / "demo" / "examples" / "cat-clean.png")),
        "gaussian_noise",  # a bare name: the signature's default alpha
        "gaussian_noise",
        3,
        api_name="/predict",
    )
    x = model_pixels(REPO_ROOT / "demo" / "examples" / "cat-clean.png", "gaussian_noise", 3)
    assert_same(probs(clean), expected(engine, x, None))
    assert_same(probs(patched), expected(engine, x, ["gaussian_noise"]))
    assert details["patched"]["mix"] == {"gaussian_noise": 1.0}


def test_any_size_and_format_is_resized(client, engine, tmp_path):
    from PIL import Image

    big = tmp_path / "photo.jpg"
    Image.open(EXAMPLE).convert("RGB").resize((300, 200)).save(big, quality=95)
    _, clean, _, _, _ = client.predict(
        gradio_client.handle_file(str(big)), "", "none", 5, api_name="/predict"
    )
    assert_same(probs(clean), expected(engine, model_pixels(big), None))


def test_clean_only_and_auto_without_detector(client):
    _, clean, patched, summary, _ = client.predict(
        gradio_client.handle_file(str(EXAMPLE)), "", "none", 5, api_name="/predict"
    )
    assert probs(patched) == probs(clean)
    assert "clean model" in summary
    _, clean, patched, summary, details = client.predict(
        gradio_client.handle_file(str(EXAMPLE)), "auto", "none", 5, api_name="/predict"
    )
    assert clean["confidences"]  # the clean answer still comes back
    assert patched is None or not patched.get("confidences")
    assert "detector" in summary and "detector" in details["error"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("notes.png", lambda p: _write(p, b"this is not an image\n" * 20), "not an image"),
        ("empty.png", lambda p: _write(p, b""), "empty"),
        ("bomb.png", "bomb", "above the limit"),
        ("cut.png", "truncated", "truncated or corrupt"),
    ],
)
def test_bad_uploads_get_a_readable_message(client, tmp_path, name, make, message):
    from PIL import Image

    path = tmp_path / name
    if make == "bomb":  # 6000 x 5000 = 30 M pixels in a few KB
        Image.new("L", (6000, 5000)).save(path)
    elif make == "truncated":
        Image.open(EXAMPLE).resize((256, 256)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    else:
        make(path)
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(gradio_client.handle_file(str(path)), "", "none", 5, api_name="/predict")
    text = str(info.value)
    assert message in text
    assert "Traceback" not in text and 'File "' not in text


def test_bad_mix_and_missing_image(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="unknown signature 'nope'"):
        client.predict(
            gradio_client.handle_file(str(EXAMPLE)), "nope:1", "none", 5, api_name="/predict"
        )
    with pytest.raises(gradio_client.exceptions.AppError, match="no image"):
        client.predict(None, "fog", "none", 5, api_name="/predict")


def test_too_large_file_is_refused(client, url, tmp_path):
    import httpx

    data = b"\x89PNG\r\n\x1a\n" + os.urandom(11 * 1024 * 1024)
    path = _write(tmp_path / "huge.png", data)
    # gradio_client checks the app's limit before uploading ...
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(gradio_client.handle_file(str(path)), "", "none", 5, api_name="/predict")
    # ... and the server refuses the upload itself, with a message.
    resp = httpx.post(
        f"{url}gradio_api/upload", files={"files": ("huge.png", data, "image/png")}, timeout=60
    )
    assert resp.status_code == 413
    assert "size" in resp.text.lower()


def test_info_and_corrupt_endpoints(client, engine):
    info = client.predict(api_name="/info")
    assert [s["name"] for s in info["signatures"]] == list(NAMES)
    assert info["classes"] == list(engine.classes) and info["auto"] is False
    seen = client.predict(gradio_client.handle_file(str(EXAMPLE)), "fog", 5, api_name="/corrupt")
    from PIL import Image

    img = Image.open(seen)
    assert img.size == (demo_app.PREVIEW_SIDE, demo_app.PREVIEW_SIDE)
    # Nearest-neighbour enlargement of the model's 32x32 input.
    small = img.resize((32, 32), Image.Resampling.NEAREST)
    want = model_pixels(EXAMPLE, "fog", 5).mul(255).round().byte().permute(1, 2, 0)
    assert torch.equal(torch.from_numpy(np.array(small.convert("RGB"))), want)


def test_accuracies_show_as_percent_whether_stored_as_fractions_or_percent():
    assert demo_app._pct(0.8015) == "80%" and demo_app._pct(80.15) == "80%"
    assert demo_app._pct(None) == "–"
    info = demo_app.ModelInfo(
        name="m",
        classes=["a", "b"],
        input_size=(32, 32),
        defaults={"fog": 1.0},
        metrics={"corruptions": {"fog": {"backbone_ra": 55.8, "patched_ra": 72.9}}},
    )
    assert demo_app._metrics_rows(info) == [["fog", "56%", "73%", "+17.1", "1"]]


def test_examples_ship_in_the_package_and_the_checkout_links_them():
    """The CIFAR-10 examples are package data; ``demo/examples`` of the checkout shows the
    same files; a model that does not know their classes gets none of them."""
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    files = [Path(f) for f in demo_app.example_files(None, classes)]
    assert len(files) == 8 and all(f.parent == demo_app.EXAMPLES_DIR for f in files)
    assert files[0].stem.endswith("-clean")
    linked = sorted((REPO_ROOT / "demo" / "examples").glob("*.png"))
    assert [f.name for f in linked] == sorted(f.name for f in files)
    assert all(f.read_bytes() == (demo_app.EXAMPLES_DIR / f.name).read_bytes() for f in linked)
    assert demo_app.example_files(None, ["goldfish", "koala"]) == []


def test_a_folder_with_its_own_examples_shows_them(folder, tmp_path):
    """``examples/`` of a model folder (in its manifest) replace the package's; a damaged one
    is left out and the folder records why."""
    from rws_hub.io.folder import ModelFolder, save_model_folder

    src = ModelFolder.load(folder)
    png = EXAMPLE.read_bytes()
    own = save_model_folder(
        tmp_path / "own",
        model=src.model,
        config=src.config,
        signatures=src.signatures,
        examples={"goldfish-clean.png": png, "american_alligator-fog.png": png},
    )
    backend = demo_app.LocalBackend.from_folder(own, device="cpu")
    names = [Path(f).name for f in backend.info.examples]
    assert names == ["goldfish-clean.png", "american_alligator-fog.png"]
    assert demo_app._suggested(backend.info.examples[1], ["fog"]) == ["fog"]
    (own / "examples" / "goldfish-clean.png").write_bytes(png + b"x")
    loaded = ModelFolder.load(own, signatures=None)
    assert [p.name for p in loaded.example_files()] == ["american_alligator-fog.png"]
    assert "examples/goldfish-clean.png" in loaded.refused
    with pytest.raises(ValueError, match="plain"):
        save_model_folder(
            tmp_path / "bad", model=src.model, config=src.config, examples={"../x.png": png}
        )


def test_only_the_adapters_import_the_frameworks():
    """``ts`` is imported only by integrations/torchserve_handler.py, ``gradio`` only by
    integrations/gradio_app.py; the launchers and the CLI start without either."""
    import ast

    package = Path(demo_app.__file__).resolve().parents[1]
    owners = {"ts": "torchserve_handler.py", "gradio": "gradio_app.py"}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            for root, owner in owners.items():
                if root in roots:
                    assert path == package / "integrations" / owner, (path, root)
    code = (
        "import sys, rws_hub.integrations, rws_hub.launch.stack, rws_hub.launch.soak, "
        "rws_hub.cli; rws_hub.cli.build_parser(); "
        "bad = {'ts', 'gradio'} & {m.split('.')[0] for m in sys.modules}; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


def test_checkout_entry_points_run_the_packaged_app():
    """``python demo/app.py`` (same options) and ``python -m rws_hub.integrations.gradio_app``
    are the packaged app; ``demo.app`` re-exports its API."""
    for cmd in (["demo/app.py"], ["-m", "rws_hub.integrations.gradio_app"]):
        done = subprocess.run(
            [sys.executable, *cmd, "--help"], capture_output=True, text=True, cwd=REPO_ROOT
        )
        assert done.returncode == 0, done.stderr
        for option in ("--model", "--server", "--token-file", "--management-url", "--device"):
            assert option in done.stdout, (cmd, option)
    code = (
        "from demo.app import LocalBackend, build_app, launch, main; "
        "from rws_hub.integrations import gradio_app as g; "
        "assert (build_app, launch, main, LocalBackend) == "
        "(g.build_app, g.launch, g.main, g.LocalBackend)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


def test_rws_demo_prints_the_url_and_stops_on_ctrl_c(folder):
    """`rws demo FOLDER` as a user runs it: prints the URL, serves the page, exits 0 on SIGINT."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [*RWS, "demo", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        preexec_fn=sigint_default,
    )
    try:
        deadline = time.monotonic() + 90
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            if "http://" in line:
                break
        assert f"http://127.0.0.1:{port}/" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "Robust Weight Signatures" in page
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def free_port_run(n: int) -> int:
    """A port p such that p .. p+n-1 are all free on 127.0.0.1."""
    for _ in range(50):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def _have_torchserve() -> bool:
    import shutil

    return (
        shutil.which("java") is not None and (Path(sys.executable).parent / "torchserve").exists()
    )


@pytest.mark.server
@pytest.mark.skipif(not _have_torchserve(), reason="needs Java 17 and torchserve")
def test_rws_up_runs_the_whole_stack_and_ctrl_c_stops_it(folder, engine, tmp_path):
    """`rws up`: TorchServe, then the demo as its REST client; the page's answers equal the
    in-process engine's; SIGINT stops both (ports closed, state file gone)."""
    port, demo_port = free_port_run(3), free_port()
    run_dir = tmp_path / "up"
    cmd = [*RWS, "up", "--model", str(folder), "--port", str(port), "--demo-port", str(demo_port)]
    proc = subprocess.Popen(
        [*cmd, "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        cwd=REPO_ROOT,
        preexec_fn=sigint_default,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        out = "".join(lines)
        assert f"http://127.0.0.1:{demo_port}/" in out, out
        assert f"http://127.0.0.1:{port}/predictions/" in out, out

        client = gradio_client.Client(f"http://127.0.0.1:{demo_port}/", verbose=False)
        _, clean, patched, _, details = client.predict(
            gradio_client.handle_file(str(EXAMPLE)), "fog:3,contrast:1.5", "none", 5,
            api_name="/predict",
        )  # fmt: skip
        assert details["backend"].startswith("REST client of")
        x = model_pixels(EXAMPLE)
        assert_same(probs(clean), expected(engine, x, None))
        assert_same(probs(patched), expected(engine, x, {"fog": 3.0, "contrast": 1.5}))
        info = client.predict(api_name="/info")
        assert [s["name"] for s in info["signatures"]] == list(NAMES)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        rest = proc.stdout.read()
        assert "rws up: stopped" in rest, rest
        assert not (run_dir / "stack.json").exists()
        for p in (port, port + 1, demo_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still open"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(
            [*RWS, "up", "--stop", "--run-dir", str(run_dir)], cwd=REPO_ROOT, timeout=120
        )
        proc.stdout.close()


def test_auto_with_a_detector_shows_what_it_saw_and_applied(folder: Path, tmp_path: Path):
    """A folder that ships a detector (here one that always sees fog): "auto" patches with
    fog, the summary names what the detector saw, and the bars equal the engine's."""
    import shutil

    from rws_hub.detect import AutoRule, CorruptionDetector
    from rws_hub.io.folder import add_detector

    root = tmp_path / "with-detector"
    shutil.copytree(folder, root)
    backbone = Engine.from_folder(root, device="cpu").model
    torch.manual_seed(1)
    det = CorruptionDetector(conv_channels=8, hidden=16)
    det.set_backbone_conv(backbone)
    with torch.no_grad():
        det.head[-1].bias[det.classes.index("fog")] = 50.0
    add_detector(root, det.state_dict(), det.spec() | {"rule": AutoRule("top1", 0.5).to_json()})
    engine = Engine.from_folder(root, device="cpu")
    app = demo_app.build_app(demo_app.LocalBackend(engine))
    address = demo_app.launch(app, port=free_port(), block=False, quiet=True)
    try:
        client = gradio_client.Client(address, verbose=False)
        _, _, patched, summary, details = client.predict(
            gradio_client.handle_file(str(EXAMPLE)), "auto", "none", 5, api_name="/predict"
        )
    finally:
        app.close()
    assert "auto chose `fog`" in summary and "detector saw: `fog` 100%" in summary
    assert details["patched"]["mix"] == {"fog": 1.0}
    assert_same(probs(patched), expected(engine, model_pixels(EXAMPLE), {"fog": 1.0}))
