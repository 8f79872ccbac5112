"""Object-id masks: reading every convention users bring, writing indexed PNGs, the DAVIS palette.

A mask is an (H, W) uint8 array of object ids: 0 is background, 1..254 are objects (ids need not
be consecutive). 255 is never an object id: palette PNGs use it for void pixels (DAVIS, VOC).

How `read_mask` reads a mask:

- palette ("P") image: the palette indices are the ids; 255 (void) becomes background 0, as
  DAVIS-2017's own evaluator does; the palette is returned.
- grey image ("L", 16-bit "I;16", "I") and (H, W) arrays (integer, bool, or float with integer
  values; numpy or torch), values in [0, 255]:
  * only {0, 255}: one object (255 -> 1);
  * object ids (kept as given) when 255 does not occur together with other non-zero values and at
    most `MAX_GREY_IDS` (32) distinct non-zero values occur;
  * anything else is a soft mask (anti-aliased edges, a probability or saliency map, a JPEG):
    an error that suggests `threshold=`. To read a grey image with more ids, or with 255 as
    void, pass it as a palette image (`image.putpalette(DAVIS_PALETTE.tobytes())`).
  * integer ids above 255 (a 16-bit id mask, e.g. instance ids 1000, 2000): an error that says
    how to renumber them 1..N (`threshold=` would merge every object into one).
- colour image (RGB, RGBA: alpha ignored; JPEG): each distinct colour is one object, black is
  background, objects numbered 1..N in lexicographic (R, G, B) order; at most 254 colours. An
  image whose pixels all have R == G == B is read as a grey image. An anti-aliased colour mask
  (a soft brush, a smooth resize, a JPEG) is refused like a soft grey mask. Its tell is blended
  colours: a colour that only lies on borders (no pixel of it has four neighbours of its colour)
  and lies between two of its neighbouring colours in every channel (red 255 and black give
  the blends 191, 128, 64, ...). Two blended colours or more make a mask anti-aliased.
- `threshold=T`: pixels whose grey value (colour images: luminance, ITU-R 601-2 as PIL's "L")
  is >= T are object 1, the rest background. Palette images refuse it (they hold ids already).

A mask file is read upright, as viewers show it (its EXIF orientation applied, as for frames), and
one that declares more pixels than PIL's decompression-bomb limit is refused naming the file
(`tcore.io._images`). Every error is a `tcore.errors.UserError`: `InvalidInputError` (a
ValueError), `InvalidTypeError` (a TypeError) or `MissingFileError` (a FileNotFoundError).
"""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import InvalidInputError, InvalidTypeError, MissingFileError
from ..files import writing
from ._common import as_numpy, describe, is_path, is_tensor
from ._images import read_image

__all__ = ["DAVIS_PALETTE", "MAX_GREY_IDS", "read_mask", "write_mask", "write_masks"]

MAX_GREY_IDS = 32  # a grey mask with more distinct non-zero values is taken to be soft
_MAX_COLOURS = 254  # ids 1..254; 255 is void in palette PNGs
_MAX_BLENDED_COLOURS = 2  # a colour mask with this many blended colours is anti-aliased


