"""The public backbones: the networks of `tcore.architecture`, able to load a checkpoint at
construction (`pretrained=`) and to live on the Hugging Face Hub (`save_pretrained`,
`from_pretrained`, `push_to_hub`, a generated model card) through `PyTorchModelHubMixin`.

`from_pretrained` is strict and loud like every tcore loader: the weights go through
`tcore.checkpoint.load_checkpoint`, and an offline, uncached repo says how to fix it.
"""
from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from . import hub
from .architecture import TCoReViT, TimmViT
from .checkpoint import load_checkpoint
from .weights import PAPER

__all__ = ["TCoReBackbone", "TimmViTBackbone", "Pretrained"]

# a checkpoint given to a constructor: a file, a save_pretrained folder, or a state dict
Pretrained = str | os.PathLike | Mapping[str, torch.Tensor]
_B = TypeVar("_B", bound="_HubBackbone")

_HUB_METADATA: dict[str, Any] = dict(
    library_name="tcore",
    license="apache-2.0",
    repo_url=PAPER["code"],
    paper_url=PAPER["url"],
    pipeline_tag="image-feature-extraction",
    tags=["tcore", "vision-transformer", "self-supervised-learning", "video", "dense-features",
          "label-propagation", f"arxiv:{PAPER['arxiv']}"],
)


