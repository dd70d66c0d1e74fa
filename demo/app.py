"""The rws-hub web demo (Gradio), for a checkout: ``python demo/app.py [FOLDER] [options]``.

The app ships in the package as :mod:`rws_hub.integrations.gradio_app` (``rws demo`` and ``rws
up`` run that module); this file keeps the checkout's entry point and re-exports its API
(``from demo.app import LocalBackend, build_app, launch``). ``--help`` lists the options.
"""

from __future__ import annotations

import sys

from rws_hub.integrations.gradio_app import (
    DEFAULT_MODEL,
    Backend,
    LocalBackend,
    ModelInfo,
    RestBackend,
    build_app,
    build_parser,
    launch,
    main,
    make_backend,
    read_token_file,
)

__all__ = [
    "DEFAULT_MODEL",
    "Backend",
    "LocalBackend",
    "ModelInfo",
    "RestBackend",
    "build_app",
    "build_parser",
    "launch",
    "main",
    "make_backend",
    "read_token_file",
]

if __name__ == "__main__":
    sys.exit(main())
