"""``composir`` command line: synth | train | cache | eval | index | search | serve | demo | methods."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from composir.errors import ComposirError, WorkInterrupted


def _int_at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)  # k, batch sizes, frames
non_negative_int = _int_at_least(0)  # worker counts


def memory_size(text: str) -> int:
    """An argparse type: a size such as 300MiB or 2GiB, in bytes."""
    from composir.index_plan import parse_bytes

    try:
        value = parse_bytes(text)
    except ComposirError:
        raise argparse.ArgumentTypeError(f"expected a size such as 300MiB or 2GiB, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


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
        schemas=args.schemas,
        schema_test_queries=args.schema_test_queries,
    )
    summary = generate(cfg)
    sheet = render_contact_sheet(load_benchmark("synthetic", args.out, "val"), Path(args.out) / "contact_sheet.png")
    for split in ("train", "val", "test"):
        s = summary[split]
        print(
            f"{split:5s}: {s['triplets']:6d} triplets ({s['explicit']} explicit, {s['multi']} multi, "
            f"{s['implicit']} implicit, {s['schema']} schema), {s['images']} {'videos' if args.video else 'images'}"
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
    from composir.data.media_check import require_media
    from composir.eval import metrics as M
    from composir.eval.evaluate import evaluate

    opts = dict(batch_size=args.batch_size, num_frames=args.frames, device=args.device, num_workers=args.workers)

    def checked(bench):
        require_media(bench, getattr(args, "allow_missing", False), "pass --allow-missing")
        return bench

    if name == "fashioniq":
        per_cat, n, skipped = {}, 0, []
        for cat in ("dress", "shirt", "toptee"):
            bench = checked(load_benchmark(f"fashioniq-{cat}", root, split))
            res = evaluate(method, bench, **opts)
            _pictures(method, bench, res, args, suffix=f"-{cat}")
            per_cat[cat], n, skipped = res.metrics, n + len(res.query_ids), skipped + res.failures
        out = {"benchmark": name, "split": split, "metrics": M.fashioniq_metrics(per_cat), "n_queries": n}
        if skipped:
            out["skipped_media"] = [{"id": i, "error": e} for i, e in skipped]
        return out
    bench = checked(load_benchmark(name, root, split))
    result = evaluate(method, bench, **opts)
    _pictures(method, bench, result, args)
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


def _pictures(method, bench, result, args: argparse.Namespace, suffix: str = "") -> None:
    """``--grid``: the query grid (with the method's explanations where it has them); next to it,
    or next to ``--json``, the recall@K curves per family."""
    from composir.eval.pictures import render_grid, render_recall_curves

    grid = getattr(args, "grid", None)
    if grid:
        path = Path(grid)
        path = path.with_name(f"{path.stem}{suffix}{path.suffix or '.png'}")
        render_grid(
            bench, result, path, n=args.grid_queries, k=args.grid_k, explain=_explainer(method, bench, result, args)
        )
        print(f"grid: {path}")
    folder = Path(grid).parent if grid else Path(args.json).parent if getattr(args, "json", None) else None
    if folder is not None and result.per_family:
        curves = render_recall_curves(result.metrics, result.per_family, folder / f"recall_at_k{suffix}.png")
        print(f"recall@K curves: {curves}")


def _explainer(method, bench, result, args: argparse.Namespace):
    """Explanations of sampled queries from the method's own ``encode_query_explained`` (None for
    methods without one)."""
    import torch

    from composir.index import load_query_frames
    from composir.methods.base import RetrievalMethod

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


def cmd_cache(args: argparse.Namespace) -> int:
    from composir.cache import build_cache
    from composir.data import load_benchmark
    from composir.train import build_from_config, load_config, load_run

    if args.run:
        method, cfg = load_run(args.run, "latest")
    else:
        cfg = load_config(args.config, args.set or [])
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


def cmd_index(args: argparse.Namespace) -> int:
    import os

    from composir.index import GalleryIndex, model_encoder
    from composir.train import load_run

    if args.store == "milvus":
        from composir.index_milvus import MilvusIndex

        if args.uri is None:
            raise ComposirError("--store milvus needs --uri (a .db file for Milvus Lite, or http://host:19530)")
        index = MilvusIndex(args.out, args.uri, args.collection)  # an unreachable server is named now
    else:
        index = GalleryIndex(args.out, load=not args.rebuild)  # a damaged index is named before any encoding
    if args.run:
        method, cfg = load_run(args.run, "best", args.device)
        frames = args.frames or cfg.data.num_frames
        info = {"run": str(Path(args.run).resolve()), "method": cfg.method.name}
    else:  # zero-shot: a (pretrained) encoder and a training-free method, no run folder
        from composir.search import build_untrained

        spec = {"encoder": args.encoder, "pretrained": args.pretrained, "method": args.method, "seed": args.seed}
        method = build_untrained(spec, args.device)
        frames = args.frames or 1
        info = {"model": spec, "method": args.method}
    info.update(fingerprint=method.encoder.fingerprint(), num_frames=frames)
    encode = model_encoder(method, frames, args.device, args.batch_size)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.store == "milvus":
        return _index_sharded_milvus(index, args, encode, info, world)
    if world > 1:
        return _index_sharded(args, encode, info, world)
    report = index.update(
        args.media,
        encode,
        info,
        kind=args.kind,
        batch_size=args.batch_size,
        nlist=args.nlist,
        pq_m=args.pq_m,
        refine=args.refine,
        rebuild=args.rebuild,
        max_memory=args.max_memory,
        target_recall=args.target_recall,
    )
    print(
        f"index {args.out}: {report['total']} items ({report['added']} added, {report['updated']} updated, "
        f"{report['removed']} removed, {len(report['skipped'])} skipped; see {args.out}/report.json)"
    )
    _print_plan(index)
    return 0


def _index_sharded_milvus(index, args: argparse.Namespace, encode, info: dict, world: int) -> int:
    """Under torchrun with Milvus: every rank writes its shard straight into the one collection
    (a Milvus server; Milvus Lite is one process's file)."""
    import torch.distributed as dist

    from composir.index import shard_of

    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    report = index.update(args.media, encode, info, batch_size=args.batch_size, progress=rank == 0,
                          keep=lambda key: shard_of(key, world) == rank, write_info=False)  # fmt: skip
    dist.barrier()
    if rank == 0:
        index.write_info(info, args.media)
        print(
            f"index {args.out}: {len(index)} items in {args.uri} from {world} ranks (rank 0: {report['added']} added)"
        )
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _print_plan(index) -> None:
    from composir.index_plan import IndexPlan

    plan = IndexPlan.from_info(index.info)
    if plan is not None:
        print(f"index plan: {plan.describe()}")


def _index_sharded(args: argparse.Namespace, encode, info: dict, world: int) -> int:
    """Under torchrun: each rank indexes its shard of the files into parts/, rank 0 merges them."""
    import torch.distributed as dist

    from composir.index import GalleryIndex, merge_parts, shard_of

    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    parts = [Path(args.out) / "parts" / f"part-{r:03d}-of-{world:03d}" for r in range(world)]
    report = GalleryIndex(parts[rank]).update(
        args.media,
        encode,
        info,
        kind="flat",
        batch_size=args.batch_size,
        progress=rank == 0,
        keep=lambda key: shard_of(key, world) == rank,
    )
    dist.barrier()
    if rank == 0:
        merged = merge_parts(
            parts,
            args.out,
            kind=args.kind or "auto",
            nlist=args.nlist,
            pq_m=args.pq_m,
            refine=10 if args.refine is None else args.refine,
            max_memory=args.max_memory,
            target_recall=args.target_recall,
        )
        print(
            f"index {args.out}: {merged['total']} items merged from {world} shards "
            f"(rank 0: {report['added']} added, {report['removed']} removed)"
        )
    dist.barrier()
    dist.destroy_process_group()
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from composir.search import Searcher

    searcher = Searcher(args.index, run=args.run, device=args.device)
    reference = args.image or args.id
    loaded = searcher.load_reference(reference) if reference is not None else None
    results, explanation = searcher.search_explained(loaded, args.text, args.k)
    if args.json:
        print(json.dumps({"results": [r.to_json() for r in results], "explanation": explanation}))
        return 0
    for rank, r in enumerate(results, 1):
        print(f"{rank:3d}. {r.score:.4f}  {r.id}")
    chain = (explanation or {}).get("chain") if isinstance(explanation, dict) else None
    for section, text in (chain or {}).items():  # a reasoning method's chain, after the results
        if text:
            print(f"{section}: {text}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from composir.search import Searcher
    from composir.service import ServiceSettings, create_app

    searcher = Searcher(args.index, run=args.run, device=args.device)
    settings = ServiceSettings(
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        max_upload_pixels=int(args.max_upload_mp * 1_000_000),
        max_k=args.max_k,
        max_text_chars=args.max_text,
        token=args.token,
    )
    examples = _serve_examples(args, searcher)
    print(f"serving {len(searcher.index)} items on http://{args.host}:{args.port}/ (API docs at /docs)")
    uvicorn.run(create_app(searcher, settings, examples), host=args.host, port=args.port, log_level="warning")
    return 0


def _serve_examples(args: argparse.Namespace, searcher) -> list[dict] | None:
    """The page's sample queries from ``--benchmark/--root/--split``, checked before serving."""
    if not args.benchmark:
        return None
    if not args.root:
        raise ComposirError("--benchmark needs --root (the benchmark's folder)")
    from composir.data import load_benchmark
    from composir.service.examples import sample_examples

    bench = load_benchmark(args.benchmark, args.root, args.split)
    index = searcher.index
    examples = sample_examples(bench, searcher.media_root, lambda key: index.key_to_id(key) is not None, args.examples)
    if not examples:
        raise ComposirError(
            f"{args.benchmark} {args.split} at {args.root}: no query has its reference and a target in the index "
            f"{args.index} (index that split's images)"
        )
    print(f"sample queries: {len(examples)} from {args.benchmark} {args.split} (the page's 'sample queries' grid)")
    return examples


def cmd_caption(args: argparse.Namespace) -> int:
    from composir.caption import caption_items, target_items
    from composir.data import load_benchmark

    bench = load_benchmark(args.benchmark, args.root, args.split)
    items = target_items(bench)
    if args.limit:
        items = items[: args.limit]
    counts = caption_items(items, args.out, _llm_config(args), progress=not args.quiet)
    print(
        f"{args.out}: {counts['captioned']} captioned, {counts['failed']} failed (recorded; re-run to retry), "
        f"{counts['already']} already done, of {counts['images']} images"
    )
    return 0 if counts["failed"] == 0 else 1


def _llm_config(args: argparse.Namespace):
    from composir.caption import CaptionerConfig

    return CaptionerConfig(
        url=args.url,
        model=args.model,
        api_key_env=args.api_key_env,
        timeout=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
    )


def _llm_arguments(p: argparse.ArgumentParser, out_help: str, unit: str) -> None:
    """The benchmark split and the OpenAI-compatible endpoint (caption, annotate-cot)."""
    p.add_argument("--benchmark", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--url", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    p.add_argument("--model", required=True, help="the served multimodal model's name")
    p.add_argument("--api-key-env", default=None, help="environment variable that holds the API key")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=non_negative_int, default=3, help="retries per request (exponential back-off)")
    p.add_argument("--concurrency", type=positive_int, default=4, help=f"{unit} in flight at once")
    p.add_argument("--limit", type=positive_int, default=None, help=f"at most this many {unit}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_annotate_cot(args: argparse.Namespace) -> int:
    from composir.annotate_cot import annotate_queries
    from composir.data import load_benchmark

    bench = load_benchmark(args.benchmark, args.root, args.split)
    if args.limit:
        bench.queries = bench.queries[: args.limit]
    counts = annotate_queries(bench, args.out, _llm_config(args), progress=not args.quiet)
    print(
        f"{args.out}: {counts['done']} chains written, {counts['failed']} failed (recorded; re-run to retry), "
        f"{counts['already']} already done, of {counts['queries']} queries (train with --set data.chains={args.out})"
    )
    return 0 if counts["failed"] == 0 else 1


def cmd_make_triplets(args: argparse.Namespace) -> int:
    from composir.triplets import TripletConfig, make_triplets

    cfg = TripletConfig(
        images=Path(args.images),
        captions=Path(args.captions),
        out=Path(args.out),
        match=args.match,
        run=Path(args.run) if args.run else None,
        threshold=args.threshold if args.threshold is not None else (0.99 if args.match == "captions" else 0.3),
        per_image=args.per_image,
        seed=args.seed,
    )
    counts = make_triplets(cfg, progress=not args.quiet)
    print(
        f"{args.out}: {counts['train']} train + {counts['val']} val triplets kept of {counts['edits']} edits "
        f"from {counts['images']} captioned images (train with --benchmark cirr --root {args.out})"
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
    p.add_argument(
        "--schemas", action="store_true", help="add the schema benchmark (24 schemas, shot levels, transfer, gate)"
    )
    p.add_argument("--schema-test-queries", type=positive_int, default=500, help="test queries per schema bucket")
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
    p.add_argument("--grid", default=None, help="also draw sampled queries and their top results to this PNG")
    p.add_argument("--grid-queries", type=positive_int, default=8, help="queries in the --grid picture")
    p.add_argument("--grid-k", type=positive_int, default=5, help="results per query in the --grid picture")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip media files the benchmark names but that are not on disk (listed in the output) "
        "instead of stopping before evaluation",
    )
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument(
        "--frames", type=positive_int, default=None, help="frames sampled per video (default: the run's, else 8)"
    )
    p.add_argument("--workers", type=non_negative_int, default=0, help="data-loading processes")
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

    p = sub.add_parser("cache", help="encode a split's media once with the frozen vision tower (resumable)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a training config: its encoder, benchmark and splits")
    src.add_argument("--run", help="a run folder: its encoder")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--benchmark", default=None)
    p.add_argument("--root", default=None)
    p.add_argument("--splits", nargs="*", default=None, help="default: the config's train and val splits")
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--per-frame", action="store_true", help="keep each frame's tokens instead of their mean")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("index", help="index a folder of images/videos with a trained run (incremental)")
    # --run-dir: the same, spelled so that torchrun's own option parser does not claim it.
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", "--run-dir", dest="run", help="the trained run folder")
    model.add_argument(
        "--encoder", help="zero-shot, no training: an encoder (openclip, blip2, tiny) with --pretrained weights"
    )
    p.add_argument("--pretrained", default=None, help="with --encoder: a tag, hub id or local path of its weights")
    p.add_argument("--method", default="sum", help="with --encoder: a training-free method (sum, image_only, ...)")
    p.add_argument("--seed", type=int, default=0, help="with --encoder: seed of any randomly initialised part")
    p.add_argument("--media", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--kind",
        default=None,
        choices=["auto", "flat", "ivfsq8", "ivfpq"],
        help="auto: chosen and tuned from the collection (measured recall@10 >= --target-recall within "
        "--max-memory); or exact (flat), IVF-SQ8, IVF-PQ (default: the index's own, else auto)",
    )
    p.add_argument(
        "--max-memory",
        type=memory_size,
        default=None,
        help="auto: memory the index may hold, e.g. 300MiB or 2GiB (default: a quarter of this machine's RAM)",
    )
    p.add_argument("--target-recall", type=unit_fraction, default=0.95, help="auto: recall@10 to reach (default 0.95)")
    p.add_argument("--nlist", type=int, default=256, help="ivfsq8/ivfpq given by --kind: the number of lists")
    p.add_argument(
        "--store",
        choices=["faiss", "milvus"],
        default="faiss",
        help="faiss: files in --out; milvus: a Milvus collection at --uri (--out keeps a pointer)",
    )
    p.add_argument("--uri", default=None, help="milvus: a .db file (Milvus Lite) or http://host:19530")
    p.add_argument("--collection", default=None, help="milvus: collection name (default: from --out)")
    p.add_argument("--pq-m", type=int, default=32, help="IVF-PQ bytes per vector (must divide the dimension)")
    p.add_argument(
        "--refine",
        type=int,
        default=None,
        help="IVF-PQ: re-rank refine*k candidates by their exact vectors (default 10; 0 or 1: off)",
    )
    p.add_argument("--frames", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--rebuild", action="store_true", help="discard what is in --out (e.g. a damaged index) and index anew"
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an index with a reference image/video and/or a text")
    p.add_argument("--index", required=True)
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--image", help="reference image or video file (or an id in the index)")
    ref.add_argument("--id", help="reference given by its id in the index")
    p.add_argument("--text", default=None)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--run", default=None, help="model run (default: the one the index was built with)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="HTTP API + web page over an index")
    p.add_argument("--index", required=True)
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; 0.0.0.0 exposes it to the network")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on /search and /media")
    p.add_argument("--max-upload-mb", type=positive_int, default=50)
    p.add_argument(
        "--max-upload-mp", type=float, default=24.0, help="largest uploaded image (megapixels; JPEGs decode reduced)"
    )
    p.add_argument("--max-k", type=positive_int, default=100)
    p.add_argument("--max-text", type=positive_int, default=500)
    p.add_argument("--run", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--benchmark", default=None, help="give the page sample queries with ground truth from this benchmark"
    )
    p.add_argument("--root", default=None, help="the benchmark's folder")
    p.add_argument("--split", default="test")
    p.add_argument("--examples", type=positive_int, default=8, help="how many sample queries")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("caption", help="multi-level CoT captions of a split's target images from a multimodal LLM")
    _llm_arguments(p, "the caption cache (JSON lines; resumed when it exists)", "images")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("annotate-cot", help="a caption -> reasoning -> conclusion chain per triplet (CIR-CoT)")
    _llm_arguments(p, "the chain annotations (JSON lines; resumed when it exists)", "queries")
    p.set_defaults(func=cmd_annotate_cot)

    p = sub.add_parser("make-triplets", help="training triplets from captioned images (edited captions -> images)")
    p.add_argument("--images", required=True, help="folder of images whose file names (stems) are the caption ids")
    p.add_argument("--captions", required=True, help="caption cache (composir caption) or a file in its format")
    p.add_argument("--out", required=True, help="output folder, CIRR layout")
    p.add_argument("--match", default="captions", choices=["captions", "model"])
    p.add_argument("--run", default=None, help="trained run for --match model (text -> image similarity)")
    p.add_argument("--threshold", type=float, default=None, help="keep a pair from this score (default 0.99 / 0.3)")
    p.add_argument("--per-image", type=positive_int, default=2, help="edits tried per reference image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_make_triplets)

    p = sub.add_parser("demo", help="synthetic benchmark -> train -> evaluate, end to end")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--size", type=int, default=20_000, help="synthetic triplets over all splits")
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
        if getattr(args, "device", None) is not None:
            from composir.train.config import check_device

            check_device(args.device, "--device")
        return args.func(args)
    except ComposirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, WorkInterrupted) else 2
    except KeyboardInterrupt:
        print(f"interrupted: composir {args.command} stopped before it finished", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
