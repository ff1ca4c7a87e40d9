"""``composir serve``: the HTTP API and web page over an index."""

from __future__ import annotations

import argparse

from composir.cli.args import float_in, port_int, positive_int
from composir.errors import ComposirError

NAME = "serve"
HELP = "HTTP API + web page over an index"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True)
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; 0.0.0.0 exposes it to the network")
    p.add_argument("--port", type=port_int, default=8000)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on /search and /media")
    p.add_argument("--max-upload-mb", type=positive_int, default=50)
    p.add_argument(
        "--max-upload-mp",
        type=float_in(0.0, 1000.0),
        default=24.0,
        help="largest uploaded image (megapixels; JPEGs decode reduced)",
    )
    p.add_argument("--max-decodes", type=positive_int, default=2, help="references decoded at once")
    p.add_argument("--max-decode-mb", type=positive_int, default=256, help="memory one reference's decode may take")
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


def run(args: argparse.Namespace) -> int:
    from composir.utils.hub import check_model_weights

    check_model_weights(args.run)  # offline: a missing model is one line, before torch is imported
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
        max_decodes=args.max_decodes,
        max_decode_bytes=args.max_decode_mb * 1024 * 1024,
    )
    examples = _serve_examples(args, searcher)
    print(f"serving {len(searcher.index)} items on http://{args.host}:{args.port}/ (API docs at /docs)")
    uvicorn.run(
        create_app(searcher, settings, examples),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_keep_alive=settings.idle_timeout_s,
        limit_concurrency=settings.max_connections,
    )
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
