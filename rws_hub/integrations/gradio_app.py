"""rws-hub web demo: upload an image, corrupt it, patch robustness in, compare.

A Gradio page over one of two backends that answer the same questions:

* :class:`LocalBackend`: the serving engine (:class:`rws_hub.inference.engine.Engine`) in this process, on
  a model folder (default in a checkout: the embedded default entry's folder);
* :class:`RestBackend`: a running ``rws serve`` (TorchServe), over its REST API, so the page
  shows the whole stack at work.

Shipped in the package (the only module of ``rws_hub`` that imports Gradio), with its example
images in ``rws_hub/integrations/examples/``. Run it with ``rws demo FOLDER``, ``python -m
rws_hub.integrations.gradio_app FOLDER`` or, in a checkout, ``python demo/app.py``; ``--help``
lists the options. The page's events are also named API endpoints for ``gradio_client`` (see
``docs/demo.md``):

* ``/predict`` (image, signatures, corruption, severity) -> (model input, clean top-5,
  patched top-5, summary, details)
* ``/corrupt`` (image, corruption, severity) -> the image the model would see
* ``/info`` () -> the model, its signatures and what each one buys
"""

from __future__ import annotations

import os

# No analytics or version checks: the demo makes no outbound network calls.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import urllib.error  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Protocol  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rws_hub.core.mix import Mix, format_alpha  # noqa: E402
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS, corrupt  # noqa: E402
from rws_hub.errors import RequestError, RWSError  # noqa: E402
from rws_hub.inference.parsing import RequestLimits, RequestParser, decode_image  # noqa: E402
from rws_hub.launch.locations import DEFAULT_FOLDER, default_folder, resolve_folder  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "Backend",
    "LocalBackend",
    "ModelInfo",
    "RestBackend",
    "build_app",
    "launch",
    "main",
]

log = logging.getLogger("rws_hub.demo")

DEFAULT_MODEL = default_folder()
"""The embedded default model folder (it exists only in a checkout of rws-hub)."""
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
"""The example images (package data; ``demo/examples`` of a checkout links here)."""
NO_CORRUPTION = "none"
TOP_K = 5
PREVIEW_SIDE = 224  # the model-sized input is shown enlarged, pixels kept sharp
LIMITS = RequestLimits()
START_HINT = "Upload an image or pick an example to start."


# --------------------------------------------------------------------------------------------
# backends


