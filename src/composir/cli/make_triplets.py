"""``composir make-triplets``: training triplets from captioned images."""

from __future__ import annotations

import argparse
from pathlib import Path

from composir.cli.args import float_in, positive_int, seed_int

NAME = "make-triplets"
HELP = "training triplets from captioned images (edited captions -> images)"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder of images whose file names (stems) are the caption ids")
    p.add_argument("--captions", required=True, help="caption cache (composir caption) or a file in its format")
    p.add_argument("--out", required=True, help="output folder, CIRR layout")
    p.add_argument("--match", default="captions", choices=["captions", "model"])
    p.add_argument("--run", default=None, help="trained run for --match model (text -> image similarity)")
    p.add_argument(
        "--threshold",
        type=float_in(-1.0, 1.0, low_open=False),
        default=None,
        help="keep a pair from this score (default 0.99 / 0.3)",
    )
    p.add_argument("--per-image", type=positive_int, default=2, help="edits tried per reference image")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from composir.annotate.triplets import TripletConfig, make_triplets

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
        f"from {counts['images']} captioned images; {counts['skipped']} skipped"
        + (f" (listed in {args.out}/skipped.json)" if counts["skipped"] else "")
        + f"\ntrain on them with: composir train --config CONFIG --set data.benchmark=cirr data.root={args.out}"
    )
    return 0
