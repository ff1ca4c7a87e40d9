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

from composir.data import Benchmark, load_benchmark
from composir.data.media_check import require_media
from composir.errors import ConfigError, TrainingDiverged, WorkInterrupted
from composir.runs import checkpoint as ckpt
from composir.runs.config import RunConfig, check_files, save_config, validate_config
from composir.runs.factory import build_from_config
from composir.train.dataset import ResumableBatchSampler, TripletDataset
from composir.train.metrics_log import MetricsLog
from composir.utils.io import remove_leftovers
from composir.utils.progress import progress_bar
from composir.utils.workers import loader_workers

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_data(cfg: RunConfig, split: str) -> Benchmark:
    """A split of the run's benchmark, with the run's target captions (``data.target_captions``) and
    reasoning chains (``data.chains``) attached."""
    d = cfg.data
    return load_benchmark(
        d.benchmark, d.root, split, captions=d.target_captions, caption_stage=d.caption_stage, chains=d.chains
    )


def _param_groups(method, cfg: RunConfig) -> list[dict[str, Any]]:
    enc_lr = cfg.train.encoder_lr if cfg.train.encoder_lr is not None else cfg.train.lr
    groups: dict[tuple[bool, bool], list] = {}
    no_decay_names = method.no_weight_decay()
    for name, p in method.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((name.startswith("encoder."), name in no_decay_names), []).append(p)
    return [
        {"params": ps, "lr": enc_lr if is_enc else cfg.train.lr, "weight_decay": 0.0 if nd else cfg.train.weight_decay,
         "encoder": is_enc}
        for (is_enc, nd), ps in sorted(groups.items())
    ]  # fmt: skip


def _group_schedule(group: dict[str, Any], cfg: RunConfig, total: int):
    """The learning-rate factor of one parameter group by step: warm-up then cosine; an encoder
    group stays at 0 for ``train.encoder_frozen_steps`` first."""
    warmup, frozen = cfg.train.warmup_steps, cfg.train.encoder_frozen_steps
    if group.get("encoder") and frozen:
        return lambda s: 0.0 if s < frozen else warmup_cosine(s, warmup, total)
    return lambda s: warmup_cosine(s, warmup, total)


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
    from composir.data.feature_cache import FeatureCache, vision_fingerprint

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
        bench = load_data(cfg, split)
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
        out[split] = {**res.metrics, **method.validation_metrics(bench, cfg.data.num_frames)}
        for fam, m in res.per_family.items():
            out[f"{split}/{fam}"] = m
    return out


