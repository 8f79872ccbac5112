"""A Hugging Face Space entry point (`python -m tcore.app.space` runs it): a Space's `app.py` is

    from tcore.app.space import demo, launch_options
    demo.launch(**launch_options())

(requirements.txt: `tcore[app] @ git+https://github.com/yafeng19/T-CORE`). Spaces set the
server address and port through GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from . import build_app  # noqa: E402
from .ui import launch_options  # noqa: E402

__all__ = ["demo", "launch_options"]

demo = build_app(model=os.environ.get("TCORE_MODEL"), device=os.environ.get("TCORE_DEVICE"))

if __name__ == "__main__":
    demo.queue().launch(**launch_options())
