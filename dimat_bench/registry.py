"""A name -> factory registry, one per kind of plug-in (datasets, splits, topologies, models...)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

import numpy as np

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad user input: names the field, the bad value and what is allowed."""

    def __init__(self, field: str, value, allowed: str, hint: str = ""):
        self.field, self.value, self.allowed, self.hint = field, value, allowed, hint
        message = f"{field}: got {value!r}; allowed: {allowed}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class Diverged(ArithmeticError):
    """Numbers computed from the agents are no longer finite (e.g. the activations of a model whose
    weights grew until they overflow): the run records divergence instead of crashing."""


def did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f"did you mean {close[0]!r}?" if close else ""


class Registry(Generic[T]):
    """Maps a name to a factory. `field` is the config key the name comes from (for error messages)."""

    def __init__(self, field: str):
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.field} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(self.field, name, ", ".join(self.names()), did_you_mean(name, self.names()))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def derive_seed(seed: int, *keys: int | str) -> int:
    """An independent 63-bit seed for one stream (e.g. ("init", agent)) of a run seed."""
    words = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") % 2**32 for k in keys]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> np.uint64(1))
