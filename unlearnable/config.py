"""Nested dataclass configs <-> dicts, YAML/TOML files, and ``--set key.sub=value`` overrides.

Unknown keys and wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import UnlearnableError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    if not isinstance(data, dict):
        raise UnlearnableError(f"config{' ' + where if where else ''} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnlearnableError(f"unknown config key {path!r}.{hint} Known keys here: {', '.join(fields)}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except UnlearnableError as exc:  # a __post_init__ check: say where in the file
        if not where:
            raise
        raise UnlearnableError(f"config {where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UnlearnableError(f"bad config{' ' + where if where else ''}: {exc}") from None


def _coerce(tp, value, path):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin is typing.Union or str(origin) == "types.UnionType":
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, path)
            except UnlearnableError:
                continue
        raise UnlearnableError(f"config key {path!r} has the wrong type ({type(value).__name__})")
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UnlearnableError(f"config key {path!r} must be a mapping, got {type(value).__name__}")
        inner = args[1] if len(args) == 2 else Any
        return {k: (_coerce(inner, v, f"{path}.{k}") if inner is not Any else v) for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UnlearnableError(f"config key {path!r} must be a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        return [(_coerce(inner, v, f"{path}[{i}]") if inner is not Any else v) for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise UnlearnableError(f"config key {path!r} must be a finite number, got {_show(value)}")
        return number
    if tp in (int, str, bool) and not (type(value) is tp):
        raise UnlearnableError(f"config key {path!r} must be {tp.__name__}, got {type(value).__name__} {_show(value)}")
    if tp is float and not isinstance(value, float):
        raise UnlearnableError(f"config key {path!r} must be a number, got {type(value).__name__} {_show(value)}")
    return value


def _show(value, limit: int = 60) -> str:
    """A short repr for error messages (safe for huge numbers and long lists)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UnlearnableError(f"config file {path} {'is a folder' if path.is_dir() else 'does not exist'}; check "
                               "the --config path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnlearnableError(f"config file {path} is not UTF-8 text; expected YAML, TOML or JSON") from None
    except OSError as exc:
        raise UnlearnableError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise UnlearnableError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    except UnlearnableError:
        raise
    except Exception as exc:  # noqa: BLE001 - parser errors
        raise UnlearnableError(f"config file {path} could not be parsed: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise UnlearnableError(f"config file {path} must hold a mapping of keys to values")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
