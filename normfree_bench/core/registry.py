"""The baseline registry: a decorator, discovery of plugin files and entry points, clear errors.

Usage: ``get_baseline("dyt")``; ``list_baselines()``; ``load_plugin("path/to/my_norm.py")``

Discovery order: the built-in ``baselines/`` folder (or the folder in $NORMFREE_BENCH_BASELINES),
files given with ``--plugin``, then the ``normfree_bench.baselines`` entry-point group. Files
whose name starts with ``_`` (such as ``_template.py``) are skipped. A name registered twice is an
error naming both files, never a silent overwrite.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from normfree_bench.core.baseline import Baseline
from normfree_bench.errors import BaselinePluginError, did_you_mean

ENTRY_POINT_GROUP = "normfree_bench.baselines"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

_REGISTRY: dict[str, type[Baseline]] = {}
_SOURCES: dict[str, str] = {}  # name -> file that registered it
_LOADED_FILES: set[Path] = set()
_discovered = False


def _source_of(cls: type) -> str:
    try:
        return str(Path(inspect.getfile(cls)).resolve())
    except (TypeError, OSError):
        return f"<{cls.__module__}>"


def register_baseline(cls: type[Baseline]) -> type[Baseline]:
    """Class decorator: register a `Baseline` subclass under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Baseline)):
        raise BaselinePluginError(f"@register_baseline needs a Baseline subclass, got {cls!r}")
    name = cls.name
    source = _source_of(cls)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BaselinePluginError(
            f"{source}: baseline name {name!r} is invalid; use lowercase letters, digits and _, "
            "starting with a letter")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise BaselinePluginError(
            f"baseline '{name}' is registered twice: by {_SOURCES[name]} and by {source}")
    _REGISTRY[name] = cls
    _SOURCES[name] = source
    return cls


def builtin_dir() -> Path:
    """The folder of built-in baselines: $NORMFREE_BENCH_BASELINES, else the ``baselines/`` of the source
    checkout this package was imported from, else the installed package's copy."""
    env = os.environ.get("NORMFREE_BENCH_BASELINES")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "baselines" / "dyt.py").is_file():
        return checkout / "baselines"  # a source checkout (or a copy of one): its own folder
    spec = importlib.util.find_spec("normfree_bench.builtin_baselines")
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return checkout / "baselines"


def load_plugin(path: str | Path) -> list[str]:
    """Import one plugin file; return the names it registered. Loading a file twice is a no-op."""
    path = Path(path)
    if path.is_dir():
        raise BaselinePluginError(f"plugin {path} is a directory; valid: a Python file that registers a baseline "
                                  "(a folder of plugins goes in $NORMFREE_BENCH_BASELINES)")
    if not path.is_file():
        raise BaselinePluginError(f"plugin file not found: {path}")
    resolved = path.resolve()
    if resolved in _LOADED_FILES:
        return [n for n, s in _SOURCES.items() if s == str(resolved)]
    before = set(_REGISTRY)
    module_name = f"normfree_bench_plugins.{resolved.stem}_{abs(hash(str(resolved))) % 10**8}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise BaselinePluginError(f"plugin {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaselinePluginError:
        sys.modules.pop(module_name, None)
        raise
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise BaselinePluginError(
            f"plugin {path} failed to import: SyntaxError at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise BaselinePluginError(
            f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    _LOADED_FILES.add(resolved)
    added = sorted(set(_REGISTRY) - before)
    if not added:
        raise BaselinePluginError(
            f"plugin {path} registers no baseline; decorate a Baseline subclass with @register_baseline")
    return added


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise BaselinePluginError(
                f"entry point '{ep.name} = {ep.value}' failed to import: {type(exc).__name__}: {exc}") from exc
        if isinstance(obj, type) and issubclass(obj, Baseline) and obj.name not in _REGISTRY:
            register_baseline(obj)


def discover() -> None:
    """Load the built-in folder and installed entry points, once per process."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    folder = builtin_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                load_plugin(path)
    _load_entry_points()


def list_baselines() -> list[str]:
    """Names of every registered baseline, sorted."""
    discover()
    return sorted(_REGISTRY)


def get_baseline(name: str) -> type[Baseline]:
    """The baseline class registered as ``name``; an unknown name lists the valid ones."""
    discover()
    if name not in _REGISTRY:
        raise BaselinePluginError(did_you_mean(name, _REGISTRY, "baseline"))
    return _REGISTRY[name]



def check_hparams_section(hparams: dict[str, dict[str, Any]]) -> None:
    """A config's ``hparams`` section: every key names a registered baseline and every value fits that
    baseline's declared hyperparameters (a typo such as ``hparams.dytt`` is an error, not ignored)."""
    for name, values in hparams.items():
        if name not in _REGISTRY:
            discover()
        if name not in _REGISTRY:
            raise BaselinePluginError(did_you_mean(name, _REGISTRY, "baseline") + f" (in hparams.{name})")
        if not isinstance(values, dict):
            raise BaselinePluginError(f"hparams.{name} must be a mapping of hyperparameters, got {values!r}")
        _REGISTRY[name].check_hparams(values)
