"""Opening image files, the one way tcore reads frames, masks and label PNGs.

- **Upright, as viewers show them.** A file's EXIF orientation (phone photos are stored sideways
  with a tag that says how to turn them) is applied, to frames and masks alike, so that a mask
  drawn on the picture as every viewer shows it lies on the same pixels. PIL images passed in
  memory are taken as they are (apply `PIL.ImageOps.exif_transpose` yourself if they still need it).
- **Within PIL's decompression-bomb limit.** A file whose header declares more than twice
  `PIL.Image.MAX_IMAGE_PIXELS` pixels (89,478,485 by default: a 30000x30000 PNG declares 900
  million) is refused before it is decoded, naming the file and the limit. To read such an image
  on purpose, raise the limit: `PIL.Image.MAX_IMAGE_PIXELS = 1_000_000_000` in Python, or the
  environment variable `TCORE_MAX_IMAGE_PIXELS=1000000000` for the command line.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from PIL import ExifTags, Image

__all__ = ["MAX_PIXELS_ENV", "image_size", "read_image"]

MAX_PIXELS_ENV = "TCORE_MAX_IMAGE_PIXELS"  # read by the command line, which sets PIL.Image.MAX_IMAGE_PIXELS
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what PIL raises for a broken file
_PIXELS = re.compile(r"\((\d+) pixels\)")
# EXIF orientation -> the transposition that shows the stored pixels upright (the EXIF/TIFF definition)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_SIDEWAYS = frozenset({5, 6, 7, 8})  # orientations that swap width and height


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation an opened (not yet decoded) image declares; 1 (as stored) when none.

    Only what the file's header holds is read (`Image.Image.getexif`, not a format's override that
    may decode the whole file), so that the size from the header and the decoded frame agree."""
    value = Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1)
    return value if value in _UPRIGHT else 1


def read_image(path: Path, where: str, error: Callable[[str], Exception]) -> Image.Image:
    """`path` decoded and upright (its EXIF orientation applied).

    Args:
        path: an image file.
        where: what it is, for errors (e.g. "frame 3 (frames/00003.jpg)").
        error: the exception class raised (a `tcore.errors.UserError`), given the message.

    Raises:
        `error`: the file cannot be read as an image, or it declares more pixels than PIL's
            decompression-bomb limit (the message names the limit and how to raise it).
    """
    try:
        with Image.open(path) as image:
            orientation = _orientation(image)
            image.load()
            return image if orientation == 1 else image.transpose(_UPRIGHT[orientation])
    except Image.DecompressionBombError as err:
        raise error(_bomb_message(where, err)) from err
    except _PIL_ERRORS as err:
        raise error(f"{where} could not be read: {err}") from err


def image_size(path: Path, where: str, error: Callable[[str], Exception]) -> tuple[int, int]:
    """(H, W) of an image file as `read_image` gives it (upright), from its header only.

    Raises:
        `error`: as `read_image`.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if _orientation(image) in _SIDEWAYS:
                width, height = height, width
    except Image.DecompressionBombError as err:
        raise error(_bomb_message(where, err)) from err
    except _PIL_ERRORS as err:
        raise error(f"{where} could not be read: {err}") from err
    return height, width


def _bomb_message(where: str, err: Image.DecompressionBombError) -> str:
    found = _PIXELS.search(str(err))
    wanted = f"{int(found.group(1)):_}" if found else "a larger number"
    return (f"{where} is refused: {err} PIL refuses images above twice PIL.Image.MAX_IMAGE_PIXELS "
            f"(now {Image.MAX_IMAGE_PIXELS}), to protect memory from files that claim to be huge. If this image is "
            f"genuine, raise the limit on purpose: PIL.Image.MAX_IMAGE_PIXELS = {wanted} in Python (command line: "
            f"{MAX_PIXELS_ENV}={wanted.replace('_', '')} tcore ...)")
