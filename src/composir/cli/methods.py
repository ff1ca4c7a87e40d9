"""``composir methods``: what is registered."""

from __future__ import annotations

import argparse

NAME = "methods"
HELP = "list registered methods and encoders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from composir.encoders import available_encoders
    from composir.methods import available_methods

    print("methods: ", ", ".join(available_methods()))
    print("encoders:", ", ".join(available_encoders()))
    return 0
