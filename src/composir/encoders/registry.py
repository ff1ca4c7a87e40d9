"""Encoders registered by name, each in its own module (``@register_encoder("name")`` on a builder
``(pretrained, config) -> Encoder``): adding a backbone is adding one file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composir.encoders.base import Encoder
from composir.errors import ConfigError

Builder = Callable[..., Encoder]
# A small randomly initialised instance built through the encoder's real loading path, for tests and
# smoke runs: (a scratch folder it may write files into) -> Encoder. Every encoder registers one.
Example = Callable[[Path], Encoder]
_BUILDERS: dict[str, Builder] = {}
_HELP: dict[str, str] = {}
_EXAMPLES: dict[str, Example] = {}
_NOT_ENCODERS = {"base", "registry"}


def register_encoder(name: str, example: Example):
    """Register ``builder(pretrained=None, config=None) -> Encoder`` under ``name`` (its docstring's
    first line is its help), with a small random ``example``; a name is taken once."""

    def wrap(fn: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"encoder {name!r} is registered twice")
        _BUILDERS[name] = fn
        _HELP[name] = (fn.__doc__ or "").strip().split("\n")[0]
        _EXAMPLES[name] = example
        return fn

    return wrap


def example_encoder(name: str, workdir: Path) -> Encoder:
    """The registered small random instance of ``name`` (files it needs are written into ``workdir``)."""
    _import_all()
    return _EXAMPLES[name](workdir)


def _import_all() -> None:
    import composir.encoders as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_ENCODERS:
            importlib.import_module(f"composir.encoders.{info.name}")


def build_encoder(name: str, pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    _import_all()
    if name not in _BUILDERS:
        raise ConfigError(f"encoder.name: unknown encoder {name!r}; known: {sorted(_BUILDERS)}")
    try:
        return _BUILDERS[name](pretrained=pretrained, config=config)
    except TypeError as exc:  # a config key the backbone's own config class does not take
        raise ConfigError(f"encoder.config ({name}): {exc}") from exc


def available_encoders() -> list[str]:
    _import_all()
    return sorted(_BUILDERS)


def encoder_help(name: str) -> str:
    _import_all()
    return _HELP.get(name, "")
