"""Errors, and the one rule that tells a user's mistake from a bug. No torch here: the command lines
classify errors before (or without) importing it.

The rule, for every front end (`tcore` and its subcommands, `training/pretrain.py`,
`python -m training.prepare`, the app):

- A mistake the user can fix (a bad input, file, option or config key, a busy folder, weights that
  cannot be had, too little memory, a missing extra) is raised as a `UserError`. Its message is one
  line that names the input (the path, argument or key, and the value received) and a fix that
  works in the interface the user called: a flag on the command line, an argument in Python.
- Each `UserError` also derives from the built-in type Python code would catch (`ValueError`,
  `TypeError`, `FileNotFoundError`, `OSError`, `MemoryError`, `ImportError`), so
  `except ValueError` keeps working.
- A command line prints `<prog>: error: <message>` for a `UserError` (see `user_error_message`) and
  exits 1. Every other exception is a bug: it keeps its traceback. `--debug` always shows it.
- An exception from a library (PIL, torch, safetensors, the OS) that is the user's doing is caught
  where the input is known and re-raised as a `UserError` that names it, `from` the original.
"""
from __future__ import annotations

__all__ = [
    "UserError", "InvalidInputError", "InvalidTypeError", "MissingFileError", "FileAccessError",
    "InsufficientMemoryError", "MissingDependencyError", "CheckpointError", "WeightsUnavailableError",
    "user_error_message",
]


class UserError(Exception):
    """Base of every error a user can fix; the message is one line naming the input and the fix."""


class InvalidInputError(UserError, ValueError):
    """A value, option, config key or file content that is not allowed (the message says what is)."""


class InvalidTypeError(UserError, TypeError):
    """An argument of a type the function does not take (the message names the types it takes)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist."""


class FileAccessError(UserError, OSError):
    """A file or folder that exists (or should) but cannot be read or written: permissions, a full
    disk, a read-only file system. The message names the path."""


class InsufficientMemoryError(UserError, MemoryError):
    """The work does not fit in the device's memory; the message says how to make it smaller."""


class MissingDependencyError(UserError, ImportError):
    """An optional package is needed; the message names the extra to install."""


class CheckpointError(InvalidInputError):
    """A checkpoint that cannot be read, or whose contents do not match the architecture."""


class WeightsUnavailableError(MissingFileError):
    """Released weights (or a Hub repo) that are neither cached nor downloadable (e.g. offline)."""


_MEMORY_FIX = "use a smaller working size or batch, or a device with more memory"


def user_error_message(err: BaseException, *, memory_fix: str = _MEMORY_FIX) -> str | None:
    """The one line a front end prints for `err` if it is the user's to fix, else None (a bug).

    Args:
        err: the exception that ended the command.
        memory_fix: the fix to name when the device ran out of memory, in the front end's own terms
            (e.g. "use a smaller --size or --batch-size" on the command line).

    Returns:
        The message without the `<prog>: error: ` prefix, or None when the traceback must be shown.
    """
    if isinstance(err, UserError):
        return str(err) or type(err).__name__
    text = str(err).strip()
    # torch.OutOfMemoryError (CUDA/MPS) and the CPU allocator's failure, recognised without importing torch
    if type(err).__name__ == "OutOfMemoryError" or isinstance(err, MemoryError) or "can't allocate memory" in text:
        first = text.splitlines()[0] if text else type(err).__name__
        return f"out of memory ({first}); {memory_fix}"
    return None