def _davis_palette() -> np.ndarray:
    """The DAVIS-2017 palette: VOC's bit pattern with 191 for 192 (indices 0..21), grey after."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for channel in range(3):  # bit 3j+c of the index is bit 7-j of channel c
        for j in range(8):
            palette[:, channel] |= (((index >> (3 * j + channel)) & 1) << (7 - j)).astype(np.uint8)
    palette[:22][palette[:22] == 192] = 191
    palette[22:] = index[22:, None]
    return palette


DAVIS_PALETTE: np.ndarray = _davis_palette()
"""(256, 3) uint8: the palette of DAVIS-2017 annotations (index 1 is (128, 0, 0), 9 is (191, 0, 0))."""
DAVIS_PALETTE.flags.writeable = False


def read_mask(source: Any, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a first-frame mask as object ids (see the module docstring for every convention).

    Args:
        source: a path to an image file (PNG, JPEG, ...), a PIL image, or an (H, W) numpy array or
            torch tensor (integer, bool or float; (H, W, 3) uint8 arrays are colour masks).
        threshold: binarise a grey or colour mask: values (luminance) >= threshold are object 1.

    Returns:
        ids: (H, W) uint8 object ids, 0 = background.
        palette: (256, 3) uint8 for a palette image (entries it lacks are DAVIS colours), else None.

    Raises:
        MissingFileError: no such file.
        InvalidInputError: a soft mask without `threshold` (the message suggests one), ids outside
            [0, 255], more than 254 colours, `threshold` with a palette image, an unreadable file,
            a file above PIL's decompression-bomb limit.
        InvalidTypeError: an unsupported source or dtype.
    """
    _check_threshold(threshold)
    if is_path(source):
        image, label = _open_image(Path(source)), f"mask {str(source)!r}"
    elif isinstance(source, Image.Image):
        image, label = source, f"mask (PIL image, mode {source.mode})"
    elif isinstance(source, np.ndarray) or is_tensor(source):
        return _ids_from_array(as_numpy(source), threshold, f"mask ({describe(source)})"), None
    else:
        raise InvalidTypeError(f"mask: expected a path, a PIL image, or an (H, W) numpy array or torch tensor "
                               f"of object ids, got {describe(source)}")
    return _ids_from_image(image, threshold, label)


def _check_threshold(threshold: Any) -> None:
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or threshold != threshold:
        raise InvalidTypeError(f"threshold: expected a number such as 128 (or 0.5 for probabilities), "
                               f"got {threshold!r}")


def _open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise MissingFileError(f"mask: no such file: {str(path)!r}")
    return read_image(path, f"mask {str(path)!r}", InvalidInputError)


def _ids_from_image(image: Image.Image, threshold: float | None,
                    label: str) -> tuple[np.ndarray, np.ndarray | None]:
    if image.mode in ("P", "PA"):
        if threshold is not None:
            raise InvalidInputError(f"{label}: threshold= binarises grey or colour masks, but this palette "
                                    f"image already holds object ids; drop threshold=")
        ids = np.array(image.getchannel(0), dtype=np.uint8)
        ids[ids == 255] = 0  # void
        return ids, _as_palette(image.getpalette("RGB") or None)
    if len(image.getbands()) == 1:  # "1", "L", "I;16", "I", "F"
        return _ids_from_grey(np.asarray(image), threshold, label), None
    if image.mode == "LA":
        return _ids_from_grey(np.asarray(image.getchannel("L")), threshold, label), None
    return _ids_from_colour(np.asarray(image.convert("RGB")), threshold, label), None


def _ids_from_array(array: np.ndarray, threshold: float | None, label: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        return _ids_from_colour(np.ascontiguousarray(array[..., :3]), threshold, label)
    if array.ndim != 2:
        hint = " Drop the leading dimension: mask[0]." if array.ndim == 3 and array.shape[0] == 1 else ""
        raise InvalidInputError(f"{label}: expected an (H, W) array of object ids.{hint}")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)) or np.iscomplexobj(array):
        raise InvalidTypeError(f"{label}: expected integer, bool or float values")
    return _ids_from_grey(array, threshold, label)


def _ids_from_grey(values: np.ndarray, threshold: float | None, label: str) -> np.ndarray:
    """(H, W) grey values -> uint8 ids, by the grey rule of the module docstring."""
    if threshold is not None:
        return (values >= threshold).astype(np.uint8)
    if values.dtype == bool:
        return values.astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(values.dtype, np.floating):
        if np.isnan(low) or np.isnan(high) or not np.array_equal(values, np.round(values)):
            example = 0.5 if high <= 1 else 128
            raise InvalidInputError(f"{label}: has fractional values in [{low:g}, {high:g}], not object ids; "
                                    f"binarise it with threshold=, e.g. threshold={example}")
    if low < 0 or high > 255:
        raise _out_of_range_error(values, low, high, label)
    ids = values.astype(np.uint8)
    levels = np.flatnonzero(np.bincount(ids.ravel(), minlength=256)[1:]) + 1  # non-zero values present
    if levels.size == 0 or levels.tolist() == [255]:
        return (ids == 255).astype(np.uint8)
    if levels[-1] == 255 or levels.size > MAX_GREY_IDS:
        raise _soft_mask_error(label, levels)
    return ids