class _HubBackbone(nn.Module, PyTorchModelHubMixin):
    """The Hub side shared by both backbones (`save_pretrained` writes tcore's config.json,
    `from_pretrained` reads it back); each backbone builds itself from a folder in `_from_folder`."""

    _architecture: str  # the config.json "architecture" a class reads (subclasses of it inherit it)

    def save_pretrained(self, save_directory: str | Path, *, config: Any = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict[str, Any] | None = None,
                        **push_to_hub_kwargs: Any) -> str | None:
        """Write `config.json`, `model.safetensors` and a model card `README.md` (kept if present).

        Args:
            save_directory: folder to create or fill.
            config: JSON-serialisable extras stored in `config.json`, a dict or a dataclass (e.g.
                {"source": ..., "source_sha256": ...}); the architecture and preprocessing entries are tcore's.
            repo_id, push_to_hub, model_card_kwargs, **push_to_hub_kwargs: as
                `huggingface_hub.PyTorchModelHubMixin.save_pretrained`.

        Returns:
            The commit url when pushed, else None.
        """
        extra = asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config or {})
        full = {**hub.backbone_config(self), **extra}
        pushed_to = repo_id or (Path(save_directory).name if push_to_hub else None)  # the mixin's default
        card = {"config": full, "repo_id": pushed_to, **(model_card_kwargs or {})}
        return super().save_pretrained(save_directory, config=full, repo_id=repo_id, push_to_hub=push_to_hub,
                                       model_card_kwargs=card, **push_to_hub_kwargs)

    def push_to_hub(self, repo_id: str, *, config: Any = None,  # type: ignore[override]
                    model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """Save (see `save_pretrained`) and upload to the Hub repo `repo_id`; the card's usage names it.

        Args:
            repo_id: "org/name", created if needed.
            config, model_card_kwargs, **kwargs: as `huggingface_hub.PyTorchModelHubMixin.push_to_hub`.

        Returns:
            The url of the commit.
        """
        card = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, config=config, model_card_kwargs=card, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        hub.write_weights(self._weights_state(), save_directory)

    def _weights_state(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def generate_model_card(self, *args: Any, config: Mapping[str, Any] | None = None, repo_id: str | None = None,
                            **kwargs: Any) -> ModelCard:
        """The README.md: what the model is, the paper's numbers, usage and provenance."""
        return hub.model_card(self._hub_mixin_info.model_card_data, config or hub.backbone_config(self), repo_id)

    @classmethod
    def from_pretrained(cls: type[_B], pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        **model_kwargs: Any) -> _B:
        """A backbone written by `save_pretrained`, from a folder or a Hub repo `org/name`, strictly.

        Args:
            pretrained_model_name_or_path: folder or Hub repo id.
            force_download, cache_dir, revision: as `huggingface_hub.hf_hub_download`.
            **model_kwargs: constructor arguments that override the saved ones (e.g. drop_path_rate;
                timm's constructor arguments for a `TimmViTBackbone`).

        Raises:
            FileNotFoundError / WeightsUnavailableError: nothing there, or offline and not cached.
            CheckpointError: another kind of backbone, or weights that do not match the config.
        """
        if token is not None or local_files_only:
            raise ValueError("token= and local_files_only= are not used by tcore: log in with `hf auth login` "
                             "and set HF_HUB_OFFLINE=1 for cached files only")
        folder = hub.fetch_folder(pretrained_model_name_or_path, revision=revision, force_download=force_download,
                                  cache_dir=None if cache_dir is None else str(cache_dir))
        config = hub.read_config(folder)
        return cls._from_folder(folder, config, hub.weights_file(folder, cls._architecture), model_kwargs)

    @classmethod
    def _from_folder(cls: type[_B], folder: Path, config: Mapping[str, Any], weights: Path,
                     model_kwargs: dict[str, Any]) -> _B:
        """The backbone of a fetched `save_pretrained` folder (`weights`: its checked weights file)."""
        raise NotImplementedError


class TCoReBackbone(TCoReViT, _HubBackbone, **_HUB_METADATA):
    """T-CoRe's ViT (a timm `VisionTransformer`, see `tcore.architecture.TCoReViT`), in eval mode.

    Args:
        embed_dim, depth, num_heads, patch_size, num_register_tokens, mlp_ratio, img_size,
            layerscale_init, drop_path_rate, **kwargs: the architecture, as `TCoReViT`.
        pretrained: None for random weights, or a checkpoint loaded strictly: an official `.pth`,
            a `.safetensors` file, a `save_pretrained` folder, or a state dict. (Release tags and
            Hub repos: `tcore.tcore_vits16(pretrained=True, weights=...)`, `from_pretrained`.)

    Example:
        >>> model = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2)  # any size (tests, training)
        >>> model.save_pretrained("tiny/")
        >>> again = tcore.TCoReBackbone.from_pretrained("tiny/")
    """

    _architecture = "TCoReBackbone"

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 16,
        num_register_tokens: int = 4,
        mlp_ratio: float = 4.0,
        img_size: int | tuple[int, int] = 224,
        layerscale_init: float = 1e-5,
        drop_path_rate: float = 0.0,
        pretrained: Pretrained | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size,
                         num_register_tokens=num_register_tokens, mlp_ratio=mlp_ratio, img_size=img_size,
                         layerscale_init=layerscale_init, drop_path_rate=drop_path_rate, **kwargs)
        if pretrained is not None:
            self.load_checkpoint(pretrained)

    def load_checkpoint(self, pretrained: Pretrained) -> None:
        """Load a file, a `save_pretrained` folder or a state dict into this backbone, strictly.

        Raises:
            FileNotFoundError: no such file. CheckpointError: unreadable or mismatching weights (the
            message names the file, the expected and the found architecture).
        """
        if isinstance(pretrained, (str, os.PathLike)) and Path(pretrained).is_dir():
            pretrained = hub.weights_file(pretrained, self._architecture)
        load_checkpoint(self, pretrained)

    @classmethod
    def _from_folder(cls: type[_B], folder: Path, config: Mapping[str, Any], weights: Path,
                     model_kwargs: dict[str, Any]) -> _B:
        model = cls(**{**config["model_args"], **model_kwargs})
        load_checkpoint(model, weights)
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get("pretrained_cfg", {}).items()}
        model.pretrained_cfg = {**saved, "file": str(folder)}  # JSON lists back to timm's tuples
        return model


class TimmViTBackbone(TimmViT, _HubBackbone, **_HUB_METADATA):
    """Any timm `VisionTransformer` (DINO, DINOv2, ...) behind tcore's feature API (see
    `tcore.architecture.TimmViT`), savable like a T-CoRe backbone. Build it with `tcore.load_backbone`.
    """

    def _weights_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    _architecture = "TimmViTBackbone"

    @classmethod
    def _from_folder(cls: type[_B], folder: Path, config: Mapping[str, Any], weights: Path,
                     model_kwargs: dict[str, Any]) -> _B:
        import timm

        args = config["model_args"]
        kwargs = {**args.get("timm_kwargs", {}), **model_kwargs}
        name = args["timm_name"]  # "VisionTransformer": built from a file's shapes, not a registered name
        net: nn.Module = (timm.models.VisionTransformer(**kwargs) if name == "VisionTransformer"
                          else timm.create_model(name, pretrained=False, **kwargs))
        load_checkpoint(net, weights)
        return cls(net, config["pos_interp"], name=name, model_kwargs=kwargs)

