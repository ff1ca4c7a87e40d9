"""``composir index``: index a folder of images and videos (incremental; sharded under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from composir.cli.args import frame_count, memory_size, non_negative_int, positive_int, seed_int, unit_fraction
from composir.errors import ComposirError

NAME = "index"
HELP = "index a folder of images/videos with a trained run (incremental)"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    from composir.index.store import DEFAULT_STORE, KINDS, STORES

    # --run-dir: the same, spelled so that torchrun's own option parser does not claim it.
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", "--run-dir", dest="run", help="the trained run folder")
    model.add_argument(
        "--encoder", help="zero-shot, no training: an encoder (openclip, blip2, tiny) with --pretrained weights"
    )
    p.add_argument("--pretrained", default=None, help="with --encoder: a tag, hub id or local path of its weights")
    p.add_argument(
        "--model", default=None, help="with --encoder openclip: the architecture (default RN50x4; e.g. ViT-B-32)"
    )
    p.add_argument("--method", default="sum", help="with --encoder: a training-free method (sum, image_only, ...)")
    p.add_argument("--seed", type=seed_int, default=0, help="with --encoder: seed of any randomly initialised part")
    p.add_argument(
        "--random-weights", action="store_true", help="with --encoder and no --pretrained: index with random weights"
    )
    p.add_argument("--media", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--kind",
        default=None,
        choices=list(KINDS),
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
    p.add_argument("--nlist", type=positive_int, default=256, help="ivfsq8/ivfpq given by --kind: the number of lists")
    p.add_argument(
        "--store",
        choices=sorted(STORES),
        default=DEFAULT_STORE,
        help="; ".join(f"{name}: {spec.help}" for name, spec in sorted(STORES.items())),
    )
    p.add_argument("--uri", default=None, help="milvus: a .db file (Milvus Lite) or http://host:19530")
    p.add_argument("--collection", default=None, help="milvus: collection name (default: from --out)")
    p.add_argument("--pq-m", type=positive_int, default=32, help="IVF-PQ bytes per vector (must divide the dimension)")
    p.add_argument(
        "--refine",
        type=non_negative_int,
        default=None,
        help="IVF-PQ: re-rank refine*k candidates by their exact vectors (default 10; 0 or 1: off)",
    )
    p.add_argument("--frames", type=frame_count, default=None)
    p.add_argument(
        "--captions",
        default=None,
        help="for a method that embeds each gallery item with its caption (csmcir): a caption cache, "
        "e.g. `composir caption --media MEDIA --out FILE` (ids: paths relative to --media, or file stems); "
        "items without one are embedded with an empty caption. Only new or changed files are encoded again",
    )
    p.add_argument("--caption-stage", default="final", help="which caption of the cache (objects, attributes, ...)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--rebuild", action="store_true", help="discard what is in --out (e.g. a damaged index) and index anew"
    )


def run(args: argparse.Namespace) -> int:
    import os

    from composir.utils.hub import check_model_weights

    check_model_weights(args.run, args.encoder, args.pretrained, args.model)  # offline: one line, before torch

    from composir.index import IndexSettings
    from composir.search import model_encoder

    settings = IndexSettings(args.kind, args.nlist, args.pq_m, args.refine, args.max_memory, args.target_recall)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ComposirError(f"--out {out}: is a file, not an index folder")
    captions = _captions(args)  # a bad caption file is named before any model is loaded
    index = _open_store(args)  # a damaged index or an unreachable server is named before any encoding
    method, frames, info = _model(args)
    _say_caption_source(method, captions, args)
    info["captions"] = str(Path(args.captions).resolve()) if captions is not None and method.target_text else None
    # A user's own gallery: the run's own scoring; a token scoring keeps every item's tokens beside
    # the store, and search re-ranks its shortlist with them (index/tokens.py).
    scoring = method.use_scoring(None)
    from composir.index.tokens import TokenStore

    tokens = TokenStore(out) if scoring != "vector" else None
    info.update(fingerprint=method.encoder.fingerprint(), num_frames=frames, scoring=scoring)
    encode = model_encoder(method, frames, args.device, args.batch_size, tokens, captions)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return _run_sharded(args, index, encode, info, settings, world, tokens)
    report = index.update(args.media, encode, info, settings, batch_size=args.batch_size, rebuild=args.rebuild)
    if tokens is not None:
        tokens.prune(set(index.items()))
    print(
        f"index {args.out}: {report['total']} items ({report['added']} added, {report['updated']} updated, "
        f"{report['removed']} removed, {len(report['skipped'])} skipped; see {args.out}/report.json)"
    )
    _print_plan(index)
    return 0


def _open_store(args: argparse.Namespace):
    from composir.index import GalleryIndex, MilvusIndex

    if args.store == "milvus":
        if args.uri is None:
            raise ComposirError("--store milvus needs --uri (a .db file for Milvus Lite, or http://host:19530)")
        if "://" not in args.uri:  # a Milvus Lite file: its folder must be writable
            from composir.cli.args import check_writable

            check_writable(args.uri, "--uri")
        if args.collection is not None:
            from composir.index.milvus_store import check_collection_name

            check_collection_name(args.collection)
        return MilvusIndex(args.out, args.uri, args.collection)
    return GalleryIndex(args.out, load=not args.rebuild)


def _captions(args: argparse.Namespace) -> dict[str, str] | None:
    if args.captions is None:
        return None
    from composir.data.captions import read_captions

    if not Path(args.captions).is_file():
        raise ComposirError(f"--captions {args.captions}: file not found")
    return read_captions(args.captions, args.caption_stage)


def _say_caption_source(method, captions: dict[str, str] | None, args: argparse.Namespace) -> None:
    """Where the gallery's captions come from, for a method that reads them; a caption file for one
    that does not is said to be unused."""
    import sys

    if not method.target_text:
        if captions is not None:
            print(f"note: {method.name} does not read captions; --captions is not used", file=sys.stderr)
        return
    if captions is None:
        advice = f"`composir caption --media {args.media} --out captions.jsonl ...`"
        print(f"note: {method.name} embeds each gallery item with its caption and none were given: items are "
              f"embedded with an empty caption. Caption them first ({advice}) and index with --captions "
              "captions.jsonl", file=sys.stderr)  # fmt: skip
    else:
        print(f"gallery captions: {args.captions} ({len(captions)} captions, stage {args.caption_stage})",
              file=sys.stderr)  # fmt: skip


def _model(args: argparse.Namespace):
    """(the method that encodes the gallery, frames per video, the info the index keeps about it)."""
    if args.run:
        from composir.train import load_run

        method, cfg = load_run(args.run, "best", args.device)
        return method, args.frames or cfg.data.num_frames, {"run": str(Path(args.run).resolve()),
                                                            "method": cfg.method.name}  # fmt: skip
    # zero-shot: a (pretrained) encoder and a training-free method, no run folder
    from composir.runs import build_untrained

    if not args.pretrained and not args.random_weights:
        raise ComposirError(
            f"--encoder {args.encoder} without --pretrained weights would index with random weights; "
            "give --pretrained (a tag, hub id or file), or --random-weights on purpose (smoke tests)"
        )
    spec = {"encoder": args.encoder, "pretrained": args.pretrained, "method": args.method, "seed": args.seed}
    if args.model:
        spec["model"] = args.model
    info = {"model": spec, "method": args.method, **({"random_weights": True} if not args.pretrained else {})}
    return build_untrained(spec, args.device), args.frames or 1, info


def _run_sharded(args: argparse.Namespace, index, encode, info: dict, settings, world: int, tokens=None) -> int:
    import torch.distributed as dist

    from composir.index.sharding import index_sharded_faiss, index_sharded_milvus

    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    try:
        if args.store == "milvus":
            report = index_sharded_milvus(index, args.media, encode, info, args.batch_size, rank, world, dist.barrier)
            if rank == 0:
                print(f"index {args.out}: {len(index)} items in {args.uri} from {world} ranks "
                      f"(rank 0: {report['added']} added)")  # fmt: skip
        else:
            report = index_sharded_faiss(args.out, args.media, encode, info, settings, args.batch_size, rank, world,
                                         dist.barrier)  # fmt: skip
            if rank == 0:
                print(f"index {args.out}: {report['total']} items merged from {world} shards "
                      f"(rank 0: {report['added']} added, {report['removed']} removed)")  # fmt: skip
        if rank == 0 and tokens is not None:
            from composir.index import open_index

            tokens.prune(set(open_index(args.out).items()))
    finally:
        dist.destroy_process_group()
    return 0


def _print_plan(index) -> None:
    from composir.index.plan import IndexPlan

    plan = IndexPlan.from_info(index.info)
    if plan is not None:
        print(f"index plan: {plan.describe()}")
