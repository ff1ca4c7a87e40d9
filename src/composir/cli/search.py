"""``composir search``: one query against an index."""

from __future__ import annotations

import argparse
import json

from composir.cli.args import positive_int

NAME = "search"
HELP = "search an index with a reference image/video and/or a text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True)
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--image", help="reference image or video file (or an id in the index)")
    ref.add_argument("--id", help="reference given by its id in the index")
    p.add_argument("--text", default=None)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--run", default=None, help="model run (default: the one the index was built with)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--shortlist",
        type=positive_int,
        default=None,
        help="a token-scoring run's index: items fetched by vector, then re-ranked by tokens (default 200)",
    )


def run(args: argparse.Namespace) -> int:
    from composir.utils.hub import check_model_weights

    check_model_weights(args.run)  # offline: a missing model is one line, before torch is imported
    from composir.search import Searcher
    from composir.search.searcher import DEFAULT_SHORTLIST

    searcher = Searcher(args.index, run=args.run, device=args.device, shortlist=args.shortlist or DEFAULT_SHORTLIST)
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
