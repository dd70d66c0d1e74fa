"""TorchServe handler for rws-hub (the TorchServe convention: one handler file per archive).

The handler ships in the package as :mod:`rws_hub.integrations.torchserve_handler` (``rws serve``
archives that file). This file is for archives made by hand with ``torch-model-archiver
--handler handlers/rws_handler.py`` where ``rws_hub`` is importable in the worker (installed, or
added with ``--extra-files``). TorchServe takes the one class *defined* in a handler module,
so it subclasses the packaged handler instead of importing it; see
``rws_hub/integrations/torchserve_handler.py`` for the request format and the settings.
"""

from __future__ import annotations

from rws_hub.integrations import torchserve_handler


class RWSHandler(torchserve_handler.RWSHandler):
    """Serves a model folder (see :class:`rws_hub.integrations.torchserve_handler.RWSHandler`)."""
