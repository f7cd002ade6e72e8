"""A small name -> class registry, one per kind (defences, attacks, judges, flaggers, ...), and the one base
every plugin with options shares.

Adding a new defence is one new class with ``@DEFENSES.register("name")``; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, ClassVar, Generic, TypeVar

from .config import from_dict
from .errors import UnlearnableError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: type | None = None):
        self.kind = kind
        self.base = base
        self._items: dict[str, type] = {}

    def register(self, name: str, *aliases: str) -> Callable[[type], type]:
        def decorator(cls: type) -> type:
            if self.base is not None and not issubclass(cls, self.base):
                raise TypeError(f"{cls.__name__} must subclass {self.base.__name__} to be a {self.kind}")
            for key in (name, *aliases):
                if key in self._items:
                    raise ValueError(f"{self.kind} {key!r} is already registered by {self._items[key].__name__}")
                self._items[key] = cls
            cls.name = name
            return cls

        return decorator

    def get(self, name: str) -> type:
        if name not in self._items:
            known = ", ".join(self.names())
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnlearnableError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {known}")
        return self._items[name]

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted({cls.name for cls in self._items.values()})

    def __contains__(self, name: str) -> bool:
        return name in self._items


@dataclasses.dataclass
class NoOptions:
    """A plugin without options."""


class Plugin:
    """What every plugin with options shares: its options as a dataclass ``Config``, built from a config file's
    entry by :meth:`from_options` (an unknown key or a wrong type is one line naming
    ``<options_key>.<name>.<key>``), and :meth:`describe` for the results it touches."""

    name: str = ""
    Config: type = NoOptions
    #: where a config file holds this kind's options (``defense_options``, ``attack_options``, ...)
    options_key: ClassVar[str] = "options"

    def __init__(self, config: Any = None, **options: Any):
        self.config = config if config is not None else self.Config(**options)
        self.info: dict[str, Any] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any], *, where: str | None = None, **runtime: Any):
        """Build from a config file's entry (unknown keys and wrong types name the key, under ``where``: by
        default ``<options_key>.<name>``)."""
        return cls(from_dict(cls.Config, dict(options), where or f"{cls.options_key}.{cls.name}"), **runtime)

    @classmethod
    def option_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls.Config)}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "options": dataclasses.asdict(self.config), **self.info}