def train(cfg: RunConfig, resume: bool = True, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``cfg.output_dir``; returns the final summary.

    ``stop_after`` ends the process's work after that many optimizer steps of this call (tests).
    """
    return Trainer(cfg, resume, progress).run(stop_after)


class Trainer:
    """One training run: set up (config checked, model built, data read, run folder written, state
    restored), then ``run``: epochs of micro-batches, optimizer steps, logging, evaluation and
    checkpoints. Every random draw depends on (seed, epoch, index) or (seed, micro-step) only,
    so a resumed run repeats the uninterrupted one exactly."""

    def __init__(self, cfg: RunConfig, resume: bool = True, progress: bool = True):
        validate_config(cfg)
        check_files(cfg)  # before anything is built or the run folder is written
        self.cfg = cfg
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        self.info = init_distributed(self.device)
        if self.device.type == "cuda" and self.info.world_size > 1:
            self.device = torch.device("cuda", self.info.local_rank)
            torch.cuda.set_device(self.device)
        self.out = Path(cfg.output_dir)
        self.checkpoints = self.out / "checkpoints"
        self.metrics = MetricsLog(self.out / "metrics.csv")
        self.method, self.cache, bench = self._build()
        self._write_run_folder()
        if cfg.data.max_train_queries:
            bench.queries = bench.queries[: cfg.data.max_train_queries]
        self.dataset = TripletDataset(
            bench,
            self.method.encoder.preprocess,
            cfg.data.num_frames,
            cfg.data.augment,
            cfg.train.seed,
            cache=self.cache,
            reference_sampling=self.method.reference_sampling,
        )
        self.sampler = ResumableBatchSampler(
            len(self.dataset),
            cfg.train.batch_size,
            cfg.train.seed,
            self.dataset.groups() if cfg.data.group_by_set else None,
            self.info.rank,
            self.info.world_size,
        )
        self.collate = self.method.collator()
        self.optimizer = torch.optim.AdamW(_param_groups(self.method, cfg), lr=cfg.train.lr)
        self.total_steps = cfg.train.max_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [_group_schedule(g, cfg, self.total_steps) for g in self.optimizer.param_groups]
        )
        self.amp_dtype = _amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None, "best_step": None}
        self.window = {"loss": 0.0, "n": 0, "data": 0.0, "compute": 0.0, "triplets": 0, "skipped": 0}
        self._restore(resume)
        self.model = self.method
        if self.info.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.ddp_find_unused_parameters,
            )

    # ------------------------------------------------------------------------------ set-up
    def _build(self):
        cfg = self.cfg
        method = build_from_config(cfg).to(self.device)
        if cfg.train.init_from:
            # Before the feature cache: a frozen tower loaded here is what the cache's fingerprint must match.
            loaded = ckpt.init_weights_from(method, cfg.train.init_from)
            if self.info.main:
                log.info(
                    "initialised %d of %d weights from %s", len(loaded), len(method.state_dict()), cfg.train.init_from
                )
        cache = open_feature_cache(method, cfg)
        bench = load_data(cfg, cfg.data.train_split)
        splits = [bench] + [load_data(cfg, split) for split in cfg.data.val_splits]  # broken ones found now
        if cache is None:  # with a feature cache the pixels may rightly be elsewhere
            for split in splits:
                require_media(split, cfg.data.allow_missing, "set data.allow_missing=true", progress=self.info.main)
        return method, cache, bench

    def _write_run_folder(self) -> None:
        """Only once the model and data are known to work does the folder become a run."""
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.out)
            remove_leftovers(self.checkpoints, all_hidden=True)
            save_config(self.cfg, self.out / "config.yaml")

    def _restore(self, resume: bool) -> None:
        latest = ckpt.latest_checkpoint(self.checkpoints) if resume else None
        if latest is None:
            if self.info.main:
                self.metrics.truncate_after(-1)  # a fresh start: rows of a run killed before its first checkpoint go
            return
        from safetensors.torch import load_file

        saved = ckpt.read_trainer_state(latest)
        ckpt.load_model_weights(self.method, latest)
        ckpt.restore_optimizer(self.optimizer, load_file(str(latest / "optimizer.safetensors")), saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("grad_scaler"):
            self.scaler.load_state_dict(saved["grad_scaler"])
        self.state = {k: saved[k] for k in self.state}
        self.window.update(saved.get("log_window", {}))
        if self.info.main:
            self.metrics.truncate_after(self.state["step"])
            log.info("resumed from %s at step %d", latest, self.state["step"])

    # ------------------------------------------------------------------------------ checkpoints, evaluation
    def save(self, name: str, extra: dict[str, Any] | None = None) -> None:
        trainer_state = {
            **self.state,
            # The logging window's sums so far: a checkpoint between two log steps resumes them, so
            # the next logged loss covers the same steps as in an uninterrupted run.
            "log_window": dict(self.window),
            "scheduler": self.scheduler.state_dict(),
            "config": self.cfg.to_dict(),
            **(extra or {}),
        }
        ckpt.save_checkpoint(
            self.checkpoints / name,
            self.method,
            self.optimizer if name != "best" else None,
            trainer_state,
            # Frozen weights from init_from cannot be rebuilt from `pretrained`: keep them.
            self.cfg.train.save_frozen or bool(self.cfg.train.init_from),
            self.scaler.state_dict() if self.scaler.is_enabled() else None,
        )

    def evaluate(self) -> None:
        cfg, state = self.cfg, self.state
        results = evaluate_splits(self.method, cfg, self.device, self.cache)
        for split, m in results.items():
            self.metrics.write(state["step"], split, m)
        first = results[cfg.data.val_splits[0]]
        value = first.get(cfg.train.eval_metric)
        if value is not None and (state["best_metric"] is None or value > state["best_metric"]):
            state["best_metric"], state["best_step"] = value, state["step"]  # type: ignore[assignment]
            self.save("best", {"best_metrics": results})
        self.metrics.plot(self.out / "training.png")
        # Recall metrics, and the method's sub-task numbers (named in words: "caption F1").
        summary = "  ".join(f"{k}={v:.1f}" for k, v in first.items() if k.startswith("R") or " " in k)
        tqdm.write(f"step {state['step']}: {cfg.data.val_splits[0]} {summary}")
        self.method.train()

    # ------------------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        self.micro = self.state["step"] * self.cfg.train.grad_accum
        self.steps_done_here = 0
        self.losses: dict[str, torch.Tensor] = {}  # the last micro-batch's terms, for the log
        self.bar = progress_bar(
            total=self.total_steps,
            initial=self.state["step"],
            desc="train",
            unit="step",
            disable=not (self.progress and self.info.main),
        )
        self.method.train()
        finished = self.state["step"] >= self.total_steps
        try:
            while not finished:
                finished = self._epoch(stop_after)
        except TrainingDiverged:
            self.bar.close()  # the error line starts on a line of its own
            raise
        except KeyboardInterrupt:
            self.bar.close()
            last = ckpt.latest_checkpoint(self.checkpoints)
            where = f"the last checkpoint is {last.name}" if last is not None else "no checkpoint was written yet"
            raise WorkInterrupted(
                f"training interrupted at step {self.state['step']} of {self.total_steps}; {where}; "
                f"run the same command again to resume from it (run folder {self.out})"
            ) from None
        self.bar.close()
        if self.info.world_size > 1:
            dist.barrier()
        return {
            "step": self.state["step"],
            "best_metric": self.state["best_metric"],
            "best_step": self.state["best_step"],
            "output_dir": str(self.out),
        }

    def _epoch(self, stop_after: int | None) -> bool:
        """The rest of the current epoch; True when training is over (max_steps or ``stop_after``)."""
        state, window = self.state, self.window
        self.dataset.epoch = state["epoch"]
        loader = DataLoader(
            self.dataset,
            batch_sampler=list(self.sampler.epoch_batches(state["epoch"], state["batch_in_epoch"])),
            **loader_workers(self.cfg.train.num_workers, "train.num_workers"),
            collate_fn=self.collate,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )
        t_data = time.perf_counter()
        for batch in loader:
            t_start = time.perf_counter()
            window["data"] += t_start - t_data
            state["batch_in_epoch"] += 1
            window["skipped"] += batch["skipped"]
            if _every_rank_has_data(batch, self.info, self.device):
                self.losses = self._micro_step(batch)
            self.micro += 1
            if self.micro % self.cfg.train.grad_accum == 0:
                self._optimizer_step()
                window["compute"] += time.perf_counter() - t_start
                if self._after_step(stop_after):
                    return True
            else:
                window["compute"] += time.perf_counter() - t_start
            t_data = time.perf_counter()
        self.method.after_epoch(state["epoch"])
        state["epoch"] += 1
        state["batch_in_epoch"] = 0
        return False

    def _micro_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        accum = self.cfg.train.grad_accum
        torch.manual_seed(self.cfg.train.seed * 1_000_003 + self.micro)
        # Gradients are all-reduced only on the micro-batch that ends a step.
        last_micro = (self.micro + 1) % accum == 0
        distributed = self.info.world_size > 1
        no_sync = self.model.no_sync() if distributed and not last_micro else contextlib.nullcontext()
        with no_sync:
            losses, loss = _forward_backward(self.model, batch, self.device, self.amp_dtype, self.scaler, accum)
        self._check_finite(losses, loss)
        self.window["loss"] += loss
        self.window["n"] += 1
        self.window["triplets"] += batch["size"] * self.info.world_size
        return losses

    def _check_finite(self, losses: dict[str, torch.Tensor], loss: float) -> None:
        """Stop at the first non-finite loss (on every rank together): training on from NaN weights
        only wastes the rest of the run and overwrites good checkpoints with broken ones."""
        bad = not math.isfinite(loss)
        if self.info.world_size > 1:
            flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item())
        if bad:
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            latest = ckpt.latest_checkpoint(self.checkpoints)
            raise TrainingDiverged(
                f"step {self.state['step'] + 1}: the loss is not a finite number ({terms}) on some rank; "
                f"training stopped, the last checkpoint is {latest or 'none'} (lower train.lr or check the method)"
            )

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state["step"] += 1
        self.method.after_step(self.state["step"])
        self.steps_done_here += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.bar.update(1)

    def _after_step(self, stop_after: int | None) -> bool:
        """Logging, evaluation and checkpoints due at this step; True when training is over."""
        cfg, state, info = self.cfg.train, self.state, self.info
        step, last = state["step"], state["step"] == self.total_steps
        if info.main and (step % cfg.log_every == 0 or last):
            _log_window(self.metrics, state, self.window, self.scheduler, self.losses, self.bar)
        if step % cfg.eval_every == 0 or last:
            if info.main:
                self.evaluate()
            if info.world_size > 1:
                dist.barrier()
        if info.main and (step % cfg.save_every == 0 or last):
            name = f"step-{step:07d}"
            self.save(name)
            ckpt.set_latest(self.checkpoints, name)
            ckpt.prune(self.checkpoints, cfg.keep_last)
        return step >= self.total_steps or (stop_after is not None and self.steps_done_here >= stop_after)


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
    bar.set_postfix(loss=f"{values['loss']:.3f}", tps=f"{values['triplets_per_s']:.0f}", refresh=False)
    for k in window:
        window[k] = 0 if k != "loss" else 0.0