def _out_of_range_error(values: np.ndarray, low: float, high: float, label: str) -> InvalidInputError:
    """Grey values outside [0, 255]: ids to renumber (a few distinct values), else a soft 16-bit mask."""
    prefix = f"{label}: object ids must be in [0, 255], got values in [{low:g}, {high:g}]"
    if low < 0:
        return InvalidInputError(f"{prefix}; negative values are not ids (a normalised or signed image?)")
    present = np.unique(values)
    n_ids = int(np.count_nonzero(present))
    if n_ids <= MAX_GREY_IDS:  # a 16-bit id mask: threshold= would merge its objects into one
        shown = ", ".join(f"{v:g}" for v in present[present != 0][:8]) + (", ..." if n_ids > 8 else "")
        return InvalidInputError(
            f"{prefix}: {n_ids} object id{'s' * (n_ids != 1)} ({shown}), a 16-bit id mask; renumber them 1..{n_ids} "
            f"(0, if present, stays background), e.g. np.unique(mask, return_inverse=True)[1].reshape(mask.shape)"
            f".astype(np.uint8)")
    return InvalidInputError(
        f"{prefix} with {present.size} distinct levels: a soft 16-bit mask (a probability or depth map), not object "
        f"ids; binarise it with threshold=, e.g. threshold={high / 2:g} (command line: --threshold {high / 2:g})")


def _soft_mask_error(label: str, levels: np.ndarray) -> InvalidInputError:
    return InvalidInputError(
        f"{label} looks like a soft mask (anti-aliased edges, a probability or saliency map, or a "
        f"JPEG), not object ids: it has {levels.size} distinct non-zero grey levels "
        f"({levels[0]}..{levels[-1]}). Binarise it with threshold=, e.g. threshold=128 "
        f"(command line: --threshold 128). A grey mask is read as ids only when it is {{0, 255}} "
        f"or has at most {MAX_GREY_IDS} non-zero values without 255. If these values really are "
        f"object ids (255 = void), pass a palette image: "
        f"img = PIL.Image.open(path); img.putpalette(tcore.io.DAVIS_PALETTE.tobytes())")


def _ids_from_colour(rgb: np.ndarray, threshold: float | None, label: str) -> np.ndarray:
    """(H, W, 3) uint8 colours -> uint8 ids: one object per colour, black = background."""
    if threshold is not None:
        return (_luminance(rgb) >= threshold).astype(np.uint8)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return _ids_from_grey(red, None, label)
    packed = (red.astype(np.uint32) << 16) | (green.astype(np.uint32) << 8) | blue  # (H, W) 0xRRGGBB
    colours = np.unique(packed)
    colours = colours[colours != 0]
    if colours.size > _MAX_COLOURS:
        raise InvalidInputError(
            f"{label} has {colours.size} distinct colours; a colour mask may hold at most "
            f"{_MAX_COLOURS} objects. A JPEG or anti-aliased mask has many colours: binarise it "
            f"with threshold=, e.g. threshold=128, or save the ids as a palette PNG")
    blends = _blended_colours(packed, colours)
    if blends >= _MAX_BLENDED_COLOURS:
        raise _anti_aliased_error(label, colours.size, blends, _luminance(rgb))
    ids = (np.searchsorted(colours, packed) + 1).astype(np.uint8)
    ids[packed == 0] = 0
    return ids


