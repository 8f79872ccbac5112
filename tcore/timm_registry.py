"""T-CoRe backbones in timm's registry: after `import tcore`,

    timm.create_model("tcore_vits16.k400", pretrained=True)   # also .in1k, and tcore_vitb16.k400
    timm.list_models("tcore*", pretrained=True)

build the same modules as `tcore.tcore_vits16(...)`, with pretrained cfgs per release tag (Hub repo
and file, preprocessing for dense features, licence, paper) that `timm.data.resolve_data_config`
reads.

`tcore` imports this module as soon as timm is imported (`tcore._timm_hook`), possibly while
`tcore.architecture` itself is being imported. So at import time it needs only timm's registry and
the release table (`tcore.weights`, no torch); the model code is imported when a model is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timm.models import generate_default_cfgs, register_model

from .weights import get_pretrained, list_models, release_cfg

if TYPE_CHECKING:
    from .backbone import TCoReBackbone

__all__ = ["default_cfgs"]  # timm's register_model appends the entrypoints

default_cfgs = generate_default_cfgs({name: release_cfg(get_pretrained(name)) for name in list_models()})


def _create(arch: str, pretrained: bool, **kwargs: Any) -> TCoReBackbone:
    from .models import create_registered_model  # the model code, on first use (see the module docstring)

    return create_registered_model(arch, pretrained, **kwargs)


@register_model
def tcore_vits16(pretrained: bool = False, **kwargs: Any) -> TCoReBackbone:
    """T-CoRe ViT-S/16 (4 registers); tags .k400 (default, Kinetics-400) and .in1k (ImageNet-1k)."""
    return _create("tcore_vits16", pretrained, **kwargs)


@register_model
def tcore_vitb16(pretrained: bool = False, **kwargs: Any) -> TCoReBackbone:
    """T-CoRe ViT-B/16 (4 registers); tag .k400 (Kinetics-400)."""
    return _create("tcore_vitb16", pretrained, **kwargs)
