"""``composir caption``: multi-level captions of a split's target images from a multimodal LLM."""

from __future__ import annotations

import argparse
import sys

from composir.cli.llm import add_llm_arguments, llm_config

NAME = "caption"
HELP = "multi-level CoT captions of a split's target images from a multimodal LLM"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_llm_arguments(p, "the caption cache (JSON lines; resumed when it exists)", "images", benchmark_required=False)
    p.add_argument(
        "--media",
        default=None,
        help="instead of a benchmark split: every image in this folder (ids: paths relative to it, as "
        "`composir index` keys them), for `composir index --captions`",
    )


def run(args: argparse.Namespace) -> int:
    from composir.annotate.captions import caption_items, target_items
    from composir.data import load_benchmark
    from composir.errors import ComposirError

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
    counts = caption_items(items, args.out, llm_config(args), progress=not args.quiet)
    print(
        f"{args.out}: {counts['captioned']} captioned, {counts['failed']} failed (recorded; re-run to retry), "
        f"{counts['already']} already done, of {counts['images']} images"
    )
    if counts.get("first_error"):
        print(f"first failure: {counts['first_error']}", file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1


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
