"""Errors of the model layer. No torch here: the command line catches these before it imports it."""
from __future__ import annotations

__all__ = ["CheckpointError", "WeightsUnavailableError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose contents do not match the architecture."""


class WeightsUnavailableError(FileNotFoundError):
    """Released weights (or a Hub repo) that are neither cached nor downloadable (e.g. offline)."""