def _blended_colours(packed: np.ndarray, colours: np.ndarray) -> int:
    """How many of `colours` look like anti-aliasing blends (see the module docstring).

    Args:
        packed: (H, W) uint32 colours 0xRRGGBB.
        colours: (N,) the object colours (black excluded).
    """
    padded = np.pad(packed, 1, mode="edge")  # (H+2, W+2): outside the image counts as the same colour
    centre = padded[1:-1, 1:-1]
    interior = ((padded[:-2, 1:-1] == centre) & (padded[2:, 1:-1] == centre)
                & (padded[1:-1, :-2] == centre) & (padded[1:-1, 2:] == centre))
    edge_only = np.setdiff1d(colours, packed[interior])
    if edge_only.size < _MAX_BLENDED_COLOURS:
        return 0
    here, there = _neighbouring_pairs(packed)
    return sum(_between_two(colour, np.unique(there[here == colour])) for colour in edge_only)


def _neighbouring_pairs(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): every ordered pair of different colours that are 4-neighbours somewhere."""
    rows = packed[:, :-1] != packed[:, 1:]
    cols = packed[:-1, :] != packed[1:, :]
    a = np.concatenate([packed[:, :-1][rows], packed[:-1, :][cols]])
    b = np.concatenate([packed[:, 1:][rows], packed[1:, :][cols]])
    return np.concatenate([a, b]), np.concatenate([b, a])


def _unpack(packed: np.ndarray) -> np.ndarray:
    """(...,) uint32 0xRRGGBB -> (..., 3) int32 RGB."""
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.int32)


def _between_two(colour: np.uint32, neighbours: np.ndarray) -> bool:
    """True when `colour` lies, channel by channel, between two of its (other) `neighbours`."""
    if neighbours.size < 2:
        return False
    c, n = _unpack(colour), _unpack(neighbours)  # (3,), (k, 3)
    low = np.minimum(n[:, None], n[None, :])  # (k, k, 3)
    high = np.maximum(n[:, None], n[None, :])
    return bool(((low <= c) & (c <= high)).all(axis=-1).any())


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 luminance (ITU-R 601-2, as PIL's "L"): what threshold= compares."""
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _anti_aliased_error(label: str, n_colours: int, n_blends: int, luminance: np.ndarray) -> InvalidInputError:
    example = max(1, round(int(luminance.max()) / 2))  # half the brightest object's luminance
    return InvalidInputError(
        f"{label} looks anti-aliased (soft edges from a soft brush, a smooth resize or a JPEG), not one colour "
        f"per object: it has {n_colours} distinct colours, and {n_blends} of them are blends found only on the "
        f"borders between other colours. Save the mask without anti-aliasing (a hard brush, nearest-neighbour "
        f"resizing, PNG), or as a palette PNG of object ids, or binarise it with threshold= on its luminance, e.g. "
        f"threshold={example}, half its brightest (command line: --threshold {example})")


def _as_palette(palette: Any) -> np.ndarray:
    """(N, 3) or flat (3N,) colours, N <= 256, -> (256, 3) uint8, padded with DAVIS colours."""
    if palette is None:
        return DAVIS_PALETTE
    colours = np.asarray(palette)
    if colours.ndim == 1 and colours.size % 3 == 0:
        colours = colours.reshape(-1, 3)
    if (colours.ndim != 2 or colours.shape[1] != 3 or len(colours) > 256
            or not np.issubdtype(colours.dtype, np.integer)):
        raise InvalidInputError(f"palette: expected up to 256 RGB colours as an (N, 3) integer array or a flat "
                                f"list of 3N values, got {describe(colours)}")
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise InvalidInputError(f"palette: colours must be in [0, 255], got [{colours.min()}, {colours.max()}]")
    return np.concatenate([colours.astype(np.uint8), DAVIS_PALETTE[len(colours):]])


def _check_ids(ids: Any, name: str) -> np.ndarray:
    """An (H, W) mask of object ids in [0, 254] as uint8, or an error naming `name`."""
    array = as_numpy(ids)
    if array.ndim != 2:
        raise InvalidInputError(f"{name}: expected an (H, W) mask of object ids, got {describe(ids)}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidTypeError(f"{name}: object ids must be integers, got {describe(ids)}; "
                               f"convert with .round().astype(np.uint8) or threshold the probabilities")
    if array.size and (array.min() < 0 or array.max() > _MAX_COLOURS):
        raise InvalidInputError(f"{name}: object ids must be in [0, {_MAX_COLOURS}] (255 is void in palette "
                                f"PNGs), got values in [{array.min()}, {array.max()}]")
    return np.ascontiguousarray(array, dtype=np.uint8)


