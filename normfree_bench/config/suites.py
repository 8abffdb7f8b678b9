"""Named suites: the YAML files shipped in ``configs/``.

Usage: ``suite_path("smoke")  # -> .../configs/smoke.yaml``
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from normfree_bench.errors import UserError, did_you_mean


def configs_dir() -> Path:
    spec = importlib.util.find_spec("normfree_bench.suites_data")
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "configs"


def list_suites() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def suite_path(name: str) -> Path:
    path = configs_dir() / f"{name}.yaml"
    if not path.is_file():
        raise UserError(did_you_mean(name, list_suites(), "suite"))
    return path
