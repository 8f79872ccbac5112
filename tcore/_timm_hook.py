"""Register tcore's models in timm when timm is imported, without importing timm (or torch) here.

`import tcore` must stay light (the command line answers `--help` without torch), yet
`import tcore; import timm; timm.create_model("tcore_vits16.k400")` must work in either import
order. So `install()` registers right away when timm is already imported, else it adds a finder to
`sys.meta_path` that, when timm is imported, lets the normal finders find it and registers once
timm's own module has run.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Sequence

__all__ = ["install"]

_REGISTRY = "tcore.timm_registry"


def _register() -> None:
    importlib.import_module(_REGISTRY)


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of `timm` so that registration follows its import."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one import of timm per process
        spec = importlib.util.find_spec(fullname)  # the finders after this one
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_timm(module)
            _register()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if timm is imported, else as soon as it is."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
