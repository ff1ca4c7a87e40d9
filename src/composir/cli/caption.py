"""``composir caption``: multi-level captions of a split's target images from a multimodal LLM."""

from __future__ import annotations

import argparse
import sys

from composir.cli.llm import add_llm_arguments, llm_config

NAME = "caption"
HELP = "multi-level CoT captions of a split's target images from a multimodal LLM"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_llm_arguments(p, "the caption cache (JSON lines; resumed when it exists)", "images")


def run(args: argparse.Namespace) -> int:
    from composir.annotate.captions import caption_items, target_items
    from composir.data import load_benchmark

    bench = load_benchmark(args.benchmark, args.root, args.split)
    items = target_items(bench)
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
