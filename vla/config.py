"""Configs are dataclasses, loaded from YAML, with dotted overrides (`--set train.lr=1e-3`).

Unknown keys fail before anything runs, naming the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vla.errors import ConfigError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIRS = (Path.cwd() / "configs", REPO_ROOT / "configs")


def find_config(name: str | Path, kind: str) -> Path:
    """A YAML file by path, or by preset name under configs/<kind>/ (e.g. `tiny` -> configs/model/tiny.yaml)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"{path}: no such config file")
        return path
    for root in CONFIG_DIRS:
        candidate = root / kind / f"{name}.yaml"
        if candidate.exists():
            return candidate
    known = sorted({p.stem for root in CONFIG_DIRS if (root / kind).is_dir() for p in (root / kind).glob("*.yaml")})
    raise ConfigError(f"no {kind} config named {name!r}; known: {', '.join(known) or 'none'}")


def load_yaml(path: str | Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`["model.chunk_size=8", "train.lr=1e-3"]` applied to a nested dict (values parsed as YAML)."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, refusing keys the dataclass does not have."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
        raise ConfigError(f"unknown config key '{where}{key}'{hint}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for option in options:
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return from_dict(option, value, where + ".")
        return _convert(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where + ".")
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        return list(value) if origin is list else tuple(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "3e-3" (no dot) as a string
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def merge(base: dict, extra: dict) -> dict:
    """Nested dict update: `extra`'s keys win, sections merge."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(a) | set(b))
    out = []
    for key in keys:
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out
