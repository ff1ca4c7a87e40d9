"""``composir eval``: evaluate a run, or pretrained weights with a training-free method, on a benchmark split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from composir.cli.args import add_model_args, frame_count, int_in, non_negative_int, positive_int
from composir.errors import ComposirError

NAME = "eval"
HELP = "evaluate a model on a benchmark split"
OUTPUTS = ("json", "grid", "submission")  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    from composir.data import BENCHMARKS

    p.add_argument(
        "--benchmark",
        required=True,
        help="; ".join(f"{name}: {spec.help}" for name, spec in sorted(BENCHMARKS.items())),
    )
    p.add_argument("--root", required=True, help="the benchmark's folder, as published")
    p.add_argument("--split", default="val")
    p.add_argument("--json", default=None, help="write the metrics JSON here")
    p.add_argument("--submission", default=None, help="write test-server submission files into this folder")
    p.add_argument("--grid", default=None, help="also draw sampled queries and their top results to this PNG")
    p.add_argument("--grid-queries", type=int_in(1, 64), default=8, help="queries in the --grid picture")
    p.add_argument("--grid-k", type=int_in(1, 20), default=5, help="results per query in the --grid picture")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip media files the benchmark names but that are not on disk (listed in the output) "
        "instead of stopping before evaluation",
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument(
        "--frames", type=frame_count, default=None, help="frames sampled per video (default: the run's, else 8)"
    )
    p.add_argument("--workers", type=non_negative_int, default=0, help="data-loading processes")
    p.add_argument("--run", default=None, help="a training run folder: evaluate its model")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"], help="which checkpoint of --run")
    add_model_args(p)


def run(args: argparse.Namespace) -> int:
    from composir.eval.run import load_checked, submittable
    from composir.utils.io import atomic_write_json

    untrained = _check_weights(args)
    for option, target in (("--json", args.json), ("--grid", args.grid)):  # (writable: checked by main)
        if target and Path(target).is_dir():
            raise ComposirError(f"{option} {target}: is a folder; name a file")
    if args.submission and args.benchmark not in submittable():
        raise ComposirError(f"no test-server submission format for {args.benchmark!r} "
                            f"({', '.join(submittable())} have one)")  # fmt: skip
    benches = load_checked(args.benchmark, args.root, args.split, args.allow_missing)  # before any model loads
    method = build_model(args)
    if args.frames is None:
        args.frames = 8
    out = run_eval(method, args.benchmark, benches, args)
    if untrained:
        out["random_weights"] = True
        print("note: these numbers come from randomly initialised weights (--random-weights)", file=sys.stderr)
    print(f"{out['benchmark']} {out['split']} ({out['n_queries']} queries): {format_metrics(out['metrics'])}")
    for fam, m in out.get("per_family", {}).items():
        print(f"  {fam:9s} {format_metrics(m)}")
    if out.get("skipped_media"):
        print(f"skipped {len(out['skipped_media'])} unreadable media (listed in the JSON)", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, out, indent=2)
    return 0


def _check_weights(args: argparse.Namespace) -> bool:
    """True when the model will have random weights, which must be asked for (--random-weights)."""
    untrained = not getattr(args, "run", None) and not args.pretrained
    if untrained and not args.random_weights:
        raise ComposirError(
            "no trained or pretrained weights: give --run RUN, or --encoder E --pretrained WEIGHTS; "
            "--random-weights evaluates a randomly initialised model on purpose (smoke tests)"
        )
    return untrained


def build_model(args: argparse.Namespace):
    """The run's model (``--run``), or an untrained one from ``--encoder/--pretrained/--method``."""
    from composir.utils.hub import check_model_weights

    check_model_weights(getattr(args, "run", None), args.encoder, args.pretrained, args.model)  # before torch
    from composir.runs import build_untrained, load_run

    if getattr(args, "run", None):
        method, cfg = load_run(args.run, args.checkpoint, args.device)
        if args.frames is None:
            args.frames = cfg.data.num_frames
        return method
    spec = {"encoder": args.encoder, "pretrained": args.pretrained, "method": args.method, "seed": args.seed}
    if args.model:
        spec["model"] = args.model
    return build_untrained(spec, args.device)


def run_eval(method, name: str, benches: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate one benchmark (``fashioniq`` = its three categories and their means), drawing
    ``--grid`` pictures and writing ``--submission`` files as asked."""
    from composir.eval.run import EvalOptions, evaluate_split, write_submission

    options = EvalOptions(args.batch_size, args.frames, args.device, args.workers)
    out, bench, result = evaluate_split(
        method, name, benches, options, lambda b, r, suffix: _pictures(method, b, r, args, suffix)
    )
    if args.submission:
        paths = write_submission(name, bench.split, args.submission, bench, result)
        print("submission:", ", ".join(map(str, paths)))
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.2f}" for k, v in metrics.items())


def _pictures(method, bench, result, args: argparse.Namespace, suffix: str = "") -> None:
    """``--grid``: the query grid (with the method's explanations where it has them); next to it,
    or next to ``--json``, the recall@K curves per family."""
    from composir.eval.pictures import render_grid, render_recall_curves

    grid = getattr(args, "grid", None)
    if grid and not result.query_ids:
        print(f"grid: {bench.name} {bench.split} has no queries to draw", file=sys.stderr)
        grid = None
    if grid:
        path = Path(grid)
        path = path.with_name(f"{path.stem}{suffix}{path.suffix or '.png'}")
        render_grid(
            bench, result, path, n=args.grid_queries, k=args.grid_k, explain=_explainer(method, bench, result, args)
        )
        print(f"grid: {path}")
    beside = Path(grid) if grid else Path(args.json) if getattr(args, "json", None) else None
    if beside is not None and result.per_family:  # named after the output it belongs to: runs never overwrite
        curves = render_recall_curves(
            result.metrics, result.per_family, beside.with_name(f"{beside.stem}-recall_at_k{suffix}.png")
        )
        print(f"recall@K curves: {curves}")


def _explainer(method, bench, result, args: argparse.Namespace):
    """Explanations of sampled queries from the method's own ``encode_query_explained`` (None for
    methods without one)."""
    import torch

    from composir.methods.base import RetrievalMethod
    from composir.search import load_query_frames

    if type(method).encode_query_explained is RetrievalMethod.encode_query_explained:
        return None
    by_id = {q.query_id: q for q in bench.queries}

    @torch.no_grad()
    def explain(positions: list[int]) -> list:
        notes = []
        for pos in positions:
            query = by_id[result.query_ids[pos]]
            frames = load_query_frames(method, bench.media_item(query.reference_id).path, args.frames).to(args.device)
            tokens = method.encoder.tokenize([query.text]).to(args.device)
            explanations = method.encode_query_explained(frames, tokens)[1]
            notes.append(explanations[0] if explanations else None)
        return notes

    return explain
