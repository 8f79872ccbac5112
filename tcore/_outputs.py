"""Output paths: checked before any work, and written so that an interrupted run leaves no half.

    out = check_output_folder("masks/", "-o")            # InvalidInputError / FileAccessError naming the path
    gif = check_output_file("ov.gif", "--overlay", {".gif", ".mp4"})
    with staged_folder(out, "propagation") as staging:    # FolderLockedError if another run writes there
        write files into staging ...                      # moved into `out` when the block completes

`staged_folder` is how `tcore propagate -o` writes: the files go to `<folder>/.partial/` while the
folder's lock (`tcore.locks.FolderLock`, `<folder>/tcore.lock`) is held, and are moved into the
folder (a rename each, within one file system) only when all of them are written. A run that is
killed leaves the folder's earlier contents as they were, plus `.partial/` and a stale lock file,
which the next run into that folder takes over and clears. Standard library only.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Collection, Iterator

from .locks import FolderLock, LockLostError
from .errors import FileAccessError, InvalidInputError
from .files import writing

__all__ = ["PARTIAL_DIR", "check_output_file", "check_output_folder", "missing_folders", "remove_if_empty",
           "staged_folder"]

PARTIAL_DIR = ".partial"


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_folder(path: str | os.PathLike, argument: str) -> Path:
    """A folder this process can create or write into, before any work is done.

    Args:
        path: the folder (created later if missing).
        argument: its name in errors ("-o", "out_dir").

    Returns:
        `path` as a Path (user home expanded).

    Raises:
        InvalidInputError: `path` is a file, or lies under a file.
        FileAccessError: the folder (or the closest existing ancestor it would be made in) is not writable.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"{argument} {str(folder)!r}: a file, not a folder; give a folder (created if missing)")
    _check_writable_place(folder, argument, "it would be made")
    return folder


def check_output_file(path: str | os.PathLike, argument: str, suffixes: Collection[str]) -> Path:
    """A file this process can write, with one of `suffixes`, before any work is done.

    Raises:
        InvalidInputError: another suffix, a folder, or a path under a file.
        FileAccessError: its folder is not writable.
    """
    file = Path(path).expanduser()
    if file.suffix.lower() not in suffixes:
        raise InvalidInputError(f"{argument} {str(file)!r}: expected a file ending in {', '.join(sorted(suffixes))}")
    if file.is_dir():
        raise InvalidInputError(f"{argument} {str(file)!r}: a folder; give a file name ending in {file.suffix}")
    _check_writable_place(file, argument, "it would be written")
    return file


def _check_writable_place(path: Path, argument: str, what: str) -> None:
    """The closest existing ancestor of `path` (or the folder `path` itself) is a writable folder."""
    existing = _nearest_existing(path if path.is_dir() else path.parent)
    if not existing.is_dir():
        raise InvalidInputError(f"{argument} {str(path)!r}: {str(existing)!r} is a file, so nothing can be made "
                                "under it; pick another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the folder" if existing == path else f"{str(existing)!r}, where {what},"
        raise FileAccessError(f"{argument} {str(path)!r}: {where} is not writable (permission denied); pick a "
                              "folder you can write to")


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its ancestors that do not exist yet, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are empty, stopping at the first one that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def staged_folder(folder: Path, purpose: str) -> Iterator[Path]:
    """Hold `folder`'s lock and yield `<folder>/.partial/`; on success move its files into `folder`.

    On an error nothing is moved: the staging folder is deleted, the lock released, and folders
    this call created are removed again when empty.

    Args:
        folder: the output folder (created if missing).
        purpose: what the run does ("propagation"), shown to a second run that finds the lock.

    Raises:
        FolderLockedError: another live run holds the folder (the message names it).
        LockLostError: the lock was taken over while the block ran (a frozen run): nothing is moved.
        FileAccessError: the staging folder cannot be made or its files moved (a full disk, no permission).
    """
    created = missing_folders(folder)
    lock = FolderLock(folder, purpose)
    lock.acquire()
    staging, ours = folder / PARTIAL_DIR, True
    try:
        shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed
        with writing(staging):
            staging.mkdir()
        yield staging
        try:
            lock.check()
        except LockLostError:  # another run took the folder over: its staging folder now, not ours
            ours = False
            raise
        for path in sorted(staging.iterdir()):
            with writing(folder / path.name):
                os.replace(path, folder / path.name)
        staging.rmdir()
    finally:
        if ours:
            shutil.rmtree(staging, ignore_errors=True)
        lock.release()
        remove_if_empty(created)
