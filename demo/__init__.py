"""The rws-hub web demo (Gradio); see ``demo/app.py``."""
