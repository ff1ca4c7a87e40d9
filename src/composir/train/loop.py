"""The training loop: AdamW, warm-up + cosine, clipping, accumulation, AMP on GPU, periodic
evaluation with best-checkpoint tracking, atomic checkpoints with exact resume, DDP under torchrun.

Exact resume: the batch order of an epoch depends on (seed, epoch) only, per-sample randomness
on (seed, epoch, index), and the torch RNG is reseeded from (seed, micro-step) before every
forward pass; a checkpoint stores the step, the position in the epoch, optimizer, scheduler and
grad-scaler state. A run killed at any point and resumed takes exactly the batches and random
draws the uninterrupted run takes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from composir.data import load_benchmark
from composir.encoders import build_encoder
from composir.errors import ComposirError, ConfigError, WorkInterrupted
from composir.methods import build_method
from composir.train import checkpoint as ckpt
from composir.train.config import RunConfig, config_from_dict, save_config, validate_config
from composir.train.dataset import ResumableBatchSampler, TripletDataset
from composir.train.metrics_log import MetricsLog
from composir.utils.io import remove_leftovers

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_from_config(cfg: RunConfig) -> torch.nn.Module:
    """The method (with its encoder) a run config describes, freshly initialised from ``cfg.train.seed``."""
    torch.manual_seed(cfg.train.seed)
    encoder = build_encoder(cfg.encoder.name, pretrained=cfg.encoder.pretrained, config=cfg.encoder.config)
    if cfg.encoder.freeze_vision:
        encoder.lock_vision_tower()
    return build_method(cfg.method.name, encoder, cfg.method.config)


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
    method = build_from_config(cfg)
    ckpt.load_model_weights(method, folder)
    return method.to(device).eval(), cfg


def _param_groups(method, cfg: RunConfig) -> list[dict[str, Any]]:
    enc_lr = cfg.train.encoder_lr if cfg.train.encoder_lr is not None else cfg.train.lr
    groups: dict[tuple[bool, bool], list] = {}
    no_decay_names = method.no_weight_decay()
    for name, p in method.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((name.startswith("encoder."), name in no_decay_names), []).append(p)
    return [
        {"params": ps, "lr": enc_lr if is_enc else cfg.train.lr, "weight_decay": 0.0 if nd else cfg.train.weight_decay}
        for (is_enc, nd), ps in sorted(groups.items())
    ]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    mode = cfg.train.amp
    if device.type != "cuda" or mode == "off":
        return None
    if mode in ("auto", "bf16"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16":
        return torch.float16
    raise ValueError(f"train.amp must be auto, bf16, fp16 or off, got {mode!r}")


def open_feature_cache(method, cfg: RunConfig):
    """The run's feature cache, checked against the model; None when the run reads pixels."""
    if not cfg.data.feature_cache:
        return None
    from composir.cache import FeatureCache, vision_fingerprint

    if not cfg.encoder.freeze_vision:
        raise ConfigError("data.feature_cache needs encoder.freeze_vision: true (a trained tower changes its output)")
    encoder = method.encoder
    meta = FeatureCache.open(cfg.data.feature_cache)
    cache = FeatureCache.open(
        cfg.data.feature_cache, expected_fingerprint=vision_fingerprint(encoder, meta.num_frames, meta.per_frame)
    )
    if cache.num_frames != cfg.data.num_frames:
        raise ConfigError(f"{cache.root}: cached with {cache.num_frames} frames, config asks {cfg.data.num_frames}")
    encoder.cached_vision = True
    return cache


def evaluate_splits(method, cfg: RunConfig, device: torch.device, cache=None) -> dict[str, dict[str, float]]:
    from composir.eval.evaluate import evaluate

    out = {}
    for split in cfg.data.val_splits:
        bench = load_benchmark(cfg.data.benchmark, cfg.data.root, split)
        if cfg.data.max_val_queries:
            bench.queries = bench.queries[: cfg.data.max_val_queries]
        res = evaluate(
            method,
            bench,
            batch_size=cfg.train.eval_batch_size,
            num_frames=cfg.data.num_frames,
            device=device,
            cache=cache,
            progress=False,
        )
        out[split] = res.metrics
        for fam, m in res.per_family.items():
            out[f"{split}/{fam}"] = m
    return out


