"""Strict configuration dataclasses.

Every knob of a command is one field of one dataclass, with its type, default, help, allowed values
and range in the field's metadata. `from_dict` rejects unknown keys, wrong types and out-of-range
values before any compute, naming the key and what is allowed; `add_arguments` turns the fields into
command-line flags (`train_size` -> `--train-size`), so flags always mirror the config keys."""

from __future__ import annotations

import argparse
import math
import dataclasses
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Mapping

from .registry import ConfigError, did_you_mean


def option(default, help: str, *, choices: Callable[[], list] | None = None, min=None, max=None,
           check: Callable[[Any], None] | None = None):
    """A config field: `choices` lists allowed values (called lazily, so registries can fill up),
    `min`/`max` bound numbers (inclusive), `check` raises ConfigError for anything else."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "max": max, "check": check})


def redefault(cls, name: str, default):
    """Field `name` of dataclass `cls` with another default (the same help, choices and bounds): how
    a subclass changes a default for its own methods without repeating the field."""
    inherited = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field(default=default, metadata=inherited.metadata)


def _base_type(tp) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of an annotation such as `int | None`."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return tp, False


def _coerce(name: str, value, tp) -> Any:
    base, nullable = _base_type(tp)
    if value is None:
        if nullable:
            return None
        raise ConfigError(name, None, f"a value of type {base.__name__}")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # inf and nan pass every bound check, then break the maths
                raise ConfigError(name, value, "a finite number")
            return number
    elif base is str:
        if isinstance(value, str):
            return value
    allowed = f"a value of type {base.__name__}" + (" or null" if nullable else "")
    raise ConfigError(name, value, allowed)


def _check_field(f: dataclasses.Field, value, tp) -> Any:
    value = _coerce(f.name, value, tp)
    if value is None:
        return value
    meta = f.metadata
    if meta.get("choices") is not None:
        choices = meta["choices"]()
        if value not in choices:
            raise ConfigError(f.name, value, ", ".join(map(str, choices)), did_you_mean(value, choices))
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ConfigError(f.name, value, f"a number {bounds}")
    if meta.get("check") is not None:
        meta["check"](value)
    return value


def from_dict(cls, data: Mapping[str, Any]):
    """Build and validate a `cls` instance from a mapping; unknown keys are errors."""
    names = [f.name for f in dataclasses.fields(cls)]
    if hasattr(cls, "with_preset"):  # a preset fills in keys that were not given explicitly
        data = cls.with_preset(dict(data))
    for key in data:
        if key not in names:
            raise ConfigError(key, data[key], "known keys only: " + ", ".join(names),
                              f"{key!r} is not a {cls.__name__} key; " + (did_you_mean(key, names) or ""))
    hints = typing.get_type_hints(cls)
    values = {f.name: _check_field(f, data[f.name], hints[f.name]) for f in dataclasses.fields(cls) if f.name in data}
    config = cls(**values)
    for f in dataclasses.fields(cls):  # defaults are checked too, so a bad default cannot slip through
        if f.name not in data:
            _check_field(f, getattr(config, f.name), hints[f.name])
    if hasattr(config, "validate"):
        config.validate()
    return config


def to_dict(config) -> dict[str, Any]:
    """The config as plain keys and values (what `from_dict` reads back)."""
    return config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)


def keys(cls) -> list[str]:
    """The config keys of `cls`: its fields, or what a composite config's `keys()` says."""
    return cls.keys() if hasattr(cls, "keys") else [f.name for f in dataclasses.fields(cls)]


def build(cls, data: Mapping[str, Any]):
    """`from_dict`, or a composite config's own `from_mapping` (e.g. a cell: run keys + method options)."""
    return cls.from_mapping(data) if hasattr(cls, "from_mapping") else from_dict(cls, data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of config keys (JSON is YAML, so one parser reads both)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "an existing YAML or JSON file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError("config", str(path), "a valid YAML or JSON file", yaml_error_text(error)) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("config", str(path), "a readable YAML or JSON text file", str(error)) from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "a mapping of config keys to values")
    return data


def yaml_error_text(error) -> str:
    """A YAML error in one line: where (line and column, 1-based) and what."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(str(getattr(error, "problem", None) or error).split())
    return where + what


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per config key (a composite config adds its own groups). Flags default to 'not
    given', so they override only what they name."""
    if hasattr(cls, "add_arguments"):
        cls.add_arguments(parser)
        return
    group = parser.add_argument_group(f"{cls.__name__} (the same keys work in --config files)")
    add_fields(group, cls, dataclasses.fields(cls))


def add_fields(group, cls, fields, default_text: Callable[[dataclasses.Field], str] | None = None) -> None:
    """Flags for `fields` of dataclass `cls` in an argparse group; `default_text` shows a field's
    default (default: its value)."""
    hints = typing.get_type_hints(cls)
    for f in fields:
        base, nullable = _base_type(hints[f.name])
        shown = default_text(f) if default_text else str(f.default)
        help_text = f"{f.metadata.get('help', '')} [default: {shown}]"
        if base is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            continue
        group.add_argument(flag(f.name), dest=f.name, type=_cli_parser(f.name, base, nullable),
                           default=argparse.SUPPRESS, metavar=base.__name__.upper(), help=help_text)


def _cli_parser(name: str, base: type, nullable: bool):
    def parse(text: str):
        if nullable and text.lower() in ("none", "null", "all"):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: got {text!r}; allowed: a value of type {base.__name__}")

    return parse


def resolve(cls, args: argparse.Namespace):
    """Config from `--config FILE` (if any) overridden by the flags given on the command line."""
    data = read_config_file(args.config) if getattr(args, "config", None) else {}
    names = set(keys(cls))
    data.update({k: v for k, v in vars(args).items() if k in names})
    return build(cls, data)

