"""Checkpoints: weights and optimizer tensors in safetensors, everything else in JSON.

A checkpoint is a folder written under a temporary name and renamed into place, and
``checkpoints/latest`` (a one-line file, itself replaced atomically) names the newest complete
one: a kill at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from composir.errors import ConfigError
from composir.utils.io import atomic_open, atomic_write_json


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views that share storage; a copy per tensor keeps them apart.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def model_state(method: torch.nn.Module, save_frozen: bool) -> dict[str, torch.Tensor]:
    """Everything but the frozen encoder parameters (rebuilt from ``pretrained``) unless asked."""
    state = method.state_dict()
    if save_frozen:
        return state
    prefixes = getattr(method, "rebuilt_prefixes", ("encoder.",))
    frozen = {name for name, p in method.named_parameters() if not p.requires_grad and name.startswith(prefixes)}
    return {k: v for k, v in state.items() if k not in frozen}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    folder: Path, method, optimizer, trainer_state: dict[str, Any], save_frozen: bool, scaler_state: dict | None = None
) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; a checkpoint is an ordinary folder
    try:
        save_file(_contiguous(model_state(method, save_frozen)), tmp / "model.safetensors")
        if optimizer is not None:
            tensors, meta = optimizer_tensors(optimizer)
            save_file(_contiguous(tensors), tmp / "optimizer.safetensors")
            trainer_state = {**trainer_state, "optimizer": meta}
        if scaler_state:
            trainer_state = {**trainer_state, "grad_scaler": scaler_state}
        with open(tmp / "trainer_state.json", "w") as handle:
            json.dump(trainer_state, handle, indent=1)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_model_weights(method: torch.nn.Module, folder: Path) -> None:
    state = load_file(str(Path(folder) / "model.safetensors"))
    missing, unexpected = method.load_state_dict(state, strict=False)
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    really_missing = [k for k in missing if k not in frozen]
    if really_missing or unexpected:
        raise RuntimeError(
            f"{folder}: checkpoint does not fit the model (missing {really_missing[:5]}, unexpected {unexpected[:5]})"
        )


def best_or_latest(checkpoints: Path) -> Path | None:
    """A run's ``best`` checkpoint, else its latest; None before the first one."""
    best = Path(checkpoints) / "best"
    return best if (best / "model.safetensors").is_file() else latest_checkpoint(checkpoints)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, given one or a run folder (its ``best`` checkpoint, else its latest)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    folder = best_or_latest(path / "checkpoints")
    if folder is None:
        raise ConfigError(f"{path}: neither a checkpoint folder nor a run folder with a checkpoint")
    return folder


def init_weights_from(method: torch.nn.Module, source: str | Path) -> list[str]:
    """Copy every weight of ``source`` whose name the model shares; returns the names copied.

    A shared name with another shape is an error (a different architecture, not a head to skip);
    so is a source that shares no encoder weight with the model.
    """
    folder = resolve_checkpoint(source)
    state = load_file(str(folder / "model.safetensors"))
    own = method.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ConfigError(f"train.init_from {folder}: weights of another shape than this model's: {wrong[:5]}")
    shared = {k: v for k, v in state.items() if k in own}
    if not any(k.startswith("encoder.") for k in shared):
        raise ConfigError(f"train.init_from {folder}: no encoder weight of it fits this model (another encoder?)")
    method.load_state_dict(shared, strict=False)
    hook = getattr(method, "weights_loaded", None)
    if hook is not None:
        hook(set(shared))
    return sorted(shared)


def read_trainer_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def set_latest(checkpoints: Path, name: str) -> None:
    with atomic_open(checkpoints / "latest", "w") as handle:
        handle.write(name + "\n")


def latest_checkpoint(checkpoints: Path) -> Path | None:
    pointer = Path(checkpoints) / "latest"
    if not pointer.is_file():
        return None
    folder = Path(checkpoints) / pointer.read_text().strip()
    return folder if (folder / "trainer_state.json").is_file() else None


def prune(checkpoints: Path, keep: int) -> None:
    steps = sorted(p for p in Path(checkpoints).glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "atomic_write_json",
    "best_or_latest",
    "init_weights_from",
    "latest_checkpoint",
    "load_model_weights",
    "prune",
    "read_trainer_state",
    "resolve_checkpoint",
    "restore_optimizer",
    "save_checkpoint",
    "set_latest",
]
