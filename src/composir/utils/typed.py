"""Dataclasses from plain mappings (YAML, ``--set``), checked against their type hints.

One builder for run configs, method configs and encoder configs, so that a wrong key or a value
of the wrong type is one error naming ``section.key`` and what was expected, before any work.
YAML 1.1 reads numbers like ``1e-3`` as strings: such strings become numbers where a number is
expected.
"""

from __future__ import annotations

import dataclasses
import math
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
            check_range(kwargs[name], fields[name].metadata.get("range", DEFAULT_RANGE), key)
    return cls(**kwargs)


INT_LIMIT = 2**31 - 1  # sizes and counts past this are a typo, and overflow what torch and numpy take


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric config field may take (declared with ``bounded``). Every number must be
    finite; a whole number without a declared range must be within +-INT_LIMIT."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        if not math.isfinite(value):
            return "must be a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'more than' if self.low_open else 'at least'} {self.low:g}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'less than' if self.high_open else 'at most'} {self.high:g}"
        return None


DEFAULT_RANGE = None  # numbers: finite; whole numbers: within +-INT_LIMIT


def bounded(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False) -> Any:  # fmt: skip
    """A dataclass field whose value must lie in the range (checked when the config is built)."""
    return dataclasses.field(default=default, metadata={"range": Range(low, high, low_open, high_open)})


def check_range(value: Any, declared: Range | None, where: str) -> None:
    """Every number in ``value`` (lists and mappings too) finite and within its range."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_range(item, declared, where)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            check_range(item, declared, f"{where}.{k}")
        return
    if isinstance(value, (int, float)):
        rule = declared or (Range(-INT_LIMIT, INT_LIMIT) if isinstance(value, int) else Range())
        if isinstance(value, int) and declared is not None and rule.high is None:
            rule = dataclasses.replace(rule, high=INT_LIMIT)
        problem = rule.problem(float(value))
        if problem:
            raise ConfigError(f"{where}: {problem}, got {value!r:.60}")


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
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite whole number
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
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] in (int, float, str, bool):
            return {k: _coerce(v, args[1]) for k, v in value.items()}
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
