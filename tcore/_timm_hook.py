"""Register tcore's models in timm when timm is imported, without importing timm (or torch) here.

`import tcore` must stay light (the command line answers `--help` without torch), yet
`import tcore; import timm; timm.create_model("tcore_vits16.k400")` must work in either import
order. So `install()` registers right away when timm is already imported, else it adds a finder to
`sys.meta_path` that, whenever timm's module spec is asked for, returns the spec the other finders
give with its loader wrapped: timm's module runs, then tcore registers. A spec asked for without an
import (`importlib.util.find_spec("timm")`, as transformers and optimum do when they are imported)
changes nothing: the finder stays until the import that really runs timm has registered.
(The public constructors do not depend on this: they pass their pretrained cfg to timm themselves.)
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
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
        spec = self._spec_of_the_other_finders(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_timm = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_timm(module)
            if self in sys.meta_path:  # one registration per process
                sys.meta_path.remove(self)
            _register()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec

    def _spec_of_the_other_finders(self, fullname: str, path: Sequence[str] | None,
                                   target: ModuleType | None) -> importlib.machinery.ModuleSpec | None:
        """What the import system would find without this finder."""
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


def install() -> None:
    """Register now if timm is imported, else as soon as it is."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
