"""``composir`` command line: synth | train | eval | demo | methods."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from composir.errors import ComposirError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="tiny", help="encoder name (tiny, openclip, blip2)")
    p.add_argument("--pretrained", default=None, help="encoder weights: a tag or a local path")
    p.add_argument("--method", default="sum", help="method name (see `composir methods`)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


def cmd_synth(args: argparse.Namespace) -> int:
    from composir.data import load_benchmark
    from composir.synth import SynthConfig, generate
    from composir.synth.contact_sheet import render_contact_sheet

    cfg = SynthConfig(
        out=Path(args.out),
        seed=args.seed,
        size=args.size,
        video=args.video,
        image_size=args.image_size,
        num_frames=args.frames,
        workers=args.workers,
    )
    summary = generate(cfg)
    sheet = render_contact_sheet(load_benchmark("synthetic", args.out, "val"), Path(args.out) / "contact_sheet.png")
    for split in ("train", "val", "test"):
        s = summary[split]
        print(
            f"{split:5s}: {s['triplets']:6d} triplets ({s['explicit']} explicit, {s['multi']} multi, "
            f"{s['implicit']} implicit), {s['images']} {'videos' if args.video else 'images'}"
        )
    print(f"wrote {args.out} (contact sheet: {sheet})")
    return 0


def build_model(args: argparse.Namespace):
    import torch

    from composir.encoders import build_encoder
    from composir.methods import build_method

    if getattr(args, "run", None):
        from composir.train import load_run

        method, cfg = load_run(args.run, args.checkpoint, args.device)
        if args.frames is None:
            args.frames = cfg.data.num_frames
        return method
    torch.manual_seed(args.seed)
    encoder = build_encoder(args.encoder, pretrained=args.pretrained)
    return build_method(args.method, encoder).to(args.device)


def run_eval(method, name: str, root: str, split: str, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate one benchmark (``fashioniq`` = its three categories and their means)."""
    from composir.data import load_benchmark
    from composir.eval import metrics as M
    from composir.eval.evaluate import evaluate

    opts = dict(batch_size=args.batch_size, num_frames=args.frames, device=args.device, num_workers=args.workers)
    if name == "fashioniq":
        per_cat, n, skipped = {}, 0, []
        for cat in ("dress", "shirt", "toptee"):
            res = evaluate(method, load_benchmark(f"fashioniq-{cat}", root, split), **opts)
            per_cat[cat], n, skipped = res.metrics, n + len(res.query_ids), skipped + res.failures
        out = {"benchmark": name, "split": split, "metrics": M.fashioniq_metrics(per_cat), "n_queries": n}
        if skipped:
            out["skipped_media"] = [{"id": i, "error": e} for i, e in skipped]
        return out
    bench = load_benchmark(name, root, split)
    result = evaluate(method, bench, **opts)
    if args.submission:
        from composir.eval.submission import write_circo_submission, write_cirr_submission

        if name == "cirr":
            paths = write_cirr_submission(
                args.submission,
                result.query_ids,
                result.ranked_ids,
                result.subset_ranked_ids,
                [q.reference_id for q in bench.queries],
            )
        elif name == "circo":
            paths = (
                write_circo_submission(
                    Path(args.submission) / f"circo_{split}_submission.json", result.query_ids, result.ranked_ids
                ),
            )
        else:
            raise ComposirError(f"no test-server submission format for {name!r} (CIRR and CIRCO have one)")
        print("submission:", ", ".join(map(str, paths)))
    return result.to_json()


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.2f}" for k, v in metrics.items())


def cmd_eval(args: argparse.Namespace) -> int:
    from composir.utils.io import atomic_write_json

    method = build_model(args)
    if args.frames is None:
        args.frames = 8
    out = run_eval(method, args.benchmark, args.root, args.split, args)
    print(f"{out['benchmark']} {out['split']} ({out['n_queries']} queries): {format_metrics(out['metrics'])}")
    for fam, m in out.get("per_family", {}).items():
        print(f"  {fam:9s} {format_metrics(m)}")
    if out.get("skipped_media"):
        print(f"skipped {len(out['skipped_media'])} unreadable media (listed in the JSON)", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, out, indent=2)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from composir.train import load_config, train

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"output_dir={args.out}")
    cfg = load_config(args.config, overrides)
    summary = train(cfg, resume=not args.no_resume)
    print(
        f"finished at step {summary['step']}; best {cfg.train.eval_metric} = {summary['best_metric']} "
        f"(step {summary['best_step']}); run folder {summary['output_dir']}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from composir.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="composir", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic benchmark")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=10_000, help="triplets over all splits")
    p.add_argument("--video", action="store_true", help="videos (T frames, moving objects) instead of images")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=8, help="frames per video")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("eval", help="evaluate a model on a benchmark split")
    p.add_argument(
        "--benchmark",
        required=True,
        help="cirr, fashioniq (all categories), fashioniq-<category>, circo, webvid-covr, synthetic",
    )
    p.add_argument("--root", required=True, help="the benchmark's folder, as published")
    p.add_argument("--split", default="val")
    p.add_argument("--json", default=None, help="write the metrics JSON here")
    p.add_argument("--submission", default=None, help="write test-server submission files into this folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=None, help="frames sampled per video (default: the run's, else 8)")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--run", default=None, help="a training run folder: evaluate its model")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"], help="which checkpoint of --run")
    _add_model_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train a method from a YAML config (resumes the run folder by default)")
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config values, e.g. train.max_steps=100")
    p.add_argument("--out", default=None, help="run folder (overrides output_dir)")
    p.add_argument("--no-resume", action="store_true", help="start over even if the run folder has checkpoints")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="synthetic benchmark -> train -> evaluate, end to end")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--size", type=int, default=6000, help="synthetic triplets over all splits")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo config's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("methods", help="list registered methods and encoders")
    p.set_defaults(func=lambda a: _list_registered())
    return parser


def _list_registered() -> int:
    from composir.encoders import available_encoders
    from composir.methods import available_methods

    print("methods: ", ", ".join(available_methods()))
    print("encoders:", ", ".join(available_encoders()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except ComposirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
