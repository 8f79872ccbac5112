"""Released T-CoRe weights: the registry (what each release tag is, how its input is prepared, the
paper's numbers) and downloads through the Hugging Face cache.

No torch here: the registry is data, and `tcore download` / `tcore models` need nothing else.
`weights=` means a release tag ("k400", "in1k") everywhere in tcore.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__
from .constants import IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError, InvalidInputError, WeightsUnavailableError
from .files import sha256sum

__all__ = [
    "HF_REPO",
    "PAPER",
    "PaperScores",
    "Preprocessing",
    "PretrainedWeights",
    "default_tag",
    "download",
    "fetch_file",
    "get_pretrained",
    "hub_unreachable",
    "list_models",
    "list_tags",
    "pinned_releases",
    "release_cfg",
]

_logger = logging.getLogger(__name__)

HF_REPO = "yafeng19/T-CORE"
PAPER = dict(
    name="When the Future Becomes the Past: Taming Temporal Correspondence for Self-supervised Video "
         "Representation Learning (CVPR 2025)",
    arxiv="2503.15096",
    url="https://arxiv.org/abs/2503.15096",
    code="https://github.com/yafeng19/T-CORE",
)


@dataclass(frozen=True)
class PaperScores:
    """Label-propagation results reported in the paper (Table 1 / Table 2), in percent."""

    davis_jf: float
    davis_j: float
    davis_f: float
    vip_miou: float
    jhmdb_pck01: float
    jhmdb_pck02: float


@dataclass(frozen=True)
class Preprocessing:
    """How T-CoRe weights expect their input, in timm's pretrained-cfg keys (what
    `timm.data.resolve_model_data_config` returns): ImageNet normalisation as in the official
    training, and for dense features the whole frame, resized bilinearly to the paper's DAVIS size
    480x880 without keeping the aspect ratio ("squash", nothing cropped). Classification with
    `timm.data.create_transform` gets the same whole, stretched frame; pass
    `input_size=(3, 224, 224)` (the pretraining crop) for a smaller one."""

    input_size: tuple[int, int, int] = (3, 480, 880)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "squash"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class PretrainedWeights:
    """One released checkpoint: where it lives, what it is, and how its input is prepared."""

    arch: str
    tag: str
    filename: str
    data: str
    epochs: int
    scores: PaperScores
    repo_id: str = HF_REPO
    revision: str | None = None  # a pinned commit sha once verified; None = the repo's main branch
    sha256: str | None = None  # checked when set; None = unverified (the file could not be opened here)
    license: str = "apache-2.0"
    license_note: str = "the official repository's licence; the Hub card states none for the weights"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    hub_datasets: tuple[str, ...] = ()  # the pretraining data as Hub dataset ids (a model card's `datasets`)

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"


_PRETRAINED: dict[str, dict[str, PretrainedWeights]] = {
    "tcore_vits16": {
        "k400": PretrainedWeights("tcore_vits16", "k400", "ckpt/vits16_400ep_K400.pth", "Kinetics-400", 400,
                                  PaperScores(64.7, 63.5, 66.0, 37.8, 47.0, 75.2),
                                  hub_datasets=("kinetics-400",)),
        "in1k": PretrainedWeights("tcore_vits16", "in1k", "ckpt/vits16_100ep_INET.pth", "ImageNet-1k", 100,
                                  PaperScores(64.1, 62.1, 66.1, 39.7, 46.2, 75.5),
                                  hub_datasets=("ILSVRC/imagenet-1k",)),
    },
    "tcore_vitb16": {
        "k400": PretrainedWeights("tcore_vitb16", "k400", "ckpt/vitb16_200ep_K400.pth", "Kinetics-400", 200,
                                  PaperScores(66.4, 64.6, 68.2, 38.9, 47.1, 75.8),
                                  hub_datasets=("kinetics-400",)),
    },
}
_DEFAULT_TAGS = {"tcore_vits16": "k400", "tcore_vitb16": "k400"}


# --------------------------------------------------------------------------------------- registry

def list_models() -> list[str]:
    """Names `arch.tag` of every released checkpoint, default tags first."""
    return [f"{arch}.{tag}" for arch in _PRETRAINED for tag in list_tags(arch)]


def list_tags(arch: str) -> list[str]:
    """Release tags of an architecture, the default first; [] for an architecture without releases."""
    tags = list(_PRETRAINED.get(arch, {}))
    return sorted(tags, key=lambda t: t != _DEFAULT_TAGS.get(arch))


def default_tag(arch: str) -> str:
    """The tag `pretrained=True` loads when `weights=` is not given."""
    if arch not in _DEFAULT_TAGS:
        raise InvalidInputError(f"unknown model {arch!r}; released weights: {', '.join(list_models())}")
    return _DEFAULT_TAGS[arch]


def get_pretrained(name: str, tag: str | None = None) -> PretrainedWeights:
    """Registry entry for `"arch"`, `"arch.tag"`, or `name="arch", tag="tag"`.

    Raises:
        ValueError: unknown architecture or tag; the message lists the valid names.
    """
    arch, _, name_tag = name.partition(".")
    if tag is not None and name_tag and tag != name_tag:
        raise InvalidInputError(f"weights: {name!r} names tag {name_tag!r} but weights={tag!r} was given")
    if arch not in _PRETRAINED:
        raise InvalidInputError(f"unknown model {name!r}; released weights: {', '.join(list_models())}")
    tag = tag or name_tag or default_tag(arch)
    if tag not in _PRETRAINED[arch]:
        raise InvalidInputError(f"weights={tag!r}: {arch} has weights {sorted(_PRETRAINED[arch])} "
                                f"(default {default_tag(arch)!r})")
    return _PRETRAINED[arch][tag]


def pinned_releases() -> dict[str, str]:
    """sha256 -> release name, for entries whose file is pinned."""
    return {e.sha256: e.name for tags in _PRETRAINED.values() for e in tags.values() if e.sha256}


def release_cfg(entry: PretrainedWeights) -> dict[str, Any]:
    """timm's pretrained cfg of a release (timm's registry entry, and what the constructors build with):
    the Hub file, the preprocessing, licence and paper."""
    return dict(
        architecture=entry.arch,
        tag=entry.tag,
        hf_hub_id=entry.repo_id + (f"@{entry.revision}" if entry.revision else ""),
        hf_hub_filename=entry.filename,
        num_classes=0,
        fixed_input_size=False,
        **asdict(entry.preprocessing),
        first_conv="patch_embed.proj",
        classifier="head",
        license=entry.license,
        description=f"T-CoRe {entry.arch}, {entry.data}, {entry.epochs} epochs (dense features; "
                    f"DAVIS-2017 J&F {entry.scores.davis_jf})",
        origin_url=PAPER["code"],
        paper_name=PAPER["name"],
        paper_ids=f"arXiv:{PAPER['arxiv']}",
    )


# --------------------------------------------------------------------------------------- download

def _offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or env.upper() in {"1", "ON", "YES", "TRUE"}


_PROBE_TIMEOUT_S = 5.0  # one request, no retries: how long an unreachable Hub may take to say so


def _hf_hub_download(repo_id: str, filename: str, *, revision: str | None, cache_dir: str | None,
                     force_download: bool = False, local_files_only: bool = False,
                     token: str | bool | None = None) -> str:
    """`huggingface_hub.hf_hub_download` tagged with this library (tests patch this one function)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                           force_download=force_download, local_files_only=local_files_only or _offline(),
                           library_name="tcore", library_version=__version__)


