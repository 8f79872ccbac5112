"""File helpers shared by tcore and training, without torch: sha256 of a file, atomic writes, and
write errors the user can fix named with their path.

`write_atomic` is the one way a file that someone may read at any moment is written (Hub weights,
evaluation results, training checkpoints and manifests, benchmark tables): the content goes to a
temporary file in the same folder, which is then renamed over the target with `os.replace`, so a
reader sees the old file or the new one, never half of one, and a crash leaves the old one.

`writing(path)` turns the write errors a user can fix (a full disk or quota, no permission, a
read-only file system) into a `tcore.errors.FileAccessError` that names the path, the moment the
write fails; `write_atomic` and every tcore writer (masks, overlays, results) go through it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator

from .errors import FileAccessError, UserError

__all__ = ["sha256sum", "write_atomic", "write_text_atomic", "writing"]

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def sha256sum(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str | os.PathLike, write: Callable[[str], object], *, durable: bool = False,
                 temporary: str | os.PathLike | None = None) -> Path:
    """Call `write(tmp)` on a temporary file next to `path`, then rename it to `path`.

    An error inside `write` leaves any previous `path` untouched and removes the temporary file.
    The file gets the permissions a plain `open(path, "w")` would give (the umask applies).

    Args:
        path: the file to write; its folder is created if needed.
        write: writes the whole content to the path it is given (an empty file there).
        durable: also fsync the file before the rename and the folder after it, so that the new
            content survives a power cut (checkpoints).
        temporary: the temporary file (same folder); default a fresh hidden name
            `.<name>.<random>.tmp`, so concurrent writers never share one. A caller that cleans up
            the leftovers of a killed writer names its own.

    Returns:
        `path`, as a Path.

    Raises:
        FileAccessError: a full disk, no permission or a read-only file system (names `path`).
    """
    path = Path(path)
    with writing(path):
        return _write_atomic(path, write, durable, temporary)


def _write_atomic(path: Path, write: Callable[[str], object], durable: bool,
                  temporary: str | os.PathLike | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if temporary is None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    else:
        tmp = Path(temporary)
        if tmp.parent.resolve() != path.parent.resolve():
            raise ValueError(f"temporary={str(tmp)!r}: must be in the folder of {str(path)!r} (a rename "
                             "across file systems is not atomic)")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
    try:
        write(str(tmp))
        if durable:
            _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    if durable:
        _fsync(path.parent, os.O_RDONLY)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """`write_atomic` of a UTF-8 text file."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), durable=durable)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Name `path` in a write error the user can fix, raised in the block, as a `FileAccessError`.

    A full disk or quota (ENOSPC, EDQUOT, EFBIG), no permission (EACCES, EPERM) and a read-only
    file system (EROFS) become a one-line `FileAccessError` naming `path`, raised from the OS
    error; any other exception (a bug) passes unchanged.

    Args:
        path: the file or folder being written.
    """
    try:
        yield
    except UserError:
        raise
    except OSError as err:
        if err.errno in _NO_SPACE:
            fix = "free some space there, or write to another disk"
        elif err.errno in _NO_PERMISSION:
            fix = "write to a folder you can write to"
        else:
            raise
        raise FileAccessError(f"could not write {str(path)!r}: {os.strerror(err.errno)} (errno {err.errno}); "
                              f"{fix}") from err


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
