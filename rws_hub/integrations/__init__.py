"""Adapters of the serving engine to outside frameworks, shipped with the package.

* :mod:`rws_hub.integrations.torchserve_handler`: the TorchServe handler (``rws serve``
  archives it; the only module of the package that imports ``ts``);
* :mod:`rws_hub.integrations.gradio_app`: the Gradio web demo (``rws demo``, ``python -m
  rws_hub.integrations.gradio_app``; the only module that imports ``gradio``), with its example
  images in ``rws_hub/integrations/examples/``.

This package's ``__init__`` imports neither framework: import the module you need (each needs
its extra: ``pip install 'rws-hub[serve]'`` or ``'rws-hub[demo]'``).
"""
