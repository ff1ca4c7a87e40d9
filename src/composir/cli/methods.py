"""``composir methods``: what is registered, and what each method needs."""

from __future__ import annotations

import argparse
import sys

NAME = "methods"
HELP = "list registered methods (what each needs), encoders and benchmarks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from composir.data import BENCHMARKS
    from composir.encoders import available_encoders, encoder_help
    from composir.methods import available_methods
    from composir.methods.registry import method_class

    print("methods:")
    for name in available_methods():
        cls = method_class(name)
        training = "no training (zero-shot with pretrained weights)" if cls.training_free else "trained"
        print(f"  {name:15s} {training}; needs {cls.backbone_text}. {_summary(cls)}")
    print("encoders:")
    for name in available_encoders():
        print(f"  {name:15s} {encoder_help(name)}")
    print("benchmarks:")
    for name, spec in sorted(BENCHMARKS.items()):
        print(f"  {name:16s} {spec.help}")
    return 0


def _summary(cls) -> str:
    """The method's one-sentence description: its class docstring, else its module's."""
    own = cls.__doc__ if cls.__doc__ and cls.__doc__ != cls.__mro__[1].__doc__ else None
    paragraph = " ".join((own or sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0].split())
    sentence = paragraph.split(": ", 1)[-1].split(". ")[0].split("; ")[0].rstrip(".")
    return sentence[:1].upper() + sentence[1:] + "."
