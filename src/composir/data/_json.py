"""Helpers that read annotation files and report problems by file, entry and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from composir.errors import AnnotationError


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise AnnotationError(path, "annotation file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not UTF-8 text ({exc.reason})") from exc
    except RecursionError:
        raise AnnotationError(path, "JSON nested too deeply to be an annotation file") from None


def expect_type(path: Path, obj: Any, kind: type | tuple[type, ...], what: str = "top-level value") -> Any:
    if not isinstance(obj, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise AnnotationError(path, f"{what} must be a {names}, got {type(obj).__name__}")
    return obj


def field(path: Path, entry: dict, index: object, name: str, kind: type | tuple[type, ...], *, optional=False):
    """Fetch ``entry[name]`` checking its type; errors name the file, entry and field."""
    if not isinstance(entry, dict):
        raise AnnotationError(path, f"entry must be an object, got {type(entry).__name__}", entry=index)
    if name not in entry:
        if optional:
            return None
        raise AnnotationError(path, "missing field", entry=index, field=name)
    value = entry[name]
    # bool is an int subclass; an id given as true/false is a mistake, not a number.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise AnnotationError(path, f"expected {_kind_name(kind)}, got bool", entry=index, field=name)
    if not isinstance(value, kind):
        raise AnnotationError(
            path, f"expected {_kind_name(kind)}, got {type(value).__name__} {value!r:.60}", entry=index, field=name
        )
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)


def str_list(path: Path, entry: dict, index: object, name: str, *, optional=False) -> list[str] | None:
    value = field(path, entry, index, name, list, optional=optional)
    if value is None:
        return None
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise AnnotationError(path, f"item {i} must be a string, got {type(item).__name__}", index, name)
    return value
