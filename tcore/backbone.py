"""The public backbones: the networks of `tcore.architecture`, able to load a checkpoint at
construction (`pretrained=`) and to live on the Hugging Face Hub (`save_pretrained`,
`from_pretrained`, `push_to_hub`, a generated model card) through `PyTorchModelHubMixin`.

`from_pretrained` is strict and loud like every tcore loader: the weights go through
`tcore.checkpoint.load_checkpoint`, and an offline, uncached repo says how to fix it. The folder
format (one `config.json` for tcore and timm) is `tcore.hub`'s.
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
from .architecture import TCoReViT, TimmViT, takes_tcore_args
from .checkpoint import CheckedStateDict, check_state_dict, convert_state_dict, load_checkpoint
from .errors import CheckpointError, InvalidInputError
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
    tags=["tcore", "timm", "vision-transformer", "self-supervised-learning", "video", "dense-features",
          "label-propagation", f"arxiv:{PAPER['arxiv']}"],
)


class _HubBackbone(nn.Module, PyTorchModelHubMixin):
    """The Hub side shared by both backbones (`save_pretrained` writes the config.json of
    `tcore.hub`, `from_pretrained` reads it back); each backbone builds itself in `_from_folder`."""

    _architecture: str  # the config.json "backbone" a class reads (subclasses of it inherit it)
    release: str | None = None  # the release whose weights this model started from ("tcore_vits16.k400")

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
        card = {"config": full, "where": pushed_to or str(save_directory), "on_hub": pushed_to is not None,
                **(model_card_kwargs or {})}
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
        card = {"where": repo_id, "on_hub": True, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, config=config, model_card_kwargs=card, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        hub.write_weights(self._weights_state(), save_directory)

    def _weights_state(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def generate_model_card(self, *args: Any, config: Mapping[str, Any] | None = None, where: str | None = None,
                            on_hub: bool = False, **kwargs: Any) -> ModelCard:
        """The README.md: what the model is, how to install and use it, the paper's numbers, provenance."""
        return hub.model_card(self._hub_mixin_info.model_card_data, config or hub.backbone_config(self), where,
                              on_hub)

    @classmethod
    def from_pretrained(cls: type[_B], pretrained_model_name_or_path: str | Path, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | Path | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        **model_kwargs: Any) -> _B:
        """A backbone written by `save_pretrained`, from a folder or a Hub repo `org/name`, strictly.

        Args:
            pretrained_model_name_or_path: folder or Hub repo id.
            force_download, token, cache_dir, local_files_only, revision: as
                `huggingface_hub.hf_hub_download` (for a Hub repo; a folder is read as it is).
            **model_kwargs: constructor arguments that override the saved ones (e.g. drop_path_rate;
                timm's constructor arguments for a `TimmViTBackbone`).

        Raises:
            MissingFileError / WeightsUnavailableError: nothing there, or offline and not cached.
            CheckpointError: another kind of backbone, a config.json that is not valid, or weights
            that do not match the config.
        """
        folder = hub.fetch_folder(pretrained_model_name_or_path, revision=revision, force_download=force_download,
                                  cache_dir=None if cache_dir is None else str(cache_dir),
                                  local_files_only=local_files_only, token=token)
        config = hub.read_config(folder)
        if config["backbone"] != cls._architecture:
            raise CheckpointError(f"{folder}: holds a {config['backbone']} backbone, not a {cls._architecture}; "
                                  "use tcore.load_backbone()")
        return cls._from_folder(folder, config, model_kwargs)

    @classmethod
    def _from_folder(cls: type[_B], folder: Path, config: Mapping[str, Any], model_kwargs: dict[str, Any]) -> _B:
        """The backbone of a fetched `save_pretrained` folder (`config`: its checked config.json)."""
        raise NotImplementedError


