"""The HTTP service (`miga-fast serve`, extra `[service]`): OpenAI-style video jobs with live frame streams and a
web page, over one loaded model; jobs persisted so a restarted server finishes them. See `app.py`."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
