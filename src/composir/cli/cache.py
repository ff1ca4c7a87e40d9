"""``composir cache``: encode a split's media once with the frozen vision tower."""

from __future__ import annotations

import argparse

from composir.cli.args import frame_count, non_negative_int, positive_int

NAME = "cache"
HELP = "encode a split's media once with the frozen vision tower (resumable)"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a training config: its encoder, benchmark and splits")
    src.add_argument("--run", help="a run folder: its encoder")
    p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="config overrides (repeatable)")
    p.add_argument("--benchmark", default=None)
    p.add_argument("--root", default=None)
    p.add_argument("--splits", nargs="*", default=None, help="default: the config's train and val splits")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=frame_count, default=None, help="frames per video (default: the config's)")
    p.add_argument("--per-frame", action="store_true", help="keep each frame's tokens instead of their mean")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=non_negative_int, default=0, help="data-loading processes")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from composir.data import load_benchmark
    from composir.data.feature_cache import build_cache
    from composir.train import build_from_config, load_config, load_run
    from composir.utils.hub import check_config_weights, check_run_weights

    if args.run:
        check_run_weights(args.run)
        method, cfg = load_run(args.run, "latest")
    else:
        cfg = load_config(args.config, args.set or [])
        check_config_weights(asdict(cfg), str(args.config))
        method = build_from_config(cfg)
    benchmark, root = args.benchmark or cfg.data.benchmark, args.root or cfg.data.root
    splits = args.splits or [cfg.data.train_split, *cfg.data.val_splits]
    items = []
    for split in splits:
        bench = load_benchmark(benchmark, root, split)
        ids = {q.reference_id for q in bench.queries} | {t for q in bench.queries for t in q.target_ids}
        items += [bench.media_item(i) for i in sorted(ids)] + list(bench.gallery)
    frames = args.frames or cfg.data.num_frames
    cache = build_cache(
        method.encoder,
        items,
        args.out,
        num_frames=frames,
        per_frame=args.per_frame,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
    )
    failed = int((cache.status() == 2).sum())
    print(
        f"cached {len(cache.ids) - failed} media of {benchmark} {splits} into {args.out} "
        f"(rows {cache.shape}, fp16, fingerprint {cache.fingerprint}); {failed} unreadable, "
        f"listed in {args.out}/failures.json"
    )
    print(f"train from it with: --set data.feature_cache={args.out} encoder.freeze_vision=true")
    return 0
