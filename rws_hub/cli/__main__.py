"""``python -m rws_hub.cli``: the ``rws`` command line without its console script."""

from __future__ import annotations

import sys

from rws_hub.cli import main

if __name__ == "__main__":
    sys.exit(main())
