"""The one rule for errors: a `UserError` is the user's to fix and gets one line; anything else is a
bug and keeps its traceback; each user error is still the built-in type Python code catches."""
from __future__ import annotations

import pytest

from tcore.errors import (CheckpointError, FileAccessError, InsufficientMemoryError, InvalidInputError,
                          InvalidTypeError, MissingDependencyError, MissingFileError, UserError,
                          WeightsUnavailableError, user_error_message)


@pytest.mark.parametrize("cls, builtin", [
    (InvalidInputError, ValueError), (InvalidTypeError, TypeError), (MissingFileError, FileNotFoundError),
    (FileAccessError, OSError), (InsufficientMemoryError, MemoryError), (MissingDependencyError, ImportError),
    (CheckpointError, ValueError), (WeightsUnavailableError, FileNotFoundError),
])
def test_each_user_error_is_also_the_builtin_python_code_catches(cls, builtin):
    err = cls("frames/00003.png: not an image; remove it or convert it to PNG")
    assert isinstance(err, UserError) and isinstance(err, builtin)
    assert user_error_message(err) == "frames/00003.png: not an image; remove it or convert it to PNG"


@pytest.mark.parametrize("bug", [ValueError("bad"), TypeError("x"), KeyError("k"), OSError(5, "I/O error"),
                                 ImportError("no module named foo"), RuntimeError("boom")])
def test_an_error_that_is_not_a_user_error_is_a_bug(bug):
    assert user_error_message(bug) is None


def test_running_out_of_memory_names_the_front_ends_fix():
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError, recognised by name (no torch import)
        pass

    message = user_error_message(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore"),
                                 memory_fix="use a smaller --size")
    assert message == "out of memory (CUDA out of memory. Tried to allocate 2 GiB); use a smaller --size"
    assert user_error_message(RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB")).startswith(
        "out of memory (DefaultCPUAllocator")
