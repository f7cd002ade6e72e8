"""A small name -> class registry, one per kind (defences, attacks, judges).

Adding a new defence is one new class with ``@DEFENSES.register("name")``; nothing else changes.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

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
