"""The rws-hub web demo (Gradio) in a checkout: ``demo/app.py`` runs the packaged app
(:mod:`rws_hub.integrations.gradio_app`); ``demo/make_examples.py`` rebuilds its examples."""
