"""Every shipped config parses and names a registered encoder and method with valid keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from composir.data import readable_benchmarks
from composir.encoders import available_encoders
from composir.methods import available_methods
from composir.methods.registry import _METHODS
from composir.train import load_config
from composir.utils.typed import build_dataclass

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [*sorted((ROOT / "configs").glob("*.yaml")), ROOT / "src/composir/configs/demo.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.encoder.name in available_encoders()
    assert cfg.method.name in available_methods()
    config_class = _METHODS[cfg.method.name].config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    assert set(cfg.method.config or {}) <= fields
    typed = build_dataclass(config_class, cfg.method.config, "method.config")  # types checked too
    if hasattr(typed, "validate"):
        typed.validate()
    assert cfg.data.benchmark in readable_benchmarks()
