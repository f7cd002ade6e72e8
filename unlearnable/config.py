"""One config system: nested dataclasses, filled from defaults < a config file < explicit command-line flags.

* :func:`from_dict` builds a config from a mapping (a YAML/TOML/JSON file, or stored metadata); unknown keys and
  wrong types are errors that name the key; a class's ``__aliases__`` keeps renamed keys working.
* :func:`add_config_flags` generates one flag per leaf field (``--vectors.scale``, ``--finetune.lr``), typed and
  documented from the field, plus the short aliases a command keeps (``--vector-scale``). Flags default to
  *absent*, so only the ones given override the file: an explicit ``--seed 0`` wins over a file's seed.
* :func:`build_config` applies that one rule: ``preset (or defaults) < --config file < explicit flags``.
* :func:`validate` checks a whole config before anything slow runs; every API ``run_*`` function calls it first.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import inspect
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from .errors import UnlearnableError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    if not isinstance(data, dict):
        raise UnlearnableError(f"config{' ' + where if where else ''} must be a mapping, got {type(data).__name__}")
    data = _resolve_aliases(cls, data, where)
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
        if isinstance(value, str) and args and args[0] is str:  # ``judges: keyword`` means [keyword]
            value = [value]
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
    if tp in (int, str, bool) and type(value) is not tp:
        raise UnlearnableError(f"config key {path!r} must be {tp.__name__}, got {type(value).__name__} {_show(value)}")
    if tp is float and not isinstance(value, float):
        raise UnlearnableError(f"config key {path!r} must be a number, got {type(value).__name__} {_show(value)}")
    return value


def normalize_numbers(obj) -> None:
    """Turn whole numbers given for ``float`` fields into floats, in place (``epochs=3`` -> ``3.0``).

    Why: a config is hashed into cache keys and run keys, and ``3`` and ``3.0`` hash differently although they
    train the same; Python defaults and config files then miss each other's cache entries."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if _scalar(hints[f.name]) is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))


def _show(value, limit: int = 60) -> str:
    """A short repr for error messages (safe for huge numbers and long lists)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _resolve_aliases(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Rewrite old key names (``cls.__aliases__``: old key -> dotted path of the new field) into the new ones."""
    for old, now in getattr(cls, "__retired__", {}).items():
        if old in data:
            path = f"{where}.{old}" if where else old
            raise UnlearnableError(f"config key {path!r} has moved: set {now} instead")
    aliases = getattr(cls, "__aliases__", {})
    if not any(k in aliases for k in data):
        return data
    data = copy.deepcopy(data)
    for old, new in aliases.items():
        if old not in data:
            continue
        value = data.pop(old)
        *parents, leaf = new.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if leaf in node:
            path = f"{where}.{old}" if where else old
            raise UnlearnableError(f"config key {path!r} is the old name of {new!r}; give only one of them")
        node[leaf] = value
    return data


def _resolve_aliases_deep(cls, data: Any, where: str) -> Any:
    """:func:`_resolve_aliases` at every level of nested configs (before a file is laid over full defaults)."""
    if not isinstance(data, dict):
        return data
    data = _resolve_aliases(cls, data, where)
    hints, names = typing.get_type_hints(cls), {f.name for f in dataclasses.fields(cls)}
    return {k: _resolve_aliases_deep(hints[k], v, f"{where}.{k}" if where else k)
            if k in names and dataclasses.is_dataclass(hints[k]) else v for k, v in data.items()}


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
    """``override`` laid over ``base``, recursively for nested mappings (lists are replaced whole)."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def build_config(cls: type[T], *, preset: T | None = None, file: str | Path | None = None,
                 overrides: dict[str, Any] | None = None) -> T:
    """The one precedence rule: ``preset`` (default: ``cls()``) < the config ``file`` < ``overrides`` (dotted
    paths, e.g. ``{"vectors.scale": 0.5}``: the flags that were given)."""
    # the whole default config underneath, so a file or flag that sets one key of a nested config keeps the
    # parent's defaults for its other keys (DemoConfig.vectors is recommended(), not VectorConfig())
    data = dataclasses.asdict(preset if preset is not None else cls())
    if file is not None:
        data = merge(data, _resolve_aliases_deep(cls, load_config_file(file), ""))
    for path, value in (overrides or {}).items():
        set_dotted(data, path, value)
    return from_dict(cls, data)


def validate(cfg: T, where: str = "") -> T:
    """Every check a config can make before any model loads, over its nested configs too; returns ``cfg``.

    * whole numbers (and lists of them) are at least their field's ``metadata["min"]``: 0 by default, since sizes,
      steps and seeds are never negative; a field whose 0 means nothing says ``min=1``; a share says ``max=1``;
    * a field with ``metadata["choices"]`` holds one of them (each item, for a list);
    * a field's own ``metadata["check"]`` (called with the value unless it is None or empty): paths that must
      exist and hold what they must, registry names. The check raises the one-line error itself.

    Every ``run_*`` API function calls it first, so every command's config (and one built in Python) goes
    through here once: a typo fails in a second instead of after the model has loaded."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, path = getattr(cfg, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, f"{path}.")
            continue
        _check_bounds(f, hints[f.name], value, path)
        _check_choices(f, value, path)
        check = f.metadata.get("check")
        if check is not None and value not in (None, "", []):
            named = "flag" in inspect.signature(check).parameters  # so its error names the flag as typed
            check(value, **({"flag": flag_name(path)} if named else {}))
    return cfg


