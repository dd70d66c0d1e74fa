"""Where the launchers find what they start: the installed package, its adapters, the model folder.

Everything is found from the *running* ``rws_hub`` package (a wheel in site-packages or a source
checkout alike), never from the working directory's layout, except the embedded default model
folder, which exists only in a checkout of rws-hub.

* :func:`package_dir`: the directory of the running ``rws_hub`` package;
* :func:`handler_file`: the TorchServe handler shipped in the package
  (``rws_hub/integrations/torchserve_handler.py``), found by path so that nothing here imports
  TorchServe;
* :data:`DEMO_MODULE`: the Gradio app's module, run as ``python -m rws_hub.integrations.gradio_app``;
* :func:`checkout_root` / :func:`default_folder` / :func:`resolve_folder`: the embedded default
  entry's folder (:data:`rws_hub.zoo.entries.DEFAULT_ENTRY`) and the one rule for "no folder
  given".
"""

from __future__ import annotations

from pathlib import Path

from rws_hub.zoo.entries import DEFAULT_ENTRY

__all__ = [
    "DEFAULT_FOLDER",
    "DEMO_MODULE",
    "checkout_root",
    "default_folder",
    "handler_file",
    "package_dir",
    "resolve_folder",
]

DEFAULT_FOLDER = Path(DEFAULT_ENTRY.folder)
"""The embedded default model folder (relative to the repository root)."""

DEMO_MODULE = "rws_hub.integrations.gradio_app"
"""The web demo's module (``python -m`` runs it; ``--help`` lists its options)."""


def package_dir() -> Path:
    """The directory of the running ``rws_hub`` package (site-packages or a checkout)."""
    return Path(__file__).resolve().parents[1]  # rws_hub/launch/locations.py


def handler_file() -> Path:
    """The TorchServe handler module shipped in the package."""
    return package_dir() / "integrations" / "torchserve_handler.py"


def checkout_root() -> Path | None:
    """The source checkout the running package lives in, or None when it is installed (a
    checkout has ``pyproject.toml`` and ``handlers/`` next to ``rws_hub/``)."""
    root = package_dir().parent
    if (root / "pyproject.toml").is_file() and (root / "handlers").is_dir():
        return root
    return None


def default_folder() -> Path:
    """The embedded default model folder (:data:`DEFAULT_FOLDER`) of the working
    directory when it is there, else of the checkout this package lives in; outside a checkout
    the relative path itself (which then does not exist: see :func:`resolve_folder`)."""
    if DEFAULT_FOLDER.is_dir():
        return DEFAULT_FOLDER
    root = checkout_root()
    return root / DEFAULT_FOLDER if root is not None else DEFAULT_FOLDER


def resolve_folder(folder: str | Path | None, command: str = "rws serve") -> Path:
    """The model folder to use: ``folder`` when given, else the embedded default.

    Raises FileNotFoundError with a message that says what to do: pass a folder (outside a
    checkout there is no embedded default) or build the default."""
    if folder is not None:
        path = Path(folder)
        if not (path / "config.json").is_file():
            what = "not found" if not path.exists() else "not a model folder (no config.json)"
            raise FileNotFoundError(f"model folder {path}: {what}")
        return path
    path = default_folder()
    if (path / "config.json").is_file():
        return path
    if checkout_root() is None and not DEFAULT_FOLDER.exists():
        raise FileNotFoundError(
            f"no model folder given: pass one ({command} path/to/model-folder); the embedded "
            f"default {DEFAULT_FOLDER} ships only with a checkout of rws-hub"
        )
    raise FileNotFoundError(
        f"model folder {path} not found (the embedded default; build it or pass a model folder)"
    )