@dataclass
class ModelInfo:
    """What the page needs to know about the model behind a backend."""

    name: str
    classes: list[str]
    input_size: tuple[int, int]
    defaults: dict[str, float]
    """Signature name -> default alpha, in the model folder's order."""
    auto: bool = False
    max_alpha: float | None = None
    allow_negative: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    """The folder's ``config["metrics"]`` (clean accuracy, per-corruption RA), when known."""
    where: str = ""
    """The backend in words (shown on the page)."""
    examples: list[str] = field(default_factory=list)
    """Example image files (see :func:`example_files`)."""

    def parser(self) -> RequestParser:
        """A request parser with this model's signatures and limits."""
        return RequestParser(
            known=self.defaults,
            num_classes=len(self.classes),
            input_size=self.input_size,
            max_alpha=self.max_alpha,
            allow_negative=self.allow_negative,
            auto=self.auto,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able summary (the ``/info`` endpoint)."""
        gains = self.metrics.get("corruptions", {}) if isinstance(self.metrics, dict) else {}
        return {
            "model": self.name,
            "backend": self.where,
            "classes": list(self.classes),
            "input_size": list(self.input_size),
            "auto": self.auto,
            "max_alpha": self.max_alpha,
            "signatures": [
                {"name": n, "default_alpha": a, **({"metrics": gains[n]} if n in gains else {})}
                for n, a in self.defaults.items()
            ],
            "clean_accuracy": self.metrics.get("clean_accuracy")
            if isinstance(self.metrics, dict)
            else None,
        }


class Backend(Protocol):
    """Classifies one model-sized image under one mix."""

    info: ModelInfo

    def classify(
        self, image: torch.Tensor, mix: Mix | str | None, top_k: int = TOP_K
    ) -> dict[str, Any]:
        """``image`` float (3, H, W) in [0, 1] at ``info.input_size``; ``mix`` a Mix, ``"auto"``
        or None (clean). Returns ``{"predictions": [{"class", "probability"}...], "mix": {...}}``
        (plus ``"auto": True`` for auto). Raises :class:`RequestError` with a readable message."""
        ...


class LocalBackend:
    """The engine in this process.

    Args:
        engine: a :class:`rws_hub.inference.engine.Engine`.
    """

    def __init__(self, engine: Any, examples: list[str] | None = None) -> None:
        self.engine = engine
        config = getattr(engine, "config", {}) or {}
        self.info = ModelInfo(
            name=engine.name,
            classes=list(engine.classes),
            input_size=tuple(engine.input_size),
            defaults=dict(engine.defaults),
            auto=engine.detector is not None,
            max_alpha=engine.max_alpha,
            allow_negative=engine.allow_negative,
            metrics=dict(config.get("metrics") or {}),
            where=f"in-process engine ({engine.device})",
            examples=example_files(None, engine.classes) if examples is None else examples,
        )

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | None = None) -> LocalBackend:
        """An engine on the model folder ``folder``."""
        from rws_hub.inference.engine import Engine, default_device
        from rws_hub.io.folder import ModelFolder

        loaded = ModelFolder.load(folder, device=torch.device(device or default_device()))
        engine = Engine.from_folder(loaded, device=device)
        return cls(engine, examples=example_files(loaded, engine.classes))

    def classify(
        self, image: torch.Tensor, mix: Mix | str | None, top_k: int = TOP_K
    ) -> dict[str, Any]:
        """See :meth:`Backend.classify`."""
        try:
            return self.engine.classify(image[None], [mix], top_k=top_k)[0]
        except RWSError as exc:
            raise RequestError(str(exc), getattr(exc, "status", 400)) from None


def read_token_file(path: str | Path) -> tuple[str | None, str | None]:
    """(inference key, management key) from TorchServe's ``key_file.json``, or one token from a
    plain text file (used for both)."""
    text = Path(path).read_text().strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or None, text or None
    if isinstance(data, dict):

        def key(section: str) -> str | None:
            entry = data.get(section)
            return entry.get("key") if isinstance(entry, dict) else entry

        return key("inference"), key("management")
    raise ValueError(f"{path}: not a TorchServe key file")


class RestBackend:
    """A running ``rws serve`` (TorchServe) reached over REST.

    Args:
        url: the inference address, ``http://host:8080`` or
            ``http://host:8080/predictions/<model>``.
        token: the inference key (``Authorization: Bearer``), if token auth is on.
        management_url: the management address (default: the inference port + 1), used to
            find the model and list its signatures (``GET /models/<model>?customized=true``).
        management_token: the management key (default: ``token``).
        model: the model name on the server (default: from ``url``, else the first model).
        folder: a local copy of the model folder, read for the signature list when the
            management API does not answer.
        timeout: seconds per HTTP request.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        management_url: str | None = None,
        management_token: str | None = None,
        model: str | None = None,
        folder: str | Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        path = parts.path.strip("/").split("/")
        if len(path) >= 2 and path[0] == "predictions":
            model = model or path[1]
        self.base = f"{parts.scheme}://{parts.netloc}"
        if management_url is None:
            port = (parts.port or 80) + 1
            management_url = f"{parts.scheme}://{parts.hostname}:{port}"
        self.management = management_url.rstrip("/")
        self.token = token
        self.management_token = management_token or token
        self.timeout = timeout
        self.model = model or self._first_model()
        self.predict_url = f"{self.base}/predictions/{urllib.parse.quote(self.model)}"
        self.info = self._describe(folder)

    # -- HTTP -------------------------------------------------------------------------------

    def _request(
        self, url: str, token: str | None, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RequestError(
                f"cannot reach the server at {url}: {reason} (is `rws serve` running?)", 502
            ) from None
        try:
            payload = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        return status, payload

    @staticmethod
    def _message(status: int, payload: Any) -> str:
        if isinstance(payload, dict):
            for key in ("message", "error", "detail"):
                if isinstance(payload.get(key), str):
                    return payload[key]
        return f"the server answered {status}: {str(payload)[:300]}"

    def _first_model(self) -> str:
        status, payload = self._request(f"{self.management}/models", self.management_token)
        models = payload.get("models") if isinstance(payload, dict) else None
        if status != 200 or not models:
            raise RequestError(
                f"cannot list the models at {self.management}/models "
                f"({self._message(status, payload)}); give the model in the URL "
                "(http://host:port/predictions/<model>)",
                status if status >= 400 else 502,
            )
        return str(models[0]["modelName"])

    def _describe(self, folder: str | Path | None) -> ModelInfo:
        url = f"{self.management}/models/{urllib.parse.quote(self.model)}?customized=true"
        described: dict[str, Any] = {}
        try:
            status, payload = self._request(url, self.management_token)
        except RequestError:
            status, payload = 0, None
        if status == 200 and isinstance(payload, list) and payload:
            meta = payload[0].get("customizedMetadata")
            if isinstance(meta, str):
                try:
                    meta = json.loads(meta)
                except ValueError:
                    meta = None
            if isinstance(meta, dict):
                described = meta
        config: dict[str, Any] = {}
        if folder is not None:
            from rws_hub.io.folder import ModelFolder

            config = ModelFolder.read_config(folder)
        if not described and not config:
            raise RequestError(
                f"cannot list the signatures of {self.model!r} ({url} did not answer with "
                "them); pass the model folder too (--model)",
                502,
            )
        sigs = described.get("signatures")
        if isinstance(sigs, list):
            defaults = {str(s["name"]): float(s.get("default_alpha", 1.0)) for s in sigs}
        else:
            defaults = {str(n): 1.0 for n in config.get("signatures", [])}
        size = described.get("input_size") or config.get("input_size") or [32, 32]
        metrics = described.get("metrics") or config.get("metrics") or {}
        return ModelInfo(
            name=self.model,
            classes=list(described.get("classes") or config.get("classes") or []),
            input_size=(int(size[-2]), int(size[-1])),
            defaults=defaults,
            auto=bool(described.get("auto", False)),
            max_alpha=described.get("max_alpha"),
            allow_negative=bool(described.get("allow_negative", False)),
            metrics=metrics if isinstance(metrics, dict) else {},
            where=f"REST client of {self.base}/predictions/{self.model}",
            examples=example_files(
                folder, list(described.get("classes") or config.get("classes") or [])
            ),
        )

    # -- inference --------------------------------------------------------------------------

    def classify(
        self, image: torch.Tensor, mix: Mix | str | None, top_k: int = TOP_K
    ) -> dict[str, Any]:
        """See :meth:`Backend.classify` (one POST /predictions/<model>)."""
        body = {
            "image": base64.b64encode(_png_bytes(image)).decode("ascii"),
            "signatures": dict(mix) if isinstance(mix, Mix) else mix,
            "top_k": top_k,
        }
        status, payload = self._request(self.predict_url, self.token, body)
        if status != 200:
            raise RequestError(self._message(status, payload), status)
        if isinstance(payload, dict) and "predictions" in payload:
            return payload
        if isinstance(payload, dict):  # a bare {class: probability} answer
            preds = sorted(payload.items(), key=lambda kv: -float(kv[1]))[:top_k]
            return {
                "predictions": [{"class": c, "probability": float(p)} for c, p in preds],
                "mix": dict(mix) if isinstance(mix, Mix) else {},
            }
        raise RequestError(f"unexpected answer from the server: {str(payload)[:300]}", 502)


# --------------------------------------------------------------------------------------------
# image helpers


def _png_bytes(image: torch.Tensor) -> bytes:
    """A float (3, H, W) image in [0, 1] as PNG bytes."""
    buf = io.BytesIO()
    _to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def _to_pil(image: torch.Tensor) -> Image.Image:
    pixels = image.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels, "RGB")


def _read_upload(upload: str | bytes | None) -> bytes:
    """The uploaded file's bytes, refusing missing and over-large files readably."""
    if upload is None:
        raise RequestError("no image: upload one, or pick an example below", 400)
    if isinstance(upload, bytes):
        data = upload
    else:
        path = Path(upload)
        try:
            size = path.stat().st_size
        except OSError:
            raise RequestError("the uploaded file is gone; upload it again", 400) from None
        if size > LIMITS.max_body_bytes:
            raise RequestError(
                f"the file is {size / 1e6:.1f} MB; the demo takes images up to "
                f"{LIMITS.max_body_bytes / 1e6:.0f} MB",
                413,
            )
        data = path.read_bytes()
    if len(data) > LIMITS.max_body_bytes:
        raise RequestError(
            f"the image is {len(data) / 1e6:.1f} MB; the demo takes images up to "
            f"{LIMITS.max_body_bytes / 1e6:.0f} MB",
            413,
        )
    return data


def model_input(
    upload: str | bytes | None,
    corruption: str | None,
    severity: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """The image the model sees: decoded (any size and format; resized and center-cropped to
    ``size``), optionally corrupted (seeded, so the same every time), rounded to 8 bits."""
    image = decode_image(_read_upload(upload), size, limits=LIMITS)
    if corruption and corruption != NO_CORRUPTION:
        if corruption not in ALL_CORRUPTIONS:
            raise RequestError(
                f"unknown corruption {corruption!r}; known: {', '.join(ALL_CORRUPTIONS)}", 400
            )
        sev = int(round(float(severity)))
        if not 1 <= sev <= 5:
            raise RequestError(f"severity must be 1..5, got {severity!r}", 400)
        gen = torch.Generator().manual_seed(0)
        image = corrupt(image[None], corruption, sev, generator=gen)[0]
    # 8-bit, as a PNG would carry it: the in-process and REST backends see the same pixels.
    return image.mul(255).round().div(255)


def _preview(image: torch.Tensor) -> Image.Image:
    side = PREVIEW_SIDE
    return _to_pil(image).resize((side, side), Image.Resampling.NEAREST)


def _raw_preprocess(payload: Any) -> str | bytes | None:
    """An image upload's file path (or the bytes of a data URL), undecoded."""
    if payload is None:
        return None
    url = getattr(payload, "url", None)
    if url and url.startswith("data:"):
        _, _, encoded = url.partition(",")
        try:
            return base64.b64decode(encoded, validate=False)
        except ValueError:
            raise gr.Error("the image data URL is not valid base64") from None
    return payload.path


def upload_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` upload that hands the file over undecoded: the demo decodes it itself
    with the project's limits, so a bad file gets a readable message instead of a decoder
    traceback. (An instance override: subclassing a component makes Gradio write a ``.pyi``
    next to this module.)"""
    component = gr.Image(type="filepath", **kwargs)
    component.preprocess = _raw_preprocess  # type: ignore[method-assign]
    return component


# --------------------------------------------------------------------------------------------
# the page


CSS = """
.gradio-container {max-width: 1240px !important; margin: auto;}
#rws-title h1 {margin-bottom: 0.1em;}
#rws-title p {margin-top: 0.2em; color: var(--body-text-color-subdued);}
#rws-seen img, #rws-examples img {image-rendering: pixelated;}
#rws-image img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}
#rws-summary {padding: 0.6em 1em; border-radius: var(--radius-lg);
  background: var(--color-accent-soft); border: 1px solid var(--border-color-accent);}
#rws-summary {min-height: 2.5em;}
#rws-summary p {font-size: 1.02em;}
footer {display: none !important;}
"""

THEME = gr.themes.Soft(
    primary_hue="indigo",
    secondary_hue="sky",
    neutral_hue="slate",
    radius_size="md",
)


def _as_percent(x: Any) -> float | None:
    """An accuracy or probability in percent: fractions (<= 1) are scaled, percentages (the
    zoo writes accuracies as 80.15) kept."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return 100.0 * float(x) if abs(float(x)) <= 1.0 else float(x)


def _pct(x: Any) -> str:
    value = _as_percent(x)
    return "–" if value is None else f"{value:.0f}%"


def _mix_text(mix: Mix | dict[str, float]) -> str:
    return ",".join(f"{n}:{format_alpha(a)}" for n, a in mix.items())


def _label_value(answer: dict[str, Any] | None) -> dict[str, float] | None:
    if not answer:
        return None
    return {p["class"]: float(p["probability"]) for p in answer["predictions"]}


def _top1(answer: dict[str, Any]) -> tuple[str, float]:
    best = answer["predictions"][0]
    return best["class"], float(best["probability"])


def _metrics_rows(info: ModelInfo) -> list[list[str]]:
    per = info.metrics.get("corruptions", {}) if info.metrics else {}
    rows = []
    for name in info.defaults:
        m = per.get(name, {})
        before, after = _as_percent(m.get("backbone_ra")), _as_percent(m.get("patched_ra"))
        gain = f"{after - before:+.1f}" if before is not None and after is not None else "–"
        rows.append([name, _pct(before), _pct(after), gain, format_alpha(info.defaults[name])])
    return rows


def _slider_info(info: ModelInfo, name: str) -> str:
    m = (info.metrics.get("corruptions", {}) if info.metrics else {}).get(name, {})
    before, after = m.get("backbone_ra"), m.get("patched_ra")
    if _as_percent(before) is not None and _as_percent(after) is not None:
        sev = info.metrics.get("severity", 5)
        return f"accuracy under {name}, severity {sev}: {_pct(before)} → {_pct(after)} patched"
    return f"default α {format_alpha(info.defaults[name])}"


def example_files(folder: Any, classes: list[str]) -> list[str]:
    """Example images for a model: the model folder's own ``examples/`` (``folder``: a path
    or a loaded ``ModelFolder``), else the package's (:data:`EXAMPLES_DIR`) when the model
    knows their classes; clean images first."""
    files: list[Path] = []
    if folder is not None:
        from rws_hub.io.folder import ModelFolder

        try:
            loaded = (
                folder
                if isinstance(folder, ModelFolder)
                else ModelFolder.load(folder, signatures=None)
            )
            files = loaded.example_files()
        except RWSError:
            files = []
    if not files:
        shipped = list(EXAMPLES_DIR.glob("*.png"))
        if shipped and all(p.stem.rpartition("-")[0] in classes for p in shipped):
            files = shipped
    files = sorted(files, key=lambda p: ("-clean" not in p.stem, p.stem))
    return [str(p) for p in files]


def _suggested(path: str | bytes | None, names: list[str]) -> list[str]:
    """The signature matching an example's corruption (from its file name), if loaded."""
    if not isinstance(path, str):
        return []
    corruption = Path(path).stem.rpartition("-")[2]
    return [corruption] if corruption in names else []


def build_app(backend: Backend) -> gr.Blocks:
    """The demo page over ``backend`` (a :class:`LocalBackend` or :class:`RestBackend`).

    Launch it with :func:`launch` (which applies the theme and styles)."""
    info = backend.info
    names = list(info.defaults)
    parser = info.parser()
    slider_max = max(2.0, *(2 * a for a in info.defaults.values())) if names else 2.0
    if info.max_alpha is not None:
        slider_max = min(slider_max, float(info.max_alpha))
    clean_acc = info.metrics.get("clean_accuracy") if info.metrics else None

    # -- event functions --------------------------------------------------------------------

    def predict(
        image: str | bytes | None, signatures: str | None, corruption: str, severity: float
    ) -> tuple[Any, ...]:
        """Classify the image with the clean model and with the mix ``signatures``
        (``"name:alpha,..."``, ``"auto"`` or empty), after an optional corruption."""
        try:
            x = model_input(image, corruption, int(round(float(severity))), info.input_size)
            text = (signatures or "").strip()
            # "auto" goes to the backend as is: it answers, or says why it cannot.
            mix = "auto" if text.lower() == "auto" else parser.parse_mix(text or None)
            clean = backend.classify(x, None, TOP_K)
        except RequestError as exc:
            raise gr.Error(str(exc), title="Cannot classify this", print_exception=False) from None
        except Exception as exc:  # never a traceback on the page
            log.exception("predict failed")
            raise gr.Error(f"something went wrong: {type(exc).__name__}: {exc}") from None

        details: dict[str, Any] = {"backend": info.where, "clean": clean}
        patched = None
        if isinstance(mix, Mix) and mix.is_empty:
            summary = (
                "No signature chosen: the patched model **is** the clean model. "
                "Pick one or more signatures on the right."
            )
            patched = clean
        else:
            try:
                patched = backend.classify(x, mix, TOP_K)
            except RequestError as exc:
                details["error"] = str(exc)
                summary = f"⚠️ **The patch could not be applied:** {exc}"
                gr.Warning(str(exc))
            except Exception as exc:
                log.exception("predict failed")
                raise gr.Error(f"something went wrong: {type(exc).__name__}: {exc}") from None
        if patched is not None and patched is not clean:
            applied = patched.get("mix") or {}
            how = "auto chose" if patched.get("auto") else "Patched with"
            mix_md = " + ".join(f"`{n}` × {format_alpha(a)}" for n, a in applied.items())
            c_cls, c_p = _top1(clean)
            p_cls, p_p = _top1(patched)
            if c_cls != p_cls:
                verdict = (
                    f"the answer changes: **{c_cls}** ({_pct(c_p)}) → **{p_cls}** ({_pct(p_p)})"
                )
            else:
                verdict = f"both say **{p_cls}** ({_pct(c_p)} → {_pct(p_p)})"
            summary = f"{how} {mix_md or 'nothing (clean)'}: {verdict}."
            seen = patched.get("detected") or []
            if seen:
                summary += "\n\nThe detector saw: " + " · ".join(
                    f"`{d['class']}` {_pct(d['probability'])}" for d in seen
                )
            details["patched"] = patched
        return (
            _preview(x),
            _label_value(clean),
            _label_value(patched),
            summary,
            details,
        )

    def live_predict(*args: Any) -> tuple[Any, ...]:
        """``predict`` for page events: does nothing until there is an image."""
        if args[0] is None:
            return (None, None, None, START_HINT, None)
        return predict(*args)

    def corrupt_preview(image: str | bytes | None, corruption: str, severity: float) -> Any:
        """The image the model would see (resized, corrupted), enlarged."""
        try:
            x = model_input(image, corruption, int(round(float(severity))), info.input_size)
        except RequestError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return _preview(x)

    def describe() -> dict[str, Any]:
        """The model, its signatures (with default alphas and measured gains) and the backend."""
        return info.as_dict()

    def compose(auto: bool, chosen: list[str] | None, *alphas: float) -> tuple[Any, ...]:
        """Show one slider per chosen signature and write the mix text from them."""
        chosen = [n for n in (chosen or []) if n in names]
        visible = [gr.update(visible=n in chosen and not auto) for n in names]
        alpha = dict(zip(names, alphas, strict=True))
        text = "auto" if auto else _mix_text({n: float(alpha[n]) for n in chosen})
        return (*visible, text, gr.update(interactive=not auto))

    # -- layout -----------------------------------------------------------------------------

    with gr.Blocks(title="rws-hub · Robust Weight Signatures demo", analytics_enabled=False) as app:
        gr.Markdown(
            "# Robust Weight Signatures\n"
            "Corruption robustness as tiny weight patches: add a signature to the clean model "
            "with strength α, combine several, take them off exactly. Upload a picture (or "
            "pick an example), corrupt it if you like, choose signatures, and compare.",
            elem_id="rws-title",
        )
        facts = [
            f"model **{info.name}**",
            f"{len(info.classes)} classes",
            f"{len(names)} signatures",
        ]
        if isinstance(clean_acc, (int, float)):
            facts.append(f"clean accuracy {_pct(clean_acc)}")
        facts.append(info.where)
        gr.Markdown(" · ".join(facts), elem_id="rws-facts")

        # Rendered in the right-hand column; made first so the examples can set it.
        chosen = gr.Dropdown(
            names,
            value=[],
            multiselect=True,
            label="Signatures to patch in",
            info="one slider per signature sets its strength α",
            elem_id="rws-signatures",
            render=False,
        )

        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=260):
                image = upload_image(
                    label="Your image (any size or format)",
                    sources=["upload", "clipboard"],
                    height=240,
                    elem_id="rws-image",
                )
                with gr.Row():
                    corruption = gr.Dropdown(
                        [NO_CORRUPTION, *ALL_CORRUPTIONS],
                        value=NO_CORRUPTION,
                        label="Corrupt it here",
                        scale=3,
                        elem_id="rws-corruption",
                    )
                    severity = gr.Slider(
                        1, 5, value=5, step=1, label="Severity", scale=2, elem_id="rws-severity"
                    )
                examples = info.examples
                if examples:
                    gr.Examples(
                        examples=[[p] for p in examples],
                        inputs=[image],
                        fn=lambda path: _suggested(path, names),
                        outputs=[chosen],
                        run_on_click=True,
                        cache_examples=False,
                        examples_per_page=12,
                        label="Examples: test images of the model's data set, some corrupted",
                        elem_id="rws-examples",
                    )
            with gr.Column(scale=3, min_width=220):
                seen = gr.Image(
                    label="What the model sees",
                    interactive=False,
                    format="png",
                    height=240,
                    elem_id="rws-seen",
                    buttons=[],
                )
                summary = gr.Markdown(
                    START_HINT,
                    label="Summary",
                    elem_id="rws-summary",
                )
            with gr.Column(scale=5, min_width=300):
                auto = gr.Checkbox(
                    label="auto: let a corruption detector choose",
                    value=False,
                    info=None if info.auto else "this model has no detector yet",
                    elem_id="rws-auto",
                )
                chosen.render()
                sliders = [
                    gr.Slider(
                        0.0,
                        slider_max,
                        value=info.defaults[n],
                        step=0.05,
                        label=f"α · {n}",
                        info=_slider_info(info, n),
                        visible=False,
                        elem_id=f"rws-alpha-{n}",
                    )
                    for n in names
                ]
                mix_box = gr.Textbox(
                    label="Mix sent to the model",
                    placeholder="(empty: the clean model)",
                    info="name:α pairs, or auto; edit and press Enter",
                    max_lines=1,
                    elem_id="rws-mix",
                )
                run = gr.Button("Classify", variant="primary", elem_id="rws-run")

        with gr.Row(equal_height=True):
            clean_out = gr.Label(
                num_top_classes=TOP_K, label="Clean model (top 5)", elem_id="rws-clean"
            )
            patched_out = gr.Label(
                num_top_classes=TOP_K, label="Patched model (top 5)", elem_id="rws-patched"
            )
        with gr.Accordion("Details (the raw answers)", open=False):
            details = gr.JSON(label="Details", elem_id="rws-details")
        if names and (info.metrics or {}).get("corruptions"):
            with gr.Accordion(
                "What each signature buys (accuracy on the corrupted test set)", open=False
            ):
                gr.Dataframe(
                    value=_metrics_rows(info),
                    headers=["signature", "backbone", "patched", "gain (pts)", "default α"],
                    interactive=False,
                    elem_id="rws-metrics",
                )

        # -- events -------------------------------------------------------------------------

        outputs = [seen, clean_out, patched_out, summary, details]
        inputs = [image, mix_box, corruption, severity]
        # One queue for every prediction: answers arrive in the order the page asked.
        shared = {"concurrency_id": "predict", "concurrency_limit": 1}

        run.click(
            predict,
            inputs,
            outputs,
            api_name="predict",
            api_description="Top-5 of the clean and of the patched model. signatures: "
            "'name:alpha,...', 'auto' or ''. corruption: 'none' or a corruption name; "
            "severity 1..5.",
            **shared,
        )
        compose_io = {"inputs": [auto, chosen, *sliders], "outputs": [*sliders, mix_box, chosen]}
        for control in (chosen, auto):
            control.change(compose, api_visibility="private", **compose_io).then(
                live_predict, inputs, outputs, api_visibility="private", **shared
            )
        for slider in sliders:  # dragging, or typing a number into the slider's box
            slider.change(
                compose, api_visibility="private", trigger_mode="always_last", **compose_io
            ).then(live_predict, inputs, outputs, api_visibility="private", **shared)
        gr.on(
            [image.change, corruption.change, severity.release, mix_box.submit],
            live_predict,
            inputs,
            outputs,
            api_visibility="private",
            trigger_mode="always_last",
            **shared,
        )
        # API-only endpoints (hidden buttons keep the page clean).
        corrupt_btn = gr.Button(visible=False)
        corrupt_btn.click(
            corrupt_preview,
            [image, corruption, severity],
            seen,
            api_name="corrupt",
            api_description="The image the model would see: resized, optionally corrupted.",
        )
        info_btn = gr.Button(visible=False)
        info_json = gr.JSON(label="Info", visible=False)
        info_btn.click(
            describe,
            None,
            info_json,
            api_name="info",
            api_description="The model, its signatures and what each one buys.",
        )
    return app


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Start ``app`` on ``host:port`` with the demo's theme and limits; returns the URL.

    With ``block=False`` the server runs in a background thread (stop it with
    ``app.close()``)."""
    app.queue(default_concurrency_limit=4)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        share=False,
        show_error=False,
        max_file_size=LIMITS.max_body_bytes,
        footer_links=["api"],
        theme=THEME,
        css=CSS,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
    )
    if not quiet:
        print(f"rws demo: serving {app.title!r} at {url}", flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return url


def make_backend(
    model: str | Path | None = None,
    server: str | None = None,
    token_file: str | Path | None = None,
    device: str | None = None,
    management_url: str | None = None,
) -> Backend:
    """The backend for the command-line options: a REST client of ``server`` (with the keys
    from ``token_file``), else the engine on ``model`` (default: the embedded model, which
    exists only in a checkout: elsewhere a folder is needed)."""
    if server:
        token = mgmt = None
        if token_file:
            token, mgmt = read_token_file(token_file)
        return RestBackend(
            server,
            token=token,
            management_token=mgmt,
            management_url=management_url,
            folder=model if model and Path(model, "config.json").is_file() else None,
        )
    folder = resolve_folder(model, "rws demo")
    return LocalBackend.from_folder(folder, device=device)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``rws demo`` / ``python -m rws_hub.integrations.gradio_app`` /
    ``python demo/app.py``."""
    p = argparse.ArgumentParser(
        prog="rws demo",
        description="The Robust Weight Signatures web demo (Gradio).",
    )
    p.add_argument(
        "folder", nargs="?", default=None, help="model folder (the same as --model FOLDER)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--model",
        default=None,
        help=f"model folder (default {DEFAULT_FOLDER} in a checkout); with --server, "
        "read for the signature list if the server does not give it",
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="be a client of a running `rws serve`: http://host:8080 or "
        "http://host:8080/predictions/<model>",
    )
    p.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help="TorchServe key_file.json (or a file holding the inference key) for --server",
    )
    p.add_argument(
        "--management-url",
        default=None,
        metavar="URL",
        help="the server's management API, read for the signature list (default: the "
        "inference port + 1)",
    )
    p.add_argument("--device", default=None, help="engine device (default: CUDA if present)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, build the backend and the page, serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folder is not None:
        if args.model is not None and Path(args.model) != Path(args.folder):
            parser.error("give the model folder once: FOLDER or --model FOLDER")
        args.model = args.folder
    try:
        backend = make_backend(
            args.model, args.server, args.token_file, args.device, args.management_url
        )
    except (RWSError, OSError, ValueError) as exc:
        print(f"rws demo: error: {exc}", file=sys.stderr)
        return 2
    app = build_app(backend)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            launch(app, host=args.host, port=args.port)
    except OSError as exc:  # port in use, address not available
        print(f"rws demo: error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
