"""The web demo in a real browser: Playwright driving Debian's headless Chromium.

Uploads a corrupted CIFAR-10 example, picks its signature, submits, reads both predictions off
the page and checks them against the engine; a bad upload shows a readable message. The first
test saves a full-page screenshot into the test's temporary folder; ``RWS_SCREENSHOT=path`` sends
it elsewhere, e.g. ``RWS_SCREENSHOT=docs/demo.png`` refreshes the README's picture (tests never
write into the checkout on their own).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import re  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    # Gradio's queue uses pandas options that pandas 3 deprecates (not this project's code).
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)",
    ),
]

pytest.importorskip("gradio")
pytest.importorskip("playwright")

from helpers.hub import REPO_ROOT, make_tiny_folder  # noqa: E402

from rws_hub.inference.engine import Engine  # noqa: E402
from rws_hub.inference.parsing import decode_image  # noqa: E402
from rws_hub.integrations import gradio_app as demo_app  # noqa: E402
from rws_hub.zoo.entries import DEFAULT_ENTRY  # noqa: E402

EMBEDDED = REPO_ROOT / DEFAULT_ENTRY.folder
EXAMPLE = REPO_ROOT / "demo" / "examples" / "automobile-gaussian_noise.png"
SIGNATURE = "gaussian_noise"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    """pytest-playwright launches Debian's Chromium (Playwright cannot download its own)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default when the checkout has it (the screenshot shows the real model),
    else a tiny model folder."""
    if (EMBEDDED / "config.json").is_file():
        return EMBEDDED
    return make_tiny_folder(tmp_path_factory.mktemp("browser") / "tiny-vgg")


@pytest.fixture(scope="module")
def engine(model_folder: Path) -> Engine:
    return Engine.from_folder(model_folder, device="cpu")


@pytest.fixture(scope="module")
def app_url(engine: Engine):
    """The real demo app on a free loopback port, closed at the end (also on failure)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = demo_app.build_app(demo_app.LocalBackend(engine))
    url = demo_app.launch(app, port=port, block=False, quiet=True)
    try:
        yield url
    finally:
        app.close()


def read_label(page, elem_id: str) -> list[tuple[str, int]]:
    """(class, percent) rows of a gr.Label on the page, top first."""
    text = page.locator(f"#{elem_id}").inner_text()
    rows = re.findall(r"^(.+?)\s*\n\s*(\d+(?:\.\d+)?)%\s*$", text, flags=re.M)
    return [(cls.strip(), round(float(pct))) for cls, pct in rows]


def settled_labels(page, timeout: float = 60.0) -> tuple[list, list]:
    """Both labels once the page has settled: five rows each, the same on two reads 0.5 s
    apart (the page re-runs the prediction on several events; a read must not catch a
    re-render half way)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        now = (read_label(page, "rws-clean"), read_label(page, "rws-patched"))
        if len(now[0]) == 5 and len(now[1]) == 5 and now == last:
            return now
        last = now
        page.wait_for_timeout(500)
    raise AssertionError(f"the predictions did not settle: {last}")


def engine_rows(engine: Engine, x: torch.Tensor, mix) -> list[tuple[str, float]]:
    answer = engine.classify(x[None], [mix], top_k=5)[0]
    return [(p["class"], 100 * p["probability"]) for p in answer["predictions"]]


def assert_rows(got: list[tuple[str, int]], want: list[tuple[str, float]]) -> None:
    assert [c for c, _ in got] == [c for c, _ in want], (got, want)
    for (_, pct), (_, p) in zip(got, want, strict=True):
        assert abs(pct - p) <= 1.0, (got, want)


def screenshot_path(tmp_path: Path) -> Path:
    if os.environ.get("RWS_SCREENSHOT"):
        return Path(os.environ["RWS_SCREENSHOT"])
    return tmp_path / "demo.png"


def test_upload_pick_signature_submit_and_read_both(page, app_url, engine, model_folder, tmp_path):
    outside: list[str] = []  # the page must not call out (fonts, analytics, CDNs)
    page.on(
        "request",
        lambda r: None if r.url.startswith((app_url, "data:", "blob:")) else outside.append(r.url),
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(app_url)
    page.locator("#rws-image").wait_for()

    # Upload a corrupted CIFAR-10 test image.
    page.locator("#rws-image input[type=file]").set_input_files(str(EXAMPLE))
    # Pick its signature: the slider of that signature appears and the mix text follows.
    page.locator("#rws-signatures input").click()
    page.get_by_role("option", name=SIGNATURE, exact=True).click()
    page.keyboard.press("Escape")
    page.locator(f"#rws-alpha-{SIGNATURE}").wait_for(state="visible")
    mix = page.locator("#rws-mix textarea, #rws-mix input").first
    page.wait_for_function(
        f"el => el.value.startsWith('{SIGNATURE}:')", arg=mix.element_handle(), timeout=60_000
    )
    alpha = float(mix.input_value().split(":")[1])
    assert alpha == engine.defaults[SIGNATURE]

    page.locator("#rws-run").click()
    page.wait_for_function(
        f"() => document.querySelector('#rws-summary').innerText.includes('{SIGNATURE}')",
        timeout=60_000,
    )
    page.wait_for_load_state("networkidle")
    page.wait_for_function(
        "() => { const i = document.querySelector('#rws-seen img');"
        " return i && i.complete && i.naturalWidth > 0; }",
        timeout=60_000,
    )

    x = decode_image(EXAMPLE.read_bytes(), engine.input_size)
    clean, patched = settled_labels(page)
    assert_rows(clean, engine_rows(engine, x, None))
    assert_rows(patched, engine_rows(engine, x, {SIGNATURE: alpha}))
    summary = page.locator("#rws-summary").inner_text()
    assert f"{SIGNATURE} × " in summary

    assert outside == []
    page.mouse.move(0, 0)  # no hover highlight in the picture
    out = screenshot_path(tmp_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 20_000


def test_bad_upload_shows_a_readable_message(page, app_url, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_text("this is a text file, not a picture\n")
    page.goto(app_url)
    page.locator("#rws-image").wait_for()
    page.locator("#rws-image input[type=file]").set_input_files(str(bad))
    toast = page.get_by_text("not an image in a supported format")
    toast.first.wait_for(state="visible", timeout=60_000)
    body = page.locator("body").inner_text()
    assert "Traceback" not in body
