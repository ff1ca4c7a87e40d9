"""Backbones behind one ``Encoder`` interface, built by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from composir.encoders.base import Encoder
from composir.errors import ConfigError

_BUILDERS: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str):
    def wrap(fn: Callable[..., Encoder]):
        _BUILDERS[name] = fn
        return fn

    return wrap


@register_encoder("tiny")
def _build_tiny(pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    from composir.encoders.tiny import TinyConfig, TinyEncoder
    from composir.utils.typed import build_dataclass

    encoder = TinyEncoder(build_dataclass(TinyConfig, config or {}, "encoder.config"))
    if pretrained:
        from safetensors.torch import load_file

        encoder.load_state_dict(load_file(pretrained))
    return encoder


@register_encoder("blip2")
def _build_blip2(pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    from composir.encoders.blip2 import load_blip2

    return load_blip2(pretrained, config)


@register_encoder("openclip")
def _build_openclip(pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    from composir.encoders.openclip import load_openclip

    return load_openclip(pretrained, config)


def build_encoder(name: str, pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    if name not in _BUILDERS:
        raise ConfigError(f"encoder.name: unknown encoder {name!r}; known: {sorted(_BUILDERS)}")
    try:
        return _BUILDERS[name](pretrained=pretrained, config=config)
    except TypeError as exc:  # a config key the backbone's own config class does not take
        raise ConfigError(f"encoder.config ({name}): {exc}") from exc


def available_encoders() -> list[str]:
    return sorted(_BUILDERS)


__all__ = ["Encoder", "available_encoders", "build_encoder", "register_encoder"]