class TCoReBackbone(TCoReViT, _HubBackbone, **_HUB_METADATA):
    """T-CoRe's ViT (a timm `VisionTransformer`, see `tcore.architecture.TCoReViT`), in eval mode.

    Args:
        pretrained: None for random weights, or a checkpoint loaded strictly: an official `.pth`,
            a `.safetensors` file, a `save_pretrained` folder, or a state dict. (Release tags and
            Hub repos: `tcore.tcore_vits16(pretrained=True, weights=...)`, `from_pretrained`.)
        **kwargs: the architecture (the fields of `tcore.architecture.TCoReArgs`: embed_dim,
            depth, num_heads, ...) and timm `VisionTransformer` arguments, as `TCoReViT`.

    Example:
        >>> model = tcore.TCoReBackbone(embed_dim=64, depth=2, num_heads=2)  # any size (tests, training)
        >>> model.save_pretrained("tiny/")
        >>> again = tcore.TCoReBackbone.from_pretrained("tiny/")
    """

    _architecture = "TCoReBackbone"

    @takes_tcore_args
    def __init__(self, *, pretrained: Pretrained | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if pretrained is not None:
            self.load_checkpoint(pretrained)

    def load_checkpoint(self, pretrained: Pretrained) -> None:
        """Load a file, a `save_pretrained` folder or a state dict into this backbone, strictly.

        Raises:
            FileNotFoundError: no such file. CheckpointError: unreadable or mismatching weights (the
            message names the file, the expected and the found architecture).
        """
        if isinstance(pretrained, (str, os.PathLike)) and Path(pretrained).is_dir():
            config = hub.read_config(pretrained)
            if config["backbone"] != self._architecture:
                raise CheckpointError(f"{pretrained}: holds a {config['backbone']} backbone, not a "
                                      f"{self._architecture}; use tcore.load_backbone()")
            pretrained = Path(pretrained) / hub.WEIGHTS_NAME
        load_checkpoint(self, pretrained)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> Any:
        """`nn.Module.load_state_dict` that also takes the official layouts (what timm's
        `load_checkpoint(model, file)` and `create_model(..., checkpoint_path=file)` pass on):
        {"teacher": {"backbone.*", ...}}, official parameter names, wrapper prefixes. Strict loading
        is tcore's: a mismatch is a CheckpointError naming the keys (or the architecture)."""
        state = state_dict
        if not isinstance(state_dict, CheckedStateDict):  # tcore's loaders have checked theirs
            state = convert_state_dict(state_dict, "state dict")
            if strict:
                check_state_dict(self, state, "state dict")
        return super().load_state_dict(state, strict=strict, assign=assign)

    @classmethod
    def _from_folder(cls: type[_B], folder: Path, config: Mapping[str, Any], model_kwargs: dict[str, Any]) -> _B:
        model = cls(**{**config["model_args"], **model_kwargs})
        load_checkpoint(model, folder / hub.WEIGHTS_NAME)
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get("pretrained_cfg", {}).items()}
        model.pretrained_cfg = {**saved, "file": str(folder)}  # JSON lists back to timm's tuples
        model.release = config.get("release")
        return model


class TimmViTBackbone(TimmViT, _HubBackbone, **_HUB_METADATA):
    """Any timm `VisionTransformer` (DINO, DINOv2, ...) behind tcore's feature API (see
    `tcore.architecture.TimmViT`), savable like a T-CoRe backbone. Build it with `tcore.load_backbone`.
    """

    def _weights_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    _architecture = "TimmViTBackbone"

    def _save_pretrained(self, save_directory: Path) -> None:
        self._check_rebuildable()
        super()._save_pretrained(save_directory)

    def _check_rebuildable(self) -> None:
        """Refuse to save what `from_pretrained` could not build again: the network that config.json's
        name and arguments describe (built on the meta device) must have this network's parameters.

        Raises:
            InvalidInputError: a parameter is missing, extra or of another shape; names the first few.
        """
        with torch.device("meta"):
            rebuilt = _build_timm_net(self.timm_name or "VisionTransformer", self.timm_kwargs).state_dict()
        have = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        want = {k: tuple(v.shape) for k, v in rebuilt.items()}
        differ = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
        if differ:
            shown = ", ".join(f"{k} {have.get(k, 'absent')} vs {want.get(k, 'absent')}" for k in differ[:4])
            raise InvalidInputError(
                f"save_pretrained: this {self.timm_name or 'VisionTransformer'} cannot be described by timm "
                f"arguments tcore records ({self.timm_kwargs}); rebuilt from them it differs at {len(differ)} "
                f"parameter(s): {shown}; save its state_dict with torch.save and load it with "
                "tcore.load_backbone(<the same timm model>, checkpoint=<file>)")

    @classmethod
    def _from_folder(cls: type[_B], folder: Path, config: Mapping[str, Any], model_kwargs: dict[str, Any]) -> _B:
        name = config["architecture"]  # "VisionTransformer": built from a file's shapes, not a registered name
        kwargs = {**config["model_args"], **model_kwargs}
        net = _build_timm_net(name, kwargs)
        load_checkpoint(net, folder / hub.WEIGHTS_NAME)
        return cls(net, config["pos_interp"], name=name, model_kwargs=kwargs)


def _build_timm_net(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """timm's network `name` ("VisionTransformer": the class itself) with random weights."""
    import timm

    if name == "VisionTransformer":
        return timm.models.VisionTransformer(**kwargs)
    return timm.create_model(name, pretrained=False, **kwargs)
