"""Label propagation: the exact, streaming T-CoRe engine (front ends build on it)."""
from .engine import Propagator, propagate_labels

__all__ = ["Propagator", "propagate_labels"]
