"""The rws-hub web demo (Gradio), for a checkout: ``python demo/app.py [FOLDER] [options]``.

The app ships in the package as :mod:`rws_hub.integrations.gradio_app` (``rws demo`` and ``rws
up`` run that module; import its API from there); this file keeps the checkout's entry point.
``--help`` lists the options.
"""

from __future__ import annotations

import sys

from rws_hub.integrations.gradio_app import main

if __name__ == "__main__":
    sys.exit(main())
