"""Dataclasses from plain mappings (YAML, ``--set``), checked against their type hints.

One builder for run configs, method configs and encoder configs, so that a wrong key or a value
of the wrong type is one error naming ``section.key`` and what was expected, before any work.
YAML 1.1 reads numbers like ``1e-3`` as strings: such strings become numbers where a number is
expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from composir.errors import ConfigError


def build_dataclass(cls: type, data: Any, where: str, nested: dict[str, type] | None = None):
    """``cls(**data)`` with unknown keys and wrong types named; ``nested`` maps field -> dataclass."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys to values, got {data!r:.60}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        if nested and name in nested:
            kwargs[name] = build_dataclass(nested[name], value, key)
        else:
            kwargs[name] = coerce(value, hints[name], key)
    return cls(**kwargs)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any value"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as ``hint`` (str, int, float, bool, X | None, list[X], dict[...], Any) or a ConfigError."""
    try:
        return _coerce(value, hint)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r:.60}") from None


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is list:
        if not isinstance(value, list):
            raise TypeError
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item) for v in value]
    if origin is dict or hint is dict:
        if value is None:  # "method.config=null": no settings, the defaults
            return {}
        if not isinstance(value, dict):
            raise TypeError
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if hint in (int, float):
        if isinstance(value, bool) or value is None:
            raise TypeError
        number = hint(value)  # "1e-3" -> 0.001; "abc" -> ValueError
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if hint is int and isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
            raise ValueError
        return number
    if hint is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    return value
