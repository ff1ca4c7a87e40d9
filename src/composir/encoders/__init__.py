"""Backbones behind one ``Encoder`` interface, registered by name in their own modules."""

from __future__ import annotations

from composir.encoders.base import Encoder
from composir.encoders.registry import (
    available_encoders,
    build_encoder,
    encoder_help,
    example_encoder,
    register_encoder,
)

__all__ = ["Encoder", "available_encoders", "build_encoder", "encoder_help", "example_encoder", "register_encoder"]
