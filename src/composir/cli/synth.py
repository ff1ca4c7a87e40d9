"""``composir synth``: write the synthetic benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from composir.cli.args import frame_count, int_in, positive_int, seed_int

NAME = "synth"
HELP = "write the synthetic benchmark"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--size", type=positive_int, default=10_000, help="triplets over all splits")
    p.add_argument("--video", action="store_true", help="videos (T frames, moving objects) instead of images")
    p.add_argument("--image-size", type=int_in(16, 4096), default=64, help="pixels per side")
    p.add_argument("--frames", type=frame_count, default=8, help="frames per video")
    p.add_argument("--workers", type=positive_int, default=2, help="rendering processes")
    p.add_argument(
        "--schemas", action="store_true", help="add the schema benchmark (24 schemas, shot levels, transfer, gate)"
    )
    p.add_argument("--schema-test-queries", type=positive_int, default=500, help="test queries per schema bucket")


def run(args: argparse.Namespace) -> int:
    from composir.data import load_benchmark
    from composir.synth import SynthConfig, generate
    from composir.synth.contact_sheet import render_contact_sheet

    cfg = SynthConfig(
        out=Path(args.out),
        seed=args.seed,
        size=args.size,
        video=args.video,
        image_size=args.image_size,
        num_frames=args.frames,
        workers=args.workers,
        schemas=args.schemas,
        schema_test_queries=args.schema_test_queries,
    )
    summary = generate(cfg)
    sheet = render_contact_sheet(load_benchmark("synthetic", args.out, "val"), Path(args.out) / "contact_sheet.png")
    for split in ("train", "val", "test"):
        s = summary[split]
        print(
            f"{split:5s}: {s['triplets']:6d} triplets ({s['explicit']} explicit, {s['multi']} multi, "
            f"{s['implicit']} implicit, {s['schema']} schema), {s['images']} {'videos' if args.video else 'images'}"
        )
    print(f"wrote {args.out} (contact sheet: {sheet})")
    return 0