def _check_choices(f: dataclasses.Field, value, path: str) -> None:
    choices = f.metadata.get("choices")
    if choices is None:
        return
    bad = [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v not in choices]
    if bad:
        raise UnlearnableError(f"{path}: {bad[0]!r} is not one of {', '.join(map(str, choices))}; set "
                               f"{flag_name(path)} or {path} in the config file")


def flag_name(path: str) -> str:
    """The command-line flag of a dotted config path: ``data.harmful_pairs`` -> ``--data.harmful-pairs``."""
    return "--" + path.replace("_", "-")


def _check_bounds(f: dataclasses.Field, tp, value, path: str) -> None:
    scalar = _scalar(tp)
    inner = (typing.get_args(scalar) or (None,))[0] if typing.get_origin(scalar) in (list, tuple) else scalar
    if "min" not in f.metadata and "max" not in f.metadata and inner is not int:
        return
    low, high = f.metadata.get("min", 0), f.metadata.get("max")
    values = [v for v in (value if isinstance(value, (list, tuple)) else [value])
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for bound, bad in (("at least", [v for v in values if v < low]),
                       ("at most", [v for v in values if high is not None and v > high])):
        if bad:
            meaning = f" ({f.metadata['help']})" if f.metadata.get("help") else ""
            raise UnlearnableError(f"{path} must be {bound} {low if bound == 'at least' else high}, not "
                                   f"{_show(bad[0])}{meaning}; set {flag_name(path)} or {path} in the config file")


# ------------------------------------------------------------------------------------------ flags


def leaf_fields(cls, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(dotted path, field, type)`` for every leaf field of a (nested) dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, tp


def retired_paths(cls, prefix: str = "") -> Iterator[str]:
    """The dotted path of every key a (nested) config retired (its class's ``__retired__``)."""
    yield from (f"{prefix}{old}" for old in getattr(cls, "__retired__", {}))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from retired_paths(hints[f.name], f"{prefix}{f.name}.")


def _scalar(tp):
    """The non-None member of ``X | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _flag_parser(tp, flag: str) -> Callable[[str], Any] | None:
    """A converter from the command line's text to a value of type ``tp`` (None: not settable by a flag)."""
    tp = _scalar(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        inner = _flag_parser((typing.get_args(tp) or (str,))[0], flag)
        return None if inner is None else lambda text: [inner(x.strip()) for x in text.split(",") if x.strip()]
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        def convert(text: str, tp=tp):
            try:
                return tp(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {'a number' if tp is float else 'a whole number'}, "
                                                 f"not {text!r}") from None
        return convert
    return None  # mappings: config files only


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_config_flags(parser: argparse.ArgumentParser, cls, *, aliases: dict[str, str] | None = None,
                     skip: Sequence[str] = ()) -> None:
    """Add one flag per leaf field of ``cls`` (nested configs in their own help group) and the ``aliases``
    (flag -> dotted path). Every flag's value lands in the namespace under its dotted path, only when given.

    Nested ``seed`` fields get no flag: every experiment propagates its one seed into its parts."""
    groups: dict[str, Any] = {}
    by_path = {}
    defaults = _default_values(cls)
    for path, f, tp in leaf_fields(cls):
        by_path[path] = (f, tp)
        convert = _flag_parser(tp, path)
        if convert is None or path in skip or path.endswith(".seed"):
            continue
        group_name = path.rpartition(".")[0]
        if group_name and group_name not in groups:
            groups[group_name] = parser.add_argument_group(f"{group_name} settings (also settable in --config)")
        target = groups.get(group_name, parser)
        kwargs: dict[str, Any] = {"dest": path, "default": argparse.SUPPRESS, "type": convert,
                                  "help": _help(f, defaults.get(path, _field_default(f)))}
        if _scalar(tp) is bool:
            kwargs.update(nargs="?", const=True, metavar="true|false")
        else:
            kwargs["metavar"] = _metavar(tp)
        target.add_argument(flag_name(path), **kwargs)
    for path in retired_paths(cls):  # accepted, so that building the config says where the key went
        parser.add_argument(flag_name(path), dest=path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for flag, path in (aliases or {}).items():
        f, tp = by_path[path]
        parser.add_argument(flag, dest=path, default=argparse.SUPPRESS, type=_flag_parser(tp, path),
                            metavar=_metavar(tp), help=f"same as --{path.replace('_', '-')}")


def _default_values(cls) -> dict[str, Any]:
    """Every leaf's default as the command has it (a nested config's value in ``cls()``, e.g. the demo's
    recommended vectors, not the nested class's own default); empty where ``cls`` has no default instance."""
    try:
        instance = cls()
    except Exception:  # noqa: BLE001 - a config without defaults: the fields' own defaults are shown
        return {}
    values = {}
    for path, _, _ in leaf_fields(cls):
        value = instance
        for part in path.split("."):
            value = getattr(value, part, None)
        values[path] = value
    return values


def _field_default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)


def _help(f: dataclasses.Field, default: Any) -> str:
    text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help strings with %
    if isinstance(default, list):
        default = ",".join(str(x) for x in default)
    if default is None or default == "":
        return text
    return f"{text} (default: {default})" if text else f"default: {default}"


def _metavar(tp) -> str:
    tp = _scalar(tp)
    if typing.get_origin(tp) in (list, tuple):
        return "A,B,..."
    return {int: "N", float: "X", str: "TEXT"}.get(tp, "VALUE")


def given_flags(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The config values the command line set explicitly: ``{dotted path: value}``."""
    paths = {path for path, _, _ in leaf_fields(cls)} | set(retired_paths(cls))
    return {k: v for k, v in vars(args).items() if k in paths}
