"""`tcore app`: a local web app to propagate masks through a video and look at its features.

Needs the `app` extra (`pip install "tcore[app]"`, Gradio). `launch` is what `tcore app` runs;
`build_app` gives the Gradio page for other hosts, e.g. a Hugging Face Space (see `space.py`).
"""
from __future__ import annotations

import os

__all__ = ["build_app", "launch"]


def build_app(model: str | None = None, device: str | None = None):
    """The Gradio page (see `tcore.app.ui.build_app`)."""
    from .ui import build_app as build

    return build(model=model, device=device)


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, model: str | None = None,
           device: str | None = None) -> None:
    """Serve the app until interrupted, printing its URL.

    Args:
        host: address to listen on; the default serves this machine only.
        port: port to listen on.
        share: also publish a temporary public link through Gradio's share servers.
        model: the model selected when the page opens (any `model=` string, or "random:tcore_vits16").
        device: the device selected when the page opens (None: the best available).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    from .ui import build_app as build, launch_options

    page = build(model=model, device=device)
    page.queue().launch(server_name=host, server_port=port, share=share, show_error=True, ssr_mode=False,
                        inbrowser=False, **launch_options())
