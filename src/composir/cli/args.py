"""Argument types and argument groups shared by several subcommands."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from composir.errors import ComposirError
from composir.utils.limits import MAX_FRAMES


def int_in(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high]; ``low``/``high`` stay readable on it (the
    test that walks every numeric option reads them)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    parse.low, parse.high = low, high  # type: ignore[attr-defined]
    return parse


def float_in(low: float, high: float, low_open: bool = True):
    """An argparse type: a finite number in (low, high] (``low_open``) or [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}")
        return value

    parse.low, parse.high = low, high  # type: ignore[attr-defined]
    return parse


positive_int = int_in(1)  # k, batch sizes
frame_count = int_in(1, MAX_FRAMES)  # frames sampled per video
non_negative_int = int_in(0)  # worker counts
seed_int = int_in(0, 2**32 - 1)  # what numpy's and torch's generators all take
port_int = int_in(1, 65535)
seconds = float_in(0.0, 86_400.0)  # a time-out


def memory_size(text: str) -> int:
    """An argparse type: a size such as 300MiB or 2GiB, in bytes."""
    from composir.index.plan import parse_bytes

    try:
        value = parse_bytes(text)
    except ComposirError:
        raise argparse.ArgumentTypeError(f"expected a size such as 300MiB or 2GiB, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return value


memory_size.low = 1  # type: ignore[attr-defined]


unit_fraction = float_in(0.0, 1.0)  # a recall target


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="tiny", help="encoder name (tiny, openclip, blip2)")
    p.add_argument("--pretrained", default=None, help="encoder weights: a tag or a local path")
    p.add_argument("--model", default=None, help="openclip: the architecture (ViT-B-32, ViT-L-14, RN50x4, ...)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="allow a model with no trained or pretrained weights (smoke tests)",
    )
    p.add_argument("--method", default="sum", help="method name (see `composir methods`)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=seed_int, default=0)


def check_writable(path: str | Path, what: str) -> None:
    """One line, before any work, when ``path`` (or the folder it would be created in) cannot be written."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():  # ".../notes.txt/out": it could never be created
        raise ComposirError(f"{what} {path}: {existing} is a file, not a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ComposirError(f"{what} {path}: {folder} is not writable")
