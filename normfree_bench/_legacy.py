"""The module paths of the flat layout before 0.2, kept importable so that plugins written against
them still load: ``import normfree_bench.layers`` gives ``normfree_bench.core.layers``, with a
DeprecationWarning naming the new path.

Usage: ``_legacy.install()``  (done once by ``import normfree_bench``)

``normfree_bench.convert`` is not a module alias: it is the public ``convert`` function.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

OLD_TO_NEW = {
    "api": "core.baseline",
    "layers": "core.layers",
    "pointwise": "core.pointwise",
    "registry": "core.registry",
    "invariants": "core.invariants",
    "model": "models.transformer",
    "contract": "models.contract",
    "suites": "config.suites",
    "vision_data": "data.images",
    "train": "training.train",
    "lit_module": "training.lit_module",
    "guard": "training.guard",
    "diagnostics": "training.diagnostics",
    "numerics": "training.numerics",
    "storage": "store.storage",
    "provenance": "store.provenance",
    "worker": "sweep.worker",
    "metrics": "tables.leaderboard",
    "leaderboard": "tables.render",
    "plots": "tables.plots",
    "results": "tables.export",
    "analyze": "analysis.analyze",
    "analysis_plots": "analysis.plots",
    "speed": "tools.speed",
    "overhead": "tools.overhead",
}
PACKAGE = "normfree_bench"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed; only its own spec, which the import system just
        replaced by the alias's, is put back."""
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, leaf = fullname.rpartition(".")
        if package != PACKAGE or leaf not in OLD_TO_NEW:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"{PACKAGE}.{OLD_TO_NEW[leaf]}"))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