def hub_unreachable(repo_id: str, filename: str, revision: str | None = None,
                    token: str | bool | None = None) -> Exception | None:
    """Why the Hub cannot be reached, from one request without retries; None when it answers, or
    when HF_HUB_OFFLINE is set (nothing is asked then).

    `hf_hub_download` retries a failed connection five times with back-off (about 25 s of
    warnings) before it gives up on a file it does not have; this request tells in a moment.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    if _offline():
        return None
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision), token=token,
                             timeout=_PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return None  # the Hub answered (missing file, gated repo, ...): hf_hub_download reports it
    except (HTTPError, OSError) as err:  # connection refused, DNS failure, timeout, proxy error
        return err
    return None


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InvalidInputError(f"{repo_id!r}: not a valid Hugging Face repo id ({err}); a repo id is 'org/name' "
                                "with letters, digits, '-', '_' and '.', and a local path must exist") from err


def _unavailable_message(what: str, repo_id: str, filename: str, revision: str | None, cause: Exception,
                         fetch_command: str) -> str:
    rev = f" at revision {revision}" if revision else ""
    return (
        f"could not get {what}: {repo_id}/{filename}{rev} is not in the Hugging Face cache and cannot be "
        f"downloaded ({type(cause).__name__}: {cause}).\n"
        "Three ways to fix it:\n"
        f"  1. on a machine with internet, run `{fetch_command}` (fills the cache; "
        "then copy ~/.cache/huggingface here or point HF_HOME / HF_HUB_CACHE at it);\n"
        f"  2. download https://huggingface.co/{repo_id}/resolve/main/{filename} yourself and pass the local "
        "file: pretrained='path/to/file.pth' in Python, --model path/to/file.pth on the command line;\n"
        + ("  3. HF_HUB_OFFLINE is set: unset it if this machine is online."
           if _offline() else
           "  3. check the connection to huggingface.co (or HF_ENDPOINT for a mirror, and proxy settings).")
    )


def fetch_file(repo_id: str, filename: str, *, revision: str | None = None, cache_dir: str | None = None,
               force_download: bool = False, local_files_only: bool = False, token: str | bool | None = None,
               what: str | None = None, fetch_command: str | None = None) -> Path:
    """A file of a Hub repo through the Hugging Face cache (honours HF_HUB_OFFLINE, HF_HOME).

    A Hub that cannot be reached is found out with one request (a few seconds at most); the
    cached file is then used if there is one, without the Hub client's retries.

    Args:
        repo_id, filename, revision, cache_dir, force_download, local_files_only, token: as
            `huggingface_hub.hf_hub_download`.
        what: what the error message says could not be had (default: the repo id).
        fetch_command: the command the error message suggests (default: `hf download REPO`).

    Raises:
        InvalidInputError: `repo_id` is not a valid Hub repo id.
        WeightsUnavailableError: offline (or unreachable) and not cached; says how to fix it.
    """
    _check_repo_id(repo_id)
    offline = local_files_only or _offline()
    unreachable = None if offline else hub_unreachable(repo_id, filename, revision, token)
    try:
        return Path(_hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                                     force_download=force_download,
                                     local_files_only=offline or unreachable is not None))
    except (OSError, ConnectionError, ValueError) as err:
        # huggingface_hub raises LocalEntryNotFoundError (a FileNotFoundError), OfflineModeIsEnabled
        # (a ConnectionError) or HTTP errors (OSError); all mean "the file cannot be had now".
        raise WeightsUnavailableError(_unavailable_message(
            what or repo_id, repo_id, filename, revision, unreachable or err,
            fetch_command or f"hf download {repo_id}")) from err


def download(name: str, *, revision: str | None = None, cache_dir: str | None = None,
             force_download: bool = False) -> Path:
    """Path of a released checkpoint in the Hugging Face cache, downloading it if needed.

    When the registry pins a sha256, the file is checked against it.

    Args:
        name: `"arch"` or `"arch.tag"`, e.g. `"tcore_vits16.in1k"`.
        revision: a branch, tag or commit sha; default: the registry's pinned revision.
        cache_dir: overrides the Hugging Face cache folder.

    Raises:
        WeightsUnavailableError: offline (or unreachable) and not cached; says how to fix it.
        CheckpointError: the file's sha256 differs from the registry's.
    """
    entry = get_pretrained(name)
    revision = revision or entry.revision
    path = fetch_file(entry.repo_id, entry.filename, revision=revision, cache_dir=cache_dir,
                      force_download=force_download, what=entry.name, fetch_command=f"tcore download {entry.name}")
    if entry.sha256 is not None:
        digest = sha256sum(path)
        if digest != entry.sha256:
            raise CheckpointError(f"{path}: sha256 {digest} differs from the registry's {entry.sha256} for "
                                  f"{entry.name}; delete the file and download it again")
    else:
        _logger.info("%s: no sha256 pinned in the registry (unverified file)", entry.name)
    return path
