"""``composir annotate-cot``: a caption -> reasoning -> conclusion chain per triplet (CIR-CoT)."""

from __future__ import annotations

import argparse
import sys

from composir.cli.llm import add_llm_arguments, llm_config

NAME = "annotate-cot"
HELP = "a caption -> reasoning -> conclusion chain per triplet (CIR-CoT)"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_llm_arguments(p, "the chain annotations (JSON lines; resumed when it exists)", "queries")


def run(args: argparse.Namespace) -> int:
    from composir.annotate.chains import annotate_queries
    from composir.data import load_benchmark

    bench = load_benchmark(args.benchmark, args.root, args.split)
    if args.limit:
        bench.queries = bench.queries[: args.limit]
    counts = annotate_queries(bench, args.out, llm_config(args), progress=not args.quiet)
    print(
        f"{args.out}: {counts['done']} chains written, {counts['failed']} failed (recorded; re-run to retry), "
        f"{counts['already']} already done, of {counts['queries']} queries (train with --set data.chains={args.out})"
    )
    if counts.get("first_error"):
        print(f"first failure: {counts['first_error']}", file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1
