"""Loading a config: YAML files, ``--set`` overrides, and strict, typed construction of the dataclasses.

Usage: ``cfg = load_run_config("configs/smoke.yaml", overrides=parse_set(["train.lr=1e-3"]))``

Unknown keys, wrong types and out-of-range values raise `UserError` naming the key and what is valid,
so the CLI can exit with code 2 and one line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from normfree_bench.config.schema import MODEL_PRESETS, ModelConfig, RunConfig, unknown_choice
from normfree_bench.errors import UserError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp` (``where`` names the key in errors), converting ints to
    floats and lists to tuples where the annotation asks for them."""
    tp = {list: list[Any], tuple: tuple[Any, ...], dict: dict[str, Any]}.get(tp, tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(unknown_choice(value, typing.get_args(tp), where))
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], where)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping, got {type(value).__name__}")
        return {str(k): v for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} must be a list, got {type(value).__name__}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    return value


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    data = dict(data)
    if cls is ModelConfig and "preset" in data:
        preset = data.pop("preset")
        if preset not in MODEL_PRESETS:
            raise UserError(unknown_choice(preset, MODEL_PRESETS, f"{where}.preset"))
        data = {**MODEL_PRESETS[preset], **data}
    unknown = sorted(set(data) - set(names))
    if unknown:
        extra = " (and 'preset')" if cls is ModelConfig else ""
        raise UserError(f"unknown config key '{where}.{unknown[0]}'; valid keys: {', '.join(names)}{extra}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise UserError(f"{where}: {exc}") from exc


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it would keep the last silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text to Python, refusing duplicate keys; ``source`` names the text in errors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"malformed YAML in {source}{at}: {problem}") from exc


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning I/O, encoding and syntax errors (a duplicate key included) into
    one-line `UserError`s."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; valid: a YAML file such as configs/smoke.yaml")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); valid: a YAML file") from exc
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror})") from exc
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a YAML mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `overrides` into a copy of `base`."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides``, validated into a `RunConfig`."""
    data = read_yaml(path) if path is not None else {}
    if "ladder" in data:
        raise UserError(f"{path} is a ladder suite (it has a 'ladder' section); run it with `normfree-bench ladder`")
    return build_dataclass(RunConfig, merge(data, overrides or {}), "config")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set a.b=VALUE`` pairs as a nested override mapping; VALUE is read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"--set needs KEY=VALUE with a dotted key, e.g. hparams.dyt.alpha_init=0.5; got {item!r}")
        try:
            value = yaml.load(raw, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise UserError(f"--set {key}: the value {raw!r} is not valid YAML") from exc
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is set both as a value and as a section")
        node[leaf] = value
    return out