def write_mask(path: str | Path, ids: Any, palette: Any = None) -> Path:
    """Write one mask as an indexed (palette) PNG, the format of DAVIS annotations.

    Args:
        path: output file, ending in ".png"; its folder is created.
        ids: (H, W) integer or bool object ids in [0, 254] (numpy array or torch tensor).
        palette: (N, 3) colours (N <= 256; missing entries are DAVIS colours); None = DAVIS-2017.

    Returns:
        The path written.

    Raises:
        FileAccessError: a full disk or no permission (names the file), as soon as the write fails.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidInputError(f"path: indexed masks are PNG files, got {str(path)!r}; end the name with .png")
    ids, colours = _check_ids(ids, "ids"), _as_palette(palette)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(path, ids, colours)
    return path


def _write_png(path: Path, ids: np.ndarray, palette: np.ndarray) -> None:
    """Write checked uint8 (H, W) ids with a (256, 3) uint8 palette as a "P" mode PNG."""
    image = Image.fromarray(ids)  # mode "L"
    image.putpalette(palette.tobytes())  # -> mode "P", 256 colours
    with writing(path):
        image.save(path)


def write_masks(out_dir: str | Path, masks: Any, palette: Any = None,
                names: Sequence[str] | None = None) -> list[Path]:
    """Write masks as indexed PNGs `<out_dir>/<name>.png`, streaming.

    Args:
        out_dir: output folder (created).
        masks: (T, H, W) integer ids (numpy array or torch tensor), or an iterable of (H, W) masks,
            or of `(t, mask)` pairs as `tcore.iter_masks` yields (t picks the name).
        palette: the input mask's palette (from `read_mask`), or None for the DAVIS-2017 palette.
        names: per-frame names without suffix, e.g. `read_video(...).names`; default "00000", ...

    Returns:
        The paths written, in order.

    Raises:
        FileAccessError: a full disk or no permission (names the file), as soon as a write fails.
    """
    out = Path(out_dir)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    colours = _as_palette(palette)
    names = None if names is None else list(names)
    if names is not None and (isinstance(masks, np.ndarray) or is_tensor(masks)) and len(masks) != len(names):
        raise InvalidInputError(f"names: {len(names)} names for {len(masks)} masks; pass one name per mask")
    paths = []
    for t, ids in _iter_masks(masks):
        if names is not None and not 0 <= t < len(names):
            raise InvalidInputError(f"names: no name for mask {t} ({len(names)} names given)")
        name = f"{t:05d}" if names is None else names[t]
        path = out / f"{name}.png"
        _write_png(path, _check_ids(ids, f"masks[{t}]"), colours)
        paths.append(path)
    if not paths:
        raise InvalidInputError("masks: nothing to write (no masks given)")
    return paths


def _iter_masks(masks: Any) -> Iterator[tuple[int, Any]]:
    """(t, (H, W) mask) from a (T, H, W) array/tensor or an iterable of masks or (t, mask) pairs."""
    if isinstance(masks, np.ndarray) or is_tensor(masks):
        if masks.ndim != 3:
            raise InvalidInputError(f"masks: expected (T, H, W) object ids, got {describe(masks)}"
                             + ("; for one mask use write_mask" if masks.ndim == 2 else ""))
        yield from enumerate(masks)
        return
    if isinstance(masks, (str, bytes, Path)) or not isinstance(masks, Iterable):
        raise InvalidTypeError(f"masks: expected a (T, H, W) array or an iterable of (H, W) masks, "
                               f"got {describe(masks)}")
    for position, item in enumerate(masks):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (int, np.integer)):
            yield int(item[0]), item[1]
        else:
            yield position, item
