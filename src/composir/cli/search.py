"""``composir search``: one query against an index, or against a running ``composir serve``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from composir.cli.args import positive_int
from composir.errors import ConfigError

NAME = "search"
HELP = "search an index with a reference image/video and/or a text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", help="index folder (the model is loaded in this process)")
    where.add_argument(
        "--server",
        help="URL of a running `composir serve` to ask instead (no model loaded here: a query in well under a second)",
    )
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--image", help="reference image or video file (or an id in the index)")
    ref.add_argument("--id", help="reference given by its id in the index")
    p.add_argument("--text", default=None, help="modification text")
    p.add_argument("--k", type=positive_int, default=10, help="results to return")
    p.add_argument("--json", action="store_true", help="print the results and explanation as one JSON object")
    p.add_argument("--run", default=None, help="model run (default: the one the index was built with)")
    p.add_argument("--device", default="cpu", help="device for the model (with --index)")
    p.add_argument(
        "--shortlist",
        type=positive_int,
        default=None,
        help="a token-scoring run's index: items fetched by vector, then re-ranked by tokens (default 200)",
    )
    p.add_argument("--token", default=None, help="with --server: the server's bearer token")


def run(args: argparse.Namespace) -> int:
    answer = _ask_server(args) if args.server is not None else _search_here(args)
    _print(answer, args.json)
    return 0


def _search_here(args: argparse.Namespace) -> dict:
    if args.token is not None:
        raise ConfigError("--token is for --server; a local --index needs none")
    from composir.utils.hub import check_model_weights

    check_model_weights(args.run)  # offline: a missing model is one line, before torch is imported
    from composir.search import Searcher
    from composir.search.searcher import DEFAULT_SHORTLIST

    searcher = Searcher(args.index, run=args.run, device=args.device, shortlist=args.shortlist or DEFAULT_SHORTLIST)
    reference = args.image or args.id
    loaded = searcher.load_reference(reference) if reference is not None else None
    results, explanation = searcher.search_explained(loaded, args.text, args.k)
    return {"results": [r.to_json() for r in results], "explanation": explanation}


def _ask_server(args: argparse.Namespace) -> dict:
    for option in ("run", "shortlist"):
        if getattr(args, option) is not None:
            raise ConfigError(f"--{option} sets up a local model; the server at --server uses its own")
    from composir.service.client import RemoteQuery, remote_search

    # As with a local index, --image is a file when one exists there, else an id in the index.
    image = Path(args.image) if args.image is not None else None
    if image is not None and image.is_file():
        query = RemoteQuery(text=args.text, file=image, k=args.k)
    else:
        query = RemoteQuery(text=args.text, id=args.id or args.image, k=args.k)
    if query.file is None and query.id is None and not query.text:
        raise ConfigError("give --image, --id or --text (or several)")
    return remote_search(args.server, query, token=args.token)


def _print(answer: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer))
        return
    for rank, r in enumerate(answer["results"], 1):
        print(f"{rank:3d}. {float(r['score']):.4f}  {r['id']}")
    explanation = answer.get("explanation")
    chain = explanation.get("chain") if isinstance(explanation, dict) else None
    for section, text in (chain or {}).items():  # a reasoning method's chain, after the results
        if text:
            print(f"{section}: {text}")
