"""``composir caption``: multi-level captions of a split's target images from a multimodal LLM."""

from __future__ import annotations

import argparse
import sys

from composir.cli.llm import add_llm_arguments, llm_config

NAME = "caption"
HELP = "captions of a split's target images (or a folder's) from a multimodal LLM or a trained captioning run"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_llm_arguments(
        p,
        "the caption cache (JSON lines; resumed when it exists)",
        "images",
        benchmark_required=False,
        endpoint_required=False,
    )
    p.add_argument(
        "--captioner",
        default=None,
        help="instead of --url/--model: a trained captioning run (cir_cot with stage caption) writes the captions",
    )
    p.add_argument("--device", default="cpu", help="with --captioner: the device it runs on")
    p.add_argument(
        "--media",
        default=None,
        help="instead of a benchmark split: every image in this folder (ids: paths relative to it, as "
        "`composir index` keys them), for `composir index --captions`",
    )


def run(args: argparse.Namespace) -> int:
    from composir.annotate.captions import target_items
    from composir.data import load_benchmark
    from composir.errors import ComposirError

    if args.captioner is not None and (args.url or args.model):
        raise ComposirError("give --captioner RUN or --url/--model, not both")
    if args.captioner is None and not (args.url and args.model):
        raise ComposirError("name the captioner: --url and --model (a served multimodal LLM) or --captioner RUN")
    if args.media is not None:
        if args.benchmark or args.root:
            raise ComposirError("give --media (a folder of your images) or --benchmark and --root, not both")
        items = folder_items(args.media)
    elif not (args.benchmark and args.root):
        raise ComposirError("name what to caption: --media FOLDER, or --benchmark NAME --root FOLDER [--split]")
    else:
        items = target_items(load_benchmark(args.benchmark, args.root, args.split))
    if args.limit:
        items = items[: args.limit]
    counts = _caption(items, args)
    print(
        f"{args.out}: {counts['captioned']} captioned, {counts['failed']} failed (recorded; re-run to retry), "
        f"{counts['already']} already done, of {counts['images']} images"
    )
    if counts.get("first_error"):
        print(f"first failure: {counts['first_error']}", file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1


def _caption(items, args: argparse.Namespace) -> dict:
    if args.captioner is None:
        from composir.annotate.captions import caption_items

        return caption_items(items, args.out, llm_config(args), progress=not args.quiet)
    from composir.annotate.learned import caption_with_run, load_captioner
    from composir.utils.hub import check_model_weights

    check_model_weights(args.captioner)
    method = load_captioner(args.captioner, args.device)
    return caption_with_run(items, args.out, method, f"composir run {args.captioner}", progress=not args.quiet)


def folder_items(folder: str):
    """Every image under ``folder``, keyed as ``composir index`` keys them (the relative path)."""
    from pathlib import Path

    from composir.data.records import GalleryItem
    from composir.errors import ComposirError
    from composir.index.faiss_store import scan_media

    root = Path(folder)
    if not root.is_dir():
        raise ComposirError(f"--media {folder}: not a folder")
    items = [GalleryItem(f.key, f.path, f.media_type) for f in scan_media(root)[0] if f.media_type == "image"]
    if not items:
        raise ComposirError(f"--media {folder}: no images found")
    return items
