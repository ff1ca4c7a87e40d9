"""Run configuration: YAML <-> nested dataclasses, with errors that name the bad key."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from composir.errors import ConfigError
from composir.utils.typed import build_dataclass


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
    augment: str = "none"  # see composir.data.augment.AUGMENTATIONS
    # A `composir cache` folder of the (frozen) vision tower's outputs for the train and val media:
    # training and evaluation then read features instead of pixels.
    feature_cache: str | None = None
    max_train_queries: int | None = None
    max_val_queries: int | None = None
    # A caption cache (`composir caption`, data/captions.py): its `caption_stage` becomes every
    # target's and gallery item's caption, for methods whose target side reads one (CSMCIR).
    target_captions: str | None = None
    caption_stage: str = "final"
    # Reasoning chains per query (`composir annotate-cot`, data/chains.py) for CIR-CoT's training.
    chains: str | None = None
    # Media files the splits name but that are not on disk: an error before training starts
    # (data/media_check.py), or, when allowed, skipped and listed. Not checked with a feature cache.
    allow_missing: bool = False


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
    # The encoder is held still (its learning rate 0) for this many first steps: a method's own
    # modules learn to be used before the backbone absorbs the loss; then it trains at encoder_lr.
    encoder_frozen_steps: int = 0
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


def _build(data: Any, where: str) -> RunConfig:
    if isinstance(data, dict):
        for section in _SECTIONS:
            if section in data and data[section] is None:  # "--set train=null" would mean every default
                raise ConfigError(f"{section}: a section cannot be null; set its keys (e.g. {section}.KEY=VALUE)")
    return build_dataclass(RunConfig, data, where, nested=_SECTIONS)


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
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({first})") from None
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
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if data is None:
            raise ConfigError(f"{path}: the config is empty (it needs at least data.root and method.name)")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, encoder, method, train), "
                              f"got {type(data).__name__}")  # fmt: skip
    for pair in overrides or []:  # in order: "method.config=null" then "method.config={...}" replaces
        data = _merge(data, parse_overrides([pair]))
    try:
        cfg = _build(data, "")
        validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    return cfg


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(data, "")


_AMP_MODES = ("auto", "bf16", "fp16", "off")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")  # a path, not a tag or a hub id
# (section, key, lowest allowed value) for the numbers that must be positive or non-negative.
_LOWER_BOUNDS = [
    ("data", "num_frames", 1),
    ("data", "max_train_queries", 1),
    ("data", "max_val_queries", 1),
    ("train", "batch_size", 1),
    ("train", "max_steps", 1),
    ("train", "weight_decay", 0),
    ("train", "warmup_steps", 0),
    ("train", "encoder_frozen_steps", 0),
    ("train", "grad_clip", 0),
    ("train", "grad_accum", 1),
    ("train", "eval_every", 1),
    ("train", "save_every", 1),
    ("train", "keep_last", 1),
    ("train", "log_every", 1),
    ("train", "num_workers", 0),
    ("train", "eval_batch_size", 1),
]


def validate_config(cfg: RunConfig) -> None:
    """Every value of a run config checked against what it can be, before anything is built:
    ranges, names of benchmarks, encoders, methods, augmentations, metrics and devices."""
    from composir.data import protocol_of, readable_benchmarks
    from composir.data.augment import AUGMENTATIONS
    from composir.data.captions import STAGES
    from composir.encoders import available_encoders
    from composir.methods import available_methods

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    d, t = cfg.data, cfg.train
    known = readable_benchmarks()
    need(d.benchmark in known, "data.benchmark", f"unknown benchmark {d.benchmark!r}; known: {known}")
    need(bool(d.root), "data.root", "must name the benchmark's folder")
    need(bool(d.train_split), "data.train_split", "must name a split")
    need(bool(d.val_splits) and all(d.val_splits), "data.val_splits", "must list at least one split name")
    need(d.augment in AUGMENTATIONS, "data.augment", f"unknown {d.augment!r}; known: {sorted(AUGMENTATIONS)}")
    need(d.caption_stage in STAGES, "data.caption_stage", f"unknown {d.caption_stage!r}; known: {list(STAGES)}")
    # (A missing caption cache is reported when the data is read, before training starts.)
    for section, key, low in _LOWER_BOUNDS:
        value = getattr(getattr(cfg, section), key)
        need(value is None or value >= low, f"{section}.{key}", f"must be at least {low}, got {value}")
    from composir.utils.limits import MAX_FRAMES

    need(d.num_frames <= MAX_FRAMES, "data.num_frames", f"must be at most {MAX_FRAMES}, got {d.num_frames}")
    need(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    if t.warmup_steps > t.max_steps:  # a short smoke run of a real config: said, not refused
        logging.getLogger(__name__).warning(
            "train.warmup_steps %d is longer than the run (train.max_steps %d): the learning rate never "
            "reaches train.lr", t.warmup_steps, t.max_steps)  # fmt: skip
    need(t.encoder_lr is None or t.encoder_lr >= 0, "train.encoder_lr", f"must not be negative, got {t.encoder_lr}")
    need(t.amp in _AMP_MODES, "train.amp", f"must be one of {list(_AMP_MODES)}, got {t.amp!r}")
    metrics = protocol_of(d.benchmark).metric_names()
    need(t.eval_metric in metrics, "train.eval_metric", f"{d.benchmark} reports {metrics}, not {t.eval_metric!r}")
    need(
        cfg.encoder.name in available_encoders(),
        "encoder.name",
        f"unknown encoder {cfg.encoder.name!r}; known: {available_encoders()}",
    )
    need(
        cfg.method.name in available_methods(),
        "method.name",
        f"unknown method {cfg.method.name!r}; known: {available_methods()}",
    )
    from composir.methods.registry import resolved_config

    resolved_config(cfg.method.name, cfg.method.config)  # every method setting checked now
    need(bool(cfg.output_dir), "output_dir", "must name the run folder")
    check_device(t.device, "train.device")
    if t.init_from:
        need(Path(t.init_from).exists(), "train.init_from", f"{t.init_from} does not exist")


def check_files(cfg: RunConfig) -> None:
    """The files a run config names exist (a training run checks this before writing its folder;
    loading a config does not, so that a shared config with another machine's paths still loads)."""
    d = cfg.data
    for key, named in (("data.target_captions", d.target_captions), ("data.chains", d.chains),
                       ("data.feature_cache", d.feature_cache)):  # fmt: skip
        if named is not None and not Path(named).exists():
            raise ConfigError(f"{key}: {named} does not exist")
    if cfg.train.init_from:
        from composir.runs.checkpoint import resolve_checkpoint

        try:
            resolve_checkpoint(cfg.train.init_from)
        except ConfigError as exc:
            raise ConfigError(f"train.init_from: {exc}") from None
    weights = cfg.encoder.pretrained
    a_path = weights and (Path(weights).suffix in _WEIGHT_SUFFIXES or weights.startswith(("/", "./", "../")))
    if a_path and not Path(weights).exists():
        raise ConfigError(f"encoder.pretrained: {weights} does not exist")


def check_device(name: str, key: str = "device") -> None:
    """``auto``, ``cpu``, ``cuda[:N]`` (with a GPU there) or another device torch knows and has."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {name!r} asked for, but this machine has no usable CUDA GPU (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}: {name!r}, but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}: {name!r} is not supported; use auto, cpu or cuda")


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from composir.utils.io import atomic_open

    with atomic_open(path, "w") as handle:
        yaml.safe_dump(cfg.to_dict(), handle, sort_keys=False)
