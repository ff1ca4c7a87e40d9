"""``composir convert``: a published CLIP4Cir, CoVR-2 or SPRC checkpoint -> a composir run folder."""

from __future__ import annotations

import argparse
import json

NAME = "convert"
HELP = "turn a published CLIP4Cir / CoVR-2 / SPRC checkpoint into a run folder that eval, index, search and serve use"
OUTPUTS = ("out",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer", choices=["clip4cir", "covr2", "sprc"], help="whose checkpoint format")
    p.add_argument(
        "files",
        nargs="+",
        help="clip4cir: the CLIP .pt then the Combiner .pt; covr2: the .ckpt; sprc: the .pt",
    )
    p.add_argument("--out", required=True, help="the run folder to write (must not exist)")
    p.add_argument(
        "--model",
        default=None,
        help="clip4cir: the open_clip architecture (default: read from the CLIP state dict)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="covr2/sprc: BLIP-2's tokenizer, a folder or a hub id in the local cache "
        "(default Salesforce/blip2-itm-vit-g)",
    )
    p.add_argument(
        "--target-model",
        default=None,
        help="covr2: the frozen model its targets come from (default Salesforce/blip2-itm-vit-g-coco)",
    )
    p.add_argument(
        "--heads",
        default=None,
        help="covr2/sprc: attention heads as VISION,QFORMER when not BLIP-2's 16,12 (no state dict holds them)",
    )
    p.add_argument("--encoder-config", default=None, help="JSON merged into the encoder config (advanced)")


def _heads(text: str | None) -> tuple[int, int]:
    from composir.errors import ConfigError

    if text is None:
        return (16, 12)
    try:
        vision, qformer = (int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--heads must be two numbers VISION,QFORMER (e.g. 16,12), got {text!r}") from None
    return vision, qformer


def run(args: argparse.Namespace) -> int:
    from composir.errors import ConfigError
    from composir.runs import convert as cv

    expected = 2 if args.peer == "clip4cir" else 1
    if len(args.files) != expected:
        raise ConfigError(f"convert {args.peer} takes {expected} file(s), got {len(args.files)}: {args.files}")
    try:
        extra = json.loads(args.encoder_config) if args.encoder_config else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--encoder-config is not JSON ({exc})") from None
    if args.peer == "clip4cir":
        encoder = {**({"model": args.model} if args.model else {}), **extra} or None
        converted = cv.convert_clip4cir(args.files[0], args.files[1], encoder)
    elif args.peer == "covr2":
        converted = cv.convert_covr2(
            args.files[0], args.tokenizer or cv.BLIP2_TOKENIZER, args.target_model or cv.COCO_BLIP2, _heads(args.heads)
        )
    else:
        converted = cv.convert_sprc(args.files[0], args.tokenizer or cv.BLIP2_TOKENIZER, _heads(args.heads))
    if extra and args.peer != "clip4cir":
        converted.encoder["config"].update(extra)
    out = cv.write_run(converted, args.out, f"{args.peer} {' '.join(args.files)}")
    for note in converted.notes:
        print(f"note: {note}")
    print(f"wrote {out}: composir eval --run {out} --benchmark ... --root ...")
    return 0
