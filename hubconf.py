"""torch.hub entry points: `torch.hub.load("yafeng19/T-CORE", "tcore_vits16", trust_repo=True)`.

From a clone: `torch.hub.load("path/to/clone", "tcore_vits16", source="local", pretrained=False)`.
"""
dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

from tcore.models import tcore_vitb16, tcore_vits16  # noqa: E402,F401