def train(cfg: RunConfig, resume: bool = True, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``cfg.output_dir``; returns the final summary.

    ``stop_after`` ends the process's work after that many optimizer steps of this call (tests).
    """
    validate_config(cfg)
    device = resolve_device(cfg.train.device)
    info = init_distributed(device)
    if device.type == "cuda" and info.world_size > 1:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"
    metrics = MetricsLog(out / "metrics.csv")

    method = build_from_config(cfg).to(device)
    if cfg.train.init_from:
        # Before the feature cache: a frozen tower loaded here is what the cache's fingerprint must match.
        loaded = ckpt.init_weights_from(method, cfg.train.init_from)
        if info.main:
            log.info("initialised %d of %d weights from %s", len(loaded), len(method.state_dict()), cfg.train.init_from)
    cache = open_feature_cache(method, cfg)
    bench = load_benchmark(cfg.data.benchmark, cfg.data.root, cfg.data.train_split)
    for split in cfg.data.val_splits:  # a missing or broken val split is found now, not after training
        load_benchmark(cfg.data.benchmark, cfg.data.root, split)
    if info.main:
        # Only now that the model and data are known to work does the folder become a run.
        out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out)
        remove_leftovers(checkpoints, all_hidden=True)
        save_config(cfg, out / "config.yaml")
    if cfg.data.max_train_queries:
        bench.queries = bench.queries[: cfg.data.max_train_queries]
    dataset = TripletDataset(
        bench,
        method.encoder.preprocess,
        cfg.data.num_frames,
        cfg.data.augment,
        cfg.train.seed,
        cache=cache,
    )
    sampler = ResumableBatchSampler(
        len(dataset),
        cfg.train.batch_size,
        cfg.train.seed,
        dataset.groups() if cfg.data.group_by_set else None,
        info.rank,
        info.world_size,
    )
    collate = method.collator()
    optimizer = torch.optim.AdamW(_param_groups(method, cfg), lr=cfg.train.lr)
    total_steps = cfg.train.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.train.warmup_steps, total_steps)
    )
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "best_step": None}
    latest = ckpt.latest_checkpoint(checkpoints) if resume else None
    if latest is not None:
        saved = ckpt.read_trainer_state(latest)
        ckpt.load_model_weights(method, latest)
        from safetensors.torch import load_file

        ckpt.restore_optimizer(optimizer, load_file(str(latest / "optimizer.safetensors")), saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("grad_scaler"):
            scaler.load_state_dict(saved["grad_scaler"])
        state = {k: saved[k] for k in state}
        if info.main:
            metrics.truncate_after(state["step"])
            log.info("resumed from %s at step %d", latest, state["step"])
    elif info.main:
        metrics.truncate_after(-1)  # a fresh start: rows of a run killed before its first checkpoint go
    model = method
    if info.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            method,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=method.ddp_find_unused_parameters,
        )

    def save(name: str, extra: dict[str, Any] | None = None) -> None:
        trainer_state = {**state, "scheduler": scheduler.state_dict(), "config": cfg.to_dict(), **(extra or {})}
        ckpt.save_checkpoint(
            checkpoints / name,
            method,
            optimizer if name != "best" else None,
            trainer_state,
            # Frozen weights from init_from cannot be rebuilt from `pretrained`: keep them.
            cfg.train.save_frozen or bool(cfg.train.init_from),
            scaler.state_dict() if scaler.is_enabled() else None,
        )

    def run_eval() -> None:
        results = evaluate_splits(method, cfg, device, cache)
        for split, m in results.items():
            metrics.write(state["step"], split, m)
        first = results[cfg.data.val_splits[0]]
        value = first.get(cfg.train.eval_metric)
        if value is not None and (state["best_metric"] is None or value > state["best_metric"]):
            state["best_metric"], state["best_step"] = value, state["step"]
            save("best", {"best_metrics": results})
        metrics.plot(out / "training.png")
        summary = "  ".join(f"{k}={v:.1f}" for k, v in first.items() if k.startswith("R"))
        tqdm.write(f"step {state['step']}: {cfg.data.val_splits[0]} {summary}")
        method.train()

    accum = cfg.train.grad_accum
    micro = state["step"] * accum
    steps_done_here = 0
    bar = tqdm(
        total=total_steps, initial=state["step"], desc="train", unit="step", disable=not (progress and info.main)
    )
    window = {"loss": 0.0, "n": 0, "data": 0.0, "compute": 0.0, "triplets": 0, "skipped": 0}
    method.train()
    finished = state["step"] >= total_steps
    try:
        while not finished:
            dataset.epoch = state["epoch"]
            loader = DataLoader(
                dataset,
                batch_sampler=list(sampler.epoch_batches(state["epoch"], state["batch_in_epoch"])),
                num_workers=cfg.train.num_workers,
                collate_fn=collate,
                persistent_workers=False,
                pin_memory=device.type == "cuda",
            )
            t_data = time.perf_counter()
            for batch in loader:
                t_start = time.perf_counter()
                window["data"] += t_start - t_data
                state["batch_in_epoch"] += 1
                window["skipped"] += batch["skipped"]
                if _every_rank_has_data(batch, info, device):
                    torch.manual_seed(cfg.train.seed * 1_000_003 + micro)
                    # Gradients are all-reduced only on the micro-batch that ends a step.
                    last_micro = (micro + 1) % accum == 0
                    no_sync = model.no_sync() if info.world_size > 1 and not last_micro else contextlib.nullcontext()
                    with no_sync:
                        losses, loss = _forward_backward(model, batch, device, amp_dtype, scaler, accum)
                    window["loss"] += loss
                    window["n"] += 1
                    window["triplets"] += batch["size"] * info.world_size
                micro += 1
                if micro % accum == 0:
                    scaler.unscale_(optimizer)
                    if cfg.train.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.train.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    state["step"] += 1
                    method.after_step(state["step"])
                    steps_done_here += 1
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    window["compute"] += time.perf_counter() - t_start
                    bar.update(1)
                    if info.main and (state["step"] % cfg.train.log_every == 0 or state["step"] == total_steps):
                        _log_window(metrics, state, window, scheduler, losses, bar)
                    if state["step"] % cfg.train.eval_every == 0 or state["step"] == total_steps:
                        if info.main:
                            run_eval()
                        if info.world_size > 1:
                            dist.barrier()
                    if info.main and (state["step"] % cfg.train.save_every == 0 or state["step"] == total_steps):
                        name = f"step-{state['step']:07d}"
                        save(name)
                        ckpt.set_latest(checkpoints, name)
                        ckpt.prune(checkpoints, cfg.train.keep_last)
                    if state["step"] >= total_steps or (stop_after is not None and steps_done_here >= stop_after):
                        finished = True
                        break
                else:
                    window["compute"] += time.perf_counter() - t_start
                t_data = time.perf_counter()
            else:
                method.after_epoch(state["epoch"])
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
    except KeyboardInterrupt:
        bar.close()
        last = ckpt.latest_checkpoint(checkpoints)
        where = f"the last checkpoint is {last.name}" if last is not None else "no checkpoint was written yet"
        raise WorkInterrupted(
            f"training interrupted at step {state['step']} of {total_steps}; {where}; "
            f"run the same command again to resume from it (run folder {out})"
        ) from None
    bar.close()
    summary = {
        "step": state["step"],
        "best_metric": state["best_metric"],
        "best_step": state["best_step"],
        "output_dir": str(out),
    }
    if info.world_size > 1:
        dist.barrier()
    return summary


def _every_rank_has_data(batch: dict[str, Any], info: DistInfo, device: torch.device) -> bool:
    """Whether this micro-batch has items on every rank. A batch whose items were all unreadable
    is skipped by all ranks together: one rank skipping alone would leave the others waiting in
    the gradient all-reduce."""
    has = batch.get("size", 0) > 0
    if info.world_size == 1:
        return has
    flag = torch.tensor([1 if has else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _forward_backward(model, batch, device, amp_dtype, scaler, accum: int) -> tuple[dict[str, torch.Tensor], float]:
    """One micro-batch: losses (through ``model`` so DDP sees the forward), scaled backward."""
    inputs = {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        losses = model(inputs)
        loss = sum(losses.values())
    scaler.scale(loss / accum).backward()
    return losses, float(loss.detach())


def _log_window(metrics: MetricsLog, state, window, scheduler, losses, bar) -> None:
    n = max(1, window["n"])
    elapsed = window["data"] + window["compute"]
    values = {
        "loss": window["loss"] / n,
        "lr": scheduler.get_last_lr()[0],
        "triplets_per_s": window["triplets"] / max(1e-9, elapsed),
        "data_fraction": window["data"] / max(1e-9, elapsed),
        "epoch": state["epoch"],
        **{k: float(v.detach()) for k, v in losses.items()},
    }
    if window["skipped"]:
        values["skipped_triplets"] = window["skipped"]
    metrics.write(state["step"], "train", values)
    bar.set_postfix(loss=f"{values['loss']:.3f}", tps=f"{values['triplets_per_s']:.0f}")
    for k in window:
        window[k] = 0 if k != "loss" else 0.0
