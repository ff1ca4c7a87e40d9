"""The one place a model is built: from a run config (training), from a run folder's checkpoint
(evaluation, indexing, search, serving), or untrained from a spec (zero-shot: an encoder's
pretrained weights and a training-free method)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from composir.encoders import build_encoder
from composir.errors import ComposirError, ConfigError
from composir.methods import build_method
from composir.methods.base import RetrievalMethod
from composir.runs import checkpoint as ckpt
from composir.runs.config import RunConfig, config_from_dict


def build_from_config(cfg: RunConfig) -> RetrievalMethod:
    """The method (with its encoder) a run config describes, freshly initialised from ``cfg.train.seed``."""
    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.encoder.name, pretrained=cfg.encoder.pretrained, config=cfg.encoder.config)
    if cfg.encoder.freeze_vision:
        encoder.lock_vision_tower()
    method = build_method(cfg.method.name, encoder, cfg.method.config)
    target = getattr(method.config, "target_pretrained", None)
    if target:  # frozen targets from another pretrained model than the query side's (CoVR-2's COCO BLIP-2)
        method.use_target_encoder(build_encoder(cfg.encoder.name, pretrained=target, config=cfg.encoder.config))
    return method


def build_with_weights(cfg: RunConfig, checkpoint: Path) -> RetrievalMethod:
    """The method ``cfg`` describes with a checkpoint folder's weights: a run as trained, or as
    another config that trains the same model (inference settings of its own) reads it."""
    method = build_from_config(cfg)
    ckpt.load_model_weights(method, checkpoint)
    return method


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu"):
    """(method, config) of a finished or running run: its ``best`` or ``latest`` checkpoint."""
    import yaml

    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ComposirError(f"{run_dir}: not a training run folder (no config.yaml)")
    try:
        cfg = config_from_dict(yaml.safe_load(config_file.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_file}: not valid YAML ({exc})") from exc
    checkpoints = run_dir / "checkpoints"
    folder = ckpt.best_or_latest(checkpoints) if which == "best" else ckpt.latest_checkpoint(checkpoints)
    if folder is None:
        raise ComposirError(f"{run_dir}: no checkpoint yet (train it first)")
    return build_with_weights(cfg, folder).to(device).eval(), cfg


def encoder_config(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The encoder config a zero-shot spec implies: ``model`` names an open_clip architecture."""
    if spec.get("model"):
        if spec["encoder"] != "openclip":
            raise ConfigError(f"--model names an open_clip architecture; the {spec['encoder']} encoder takes none")
        return {"model": spec["model"]}
    return None


def build_untrained(spec: dict[str, Any], device: str = "cpu"):
    """A zero-shot model from its spec (encoder, pretrained weights, training-free method, seed): what
    ``composir index --encoder`` used, rebuilt identically for searching (same seed, same weights)."""
    torch.manual_seed(int(spec.get("seed", 0)))
    encoder = build_encoder(spec["encoder"], pretrained=spec.get("pretrained"), config=encoder_config(spec))
    return build_method(spec.get("method", "sum"), encoder).to(device).eval()
