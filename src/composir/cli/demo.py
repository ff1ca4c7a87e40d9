"""``composir demo``: synthetic benchmark -> train -> evaluate, end to end."""

from __future__ import annotations

import argparse

from composir.cli.args import positive_int, seed_int

NAME = "demo"
HELP = "synthetic benchmark -> train -> evaluate, end to end"
OUTPUTS = ("out",)  # what it writes: checked writable before any work


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out")
    p.add_argument("--size", type=positive_int, default=20_000, help="synthetic triplets over all splits")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the demo config's)")
    p.add_argument("--seed", type=seed_int, default=0)


def run(args: argparse.Namespace) -> int:
    from composir.demo import run_demo

    return run_demo(args)
