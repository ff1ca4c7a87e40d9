"""Run configuration: YAML <-> nested dataclasses, with errors that name the bad key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from composir.errors import ConfigError


@dataclass
class DataConfig:
    benchmark: str = "synthetic"
    root: str = ""
    train_split: str = "train"
    val_splits: list[str] = field(default_factory=lambda: ["val"])
    num_frames: int = 1
    # Batches hold whole img_sets (CIRR groups / synthetic families) so that visually close
    # hard negatives are in-batch negatives.
    group_by_set: bool = True
    augment: str = "none"  # see composir.train.dataset.AUGMENTATIONS
    # A `composir cache` folder of the (frozen) vision tower's outputs for the train and val media:
    # training and evaluation then read features instead of pixels.
    feature_cache: str | None = None
    max_train_queries: int | None = None
    max_val_queries: int | None = None


@dataclass
class EncoderSection:
    name: str = "tiny"
    pretrained: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    freeze_vision: bool = False


@dataclass
class MethodSection:
    name: str = "combiner"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    batch_size: int = 64
    max_steps: int = 1000
    lr: float = 1e-4
    encoder_lr: float | None = None  # None: same as lr
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    grad_accum: int = 1
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU), bf16, fp16, off
    eval_every: int = 250
    save_every: int = 250
    keep_last: int = 2
    log_every: int = 10
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    eval_metric: str = "R@1"
    eval_batch_size: int = 128
    save_frozen: bool = False  # frozen backbone weights are rebuilt from `pretrained`, not saved
    # A run folder (its best checkpoint, else its latest) or a checkpoint folder: a fresh run starts
    # from every weight of it whose name and shape this model shares (fine-tune one method on
    # another's trained backbone). Optimizer, schedule and step start anew.
    init_from: str | None = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    method: MethodSection = field(default_factory=MethodSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "encoder": EncoderSection, "method": MethodSection, "train": TrainConfig}


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        if cls is RunConfig and name in _SECTIONS:
            kwargs[name] = _build(_SECTIONS[name], value or {}, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, fields[name], f"{where}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, f: dataclasses.Field, where: str) -> Any:
    """Numbers written the way YAML 1.1 reads as strings ("1e-3") become numbers; wrong types are named."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None and isinstance(value, str) and str(f.type).startswith(("float", "int")):
        default = 0.0 if str(f.type).startswith("float") else 0  # optional numbers, e.g. encoder_lr
    if value is None or default is None or isinstance(default, (dict, list, str)):
        return value
    kind = type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind in (int, float):
        try:
            number = kind(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return number
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``section.key=value`` strings (value parsed as YAML) into a nested dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form section.key=value")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    for pair in overrides or []:  # in order: "method.config=null" then "method.config={...}" replaces
        data = _merge(data, parse_overrides([pair]))
    try:
        return _build(RunConfig, data, str(path) if path else "config")
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data, "config")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from composir.utils.io import atomic_open

    with atomic_open(path, "w") as handle:
        yaml.safe_dump(cfg.to_dict(), handle, sort_keys=False)
