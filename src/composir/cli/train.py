"""``composir train``: train a method from a YAML config."""

from __future__ import annotations

import argparse
import json

NAME = "train"
HELP = "train a method from a YAML config (resumes the run folder by default)"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True)
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        metavar="KEY=VALUE",
        help="override config values, e.g. train.max_steps=100 (repeatable; later values win)",
    )
    p.add_argument("--out", default=None, help="run folder (overrides output_dir)")
    p.add_argument("--no-resume", action="store_true", help="start over even if the run folder has checkpoints")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from composir.train import load_config, train
    from composir.utils.hub import check_config_weights

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"output_dir={json.dumps(args.out)}")  # a path, never read as YAML
    cfg = load_config(args.config, overrides)
    check_config_weights(asdict(cfg), str(args.config))
    summary = train(cfg, resume=not args.no_resume)
    print(
        f"finished at step {summary['step']}; best {cfg.train.eval_metric} = {summary['best_metric']} "
        f"(step {summary['best_step']}); run folder {summary['output_dir']}"
    )
    return 0
