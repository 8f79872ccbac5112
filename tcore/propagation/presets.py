"""Protocol constants of the paper's three benchmarks, and the working size of a video
(docs/propagation-protocol.md §2 and §3.2).

A preset fixes everything the paper's numbers depend on besides the features: the frame size rule,
the propagation hyper-parameters and how predictions are resized back to the original frames.
Other settings are a preset too: `dataclasses.replace(PRESETS["davis"], topk=5, radius=12)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidInputError

__all__ = ["MAX_AUTO_TOKENS", "Preset", "PRESETS", "get_preset", "scaled_size", "working_size"]

SizeRule = Literal["short_side", "fixed", "long_side_64"]
OutputResize = Literal["floor", "pil"]

# Patch tokens per frame a size rule may give (a 128x128 grid: 2048x2048 pixels at patch 16; the
# paper's DAVIS size, 480x880, has 1650). Above it a run stops before decoding and asks for an
# explicit size: the backbone's attention grows with the square of the token count, the memory of
# its activations and of the propagation with the count (16x2000 frames at short side 480 would
# be 480x60000: 112500 tokens, minutes and 8-12 GB per frame batch). An explicit size= is obeyed.
MAX_AUTO_TOKENS = 16384


@dataclass(frozen=True)
class Preset:
    """Everything besides the features that the benchmark numbers depend on.

    Attributes:
        name: preset name.
        size_rule: "short_side" (scale the short side to `size[0]`, keep the aspect ratio),
            "fixed" (stretch to `size` = (H, W)), or "long_side_64" (long side `size[0]`, short
            side `int(short * long_target / long)` floored to a multiple of 64: VIP).
        size: the rule's numbers, in pixels.
        topk: keys kept per query.
        temperature: softmax temperature on cosine scores.
        radius: spatial radius for the short-term context, in feature-grid cells (strict <).
        n_context: previous frames in the short-term context.
        output_resize: "floor" = nearest with floor mapping, as OpenCV's INTER_NEAREST (DAVIS),
            "pil" = PIL NEAREST (the VIP evaluator).
    """

    name: str
    size_rule: SizeRule
    size: tuple[int, ...]
    topk: int = 7
    temperature: float = 0.7
    radius: float = 20
    n_context: int = 20
    output_resize: OutputResize = "floor"

    def __post_init__(self) -> None:
        rules = {"short_side": 1, "fixed": 2, "long_side_64": 1}  # numbers each size rule takes
        if self.size_rule not in rules:
            raise InvalidInputError(f"Preset.size_rule={self.size_rule!r}: expected one of {sorted(rules)}")
        size = tuple(self.size)
        if len(size) != rules[self.size_rule] or not all(isinstance(v, int) and v >= 1 for v in size):
            raise InvalidInputError(f"Preset.size={self.size!r}: size_rule {self.size_rule!r} takes "
                                    f"{rules[self.size_rule]} positive int(s) in pixels")
        if self.output_resize not in ("floor", "pil"):
            raise InvalidInputError(f"Preset.output_resize={self.output_resize!r}: expected 'floor' or 'pil'")
        object.__setattr__(self, "size", size)


PRESETS: dict[str, Preset] = {
    "default": Preset("default", "short_side", (480,)),
    "davis": Preset("davis", "fixed", (480, 880)),
    "jhmdb": Preset("jhmdb", "fixed", (320, 320)),
    "vip": Preset("vip", "long_side_64", (880,), topk=10, output_resize="pil"),
    # no paper protocol: the paper's DAVIS hyper-parameters at short side 480, aspect kept
    "ytvos": Preset("ytvos", "short_side", (480,)),
    "mose": Preset("mose", "short_side", (480,)),
}


def get_preset(preset: str | Preset | None) -> Preset:
    """The preset for `preset=` (None means "default": the paper's hyper-parameters, aspect kept)."""
    if isinstance(preset, Preset):
        return preset
    name = "default" if preset is None else preset
    if name not in PRESETS:
        raise InvalidInputError(f"preset={preset!r}: expected None or one of {sorted(PRESETS)}")
    return PRESETS[name]


def _floor_to(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def working_size(original: tuple[int, int], preset: Preset, patch_size: int,
                 size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) the frames are resized to before the backbone; both multiples of `patch_size`.

    Args:
        original: (H, W) of the video frames in pixels.
        preset: the size rule.
        patch_size: the backbone's patch size (16 for T-CoRe, 14 for DINOv2).
        size: an explicit (H, W) that overrides the preset's rule (floored to the patch size).

    Returns:
        (H', W') in pixels. Sizes the rule gives that are not multiples of the patch size (e.g.
        DAVIS's 880 for a patch-14 model) are floored to one.
    """
    if size is not None:
        if len(size) != 2 or min(size) < patch_size:
            raise InvalidInputError(f"size={size!r}: expected (H, W), each at least the patch size {patch_size}")
        return _floor_to(int(size[0]), patch_size), _floor_to(int(size[1]), patch_size)
    work = _size_by_rule(original, preset, patch_size)
    _check_tokens(work, original, preset, patch_size)
    return work


def _size_by_rule(original: tuple[int, int], preset: Preset, patch_size: int) -> tuple[int, int]:
    """(H', W') the preset's size rule gives, floored to multiples of the patch size."""
    h, w = original
    if preset.size_rule == "fixed":
        th, tw = preset.size
    elif preset.size_rule == "short_side":
        scale = preset.size[0] / min(h, w)
        th, tw = round(h * scale), round(w * scale)
    else:  # "long_side_64", the VIP rule: long side fixed, short side floored to a multiple of 64
        target = preset.size[0]
        if h >= w:
            th, tw = target, int(w * target / h) // 64 * 64
        else:
            th, tw = int(h * target / w) // 64 * 64, target
        th, tw = max(th, 64), max(tw, 64)
    return _floor_to(th, patch_size), _floor_to(tw, patch_size)


def _check_tokens(work: tuple[int, int], original: tuple[int, int], preset: Preset, patch_size: int) -> None:
    """Refuse a rule-given working size above `MAX_AUTO_TOKENS` patch tokens per frame."""
    grid = (work[0] // patch_size, work[1] // patch_size)
    tokens = grid[0] * grid[1]
    if tokens <= MAX_AUTO_TOKENS:
        return
    fit = scaled_size(work, 1.0, patch_size)
    raise InvalidInputError(
        f"size: frames of {original[0]}x{original[1]} (HxW) get the working size {work[0]}x{work[1]} from preset "
        f"{preset.name!r} ({preset.size_rule} {'x'.join(map(str, preset.size))}): {grid[0]}x{grid[1]} = {tokens} "
        f"patch tokens per frame, above the limit of {MAX_AUTO_TOKENS} that tcore picks by itself (the paper's "
        f"DAVIS size has 1650; the backbone's time grows with the square of the count, its memory with the "
        f"count: this would take minutes and many GB). Choose the size yourself: size={fit} keeps the aspect "
        f"ratio within the limit (command line: --size {fit[0]} {fit[1]}); any explicit size is used as given")


def scaled_size(work: tuple[int, int], factor: float, patch_size: int,
                max_tokens: int = MAX_AUTO_TOKENS) -> tuple[int, int]:
    """`work` scaled by `factor`, aspect ratio kept, at most `max_tokens` patch tokens per frame.

    Args:
        work: (H', W') in pixels.
        factor: the scale wanted (1.0: only shrink to the token limit).
        patch_size: p; both sides are floored to multiples of it (at least p).
        max_tokens: the limit on (H/p) * (W/p).

    Returns:
        (H, W) in pixels, multiples of `patch_size`.
    """
    limit = (max_tokens / ((work[0] / patch_size) * (work[1] / patch_size))) ** 0.5
    scale = min(factor, limit)
    grid_h = max(1, int(work[0] * scale / patch_size))
    grid_w = max(1, min(int(work[1] * scale / patch_size), max_tokens // grid_h))
    return grid_h * patch_size, grid_w * patch_size
