"""Methods registered by name (as timm's model registry): adding a method is adding one file."""

from __future__ import annotations

from typing import Any

from composir.encoders.base import Encoder
from composir.errors import ConfigError
from composir.utils.typed import build_dataclass

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Register a ``RetrievalMethod`` subclass under ``name``; a name is taken once."""

    def wrap(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def unregister_method(name: str) -> None:
    """Remove a registration (a test's probe method, say)."""
    _METHODS.pop(name, None)


def method_class(name: str):
    _import_all()
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {sorted(_METHODS)}")
    return _METHODS[name]


def _method_config(name: str, config: dict[str, Any] | None):
    """The method's config dataclass from ``config`` (defaults filled in, checked)."""
    built = build_dataclass(method_class(name).config_class, config or {}, "method.config")
    if hasattr(built, "validate"):  # the method's own cross-field rules, before anything is built
        built.validate()
    return built


def build_method(name: str, encoder: Encoder, config: dict[str, Any] | None = None):
    return method_class(name)(encoder, _method_config(name, config))


def resolved_config(name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's whole config, defaults filled in (what a run with ``config`` really used)."""
    from dataclasses import asdict

    return asdict(_method_config(name, config))


def training_settings(name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The part of the method's whole config that changes what training does."""
    return _method_config(name, config).training_settings()


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
