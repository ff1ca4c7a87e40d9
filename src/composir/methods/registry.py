"""Methods registered by name (as timm's model registry): adding a method is adding one file."""

from __future__ import annotations

from typing import Any

from composir.encoders.base import Encoder
from composir.errors import ConfigError
from composir.utils.typed import build_dataclass

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def build_method(name: str, encoder: Encoder, config: dict[str, Any] | None = None):
    _import_all()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {sorted(_METHODS)}")
    cls = _METHODS[name]
    return cls(encoder, build_dataclass(cls.config_class, config or {}, "method.config"))


def resolved_config(name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's whole config, defaults filled in (what a run with ``config`` really used)."""
    from dataclasses import asdict

    _import_all()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {sorted(_METHODS)}")
    return asdict(build_dataclass(_METHODS[name].config_class, config or {}, "method.config"))


def training_settings(name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the method's whole config that changes what training does."""
    _import_all()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {sorted(_METHODS)}")
    return build_dataclass(_METHODS[name].config_class, config or {}, "method.config").training_settings()


def available_methods() -> list[str]:
    _import_all()
    return sorted(_METHODS)


def _import_all() -> None:
    import importlib
    import pkgutil

    import composir.methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in {"base", "batch", "registry", "losses"}:
            importlib.import_module(f"composir.methods.{info.name}")
