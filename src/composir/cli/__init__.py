"""``composir`` command line: one module per subcommand, each owning its arguments (``NAME``,
``HELP``, ``add_arguments``) and its handler (``run``); ``main`` assembles them."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from composir.errors import ComposirError, WorkInterrupted

# In the order ``composir --help`` lists them.
COMMANDS = (
    "synth", "train", "cache", "eval", "index", "search", "serve",
    "caption", "annotate_cot", "make_triplets", "convert", "demo", "methods",
)  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("composir")
    except PackageNotFoundError:
        return "unknown"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command``, only that subcommand's options are set up (the
    others keep their name and help): a command does not import what the others' options list."""
    parser = argparse.ArgumentParser(
        prog="composir",
        description="Composed image and video retrieval: benchmarks, methods, training, evaluation, indexing, search.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each step does")
    parser.add_argument("--version", action="version", version=f"composir {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"composir.cli.{name}")
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        if command in (None, module.NAME):
            module.add_arguments(p)
        p.set_defaults(func=module.run, outputs=getattr(module, "OUTPUTS", ()))
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), if it names one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    names = {c.replace("_", "-") for c in COMMANDS}
    return first if first in names else None


def _stop_on_sigterm() -> None:
    """SIGTERM stops a command the way Ctrl-C does (what was done is kept, leftovers cleaned)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    _stop_on_sigterm()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if getattr(args, "device", None) not in (None, "cpu", "auto"):  # cpu needs no check: torch not imported yet
            from composir.runs.config import check_device

            check_device(args.device, "--device")
        from composir.cli.args import check_writable

        for name in args.outputs:
            if getattr(args, name, None):
                check_writable(getattr(args, name), "--" + name.replace("_", "-"))
        return args.func(args)
    except ComposirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, WorkInterrupted) else 2
    except BrokenPipeError:  # `composir methods | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no flush error from the interpreter at exit)
        return 0
    except KeyboardInterrupt:
        print(f"interrupted: composir {args.command} stopped before it finished", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "main"]
