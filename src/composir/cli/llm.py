"""The OpenAI-compatible endpoint arguments of ``caption`` and ``annotate-cot``."""

from __future__ import annotations

import argparse

from composir.cli.args import non_negative_int, positive_int, seconds


def llm_config(args: argparse.Namespace):
    from composir.annotate.client import CaptionerConfig

    return CaptionerConfig(
        url=args.url,
        model=args.model,
        api_key_env=args.api_key_env,
        timeout=args.timeout,
        retries=args.retries,
        concurrency=args.concurrency,
    )


def add_llm_arguments(
    p: argparse.ArgumentParser,
    out_help: str,
    unit: str,
    benchmark_required: bool = True,
    endpoint_required: bool = True,
) -> None:
    """The benchmark split and the OpenAI-compatible endpoint (caption, annotate-cot)."""
    p.add_argument("--benchmark", required=benchmark_required)
    p.add_argument("--root", required=benchmark_required)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument(
        "--url", required=endpoint_required, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1"
    )
    p.add_argument("--model", required=endpoint_required, help="the served multimodal model's name")
    p.add_argument("--api-key-env", default=None, help="environment variable that holds the API key")
    p.add_argument("--timeout", type=seconds, default=60.0, help="seconds per request, the whole answer included")
    p.add_argument("--retries", type=non_negative_int, default=3, help="retries per request (exponential back-off)")
    p.add_argument("--concurrency", type=positive_int, default=4, help=f"{unit} in flight at once")
    p.add_argument("--limit", type=positive_int, default=None, help=f"at most this many {unit}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
