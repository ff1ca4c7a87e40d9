"""Every numeric option of every subcommand declares its range and refuses what is outside it in
one line, before any work; worker counts are capped and workers die with their parent."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from composir.cli import build_parser, main
from composir.utils.workers import capped_workers, usable_cpus


def _numeric_options():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sorted(sub.choices.items()):
        for action in parser._actions:
            if action.type is not None and action.type is not str and action.option_strings:
                yield pytest.param(command, action, id=f"{command}{action.option_strings[-1]}")


NUMERIC = list(_numeric_options())


def test_the_walk_finds_the_numeric_options():
    assert len(NUMERIC) >= 30  # every subcommand's, not an empty parametrisation


@pytest.mark.parametrize(("command", "action"), NUMERIC)
def test_every_numeric_option_declares_its_range_and_refuses_what_is_outside(command, action):
    parse = action.type
    assert parse not in (int, float), f"{command} {action.option_strings[-1]}: a bare {parse.__name__}, no range"
    low = getattr(parse, "low", None)
    assert low is not None, f"{command} {action.option_strings[-1]}: its type declares no lower bound"
    for bad in ("a-non-number", str(low - 1), "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    for edge in ("0", "-1"):  # each is accepted exactly when the declared range holds it
        try:
            value = parse(edge)
        except argparse.ArgumentTypeError:
            continue
        assert value >= low


@pytest.mark.parametrize(
    "argv",
    [["synth", "--size", "-5"], ["synth", "--size", "0"], ["synth", "--image-size", "0"], ["synth", "--frames", "0"],
     ["demo", "--steps", "0"], ["serve", "--port", "0"], ["cache", "--workers", "-1"]],
)  # fmt: skip
def test_out_of_range_arguments_are_one_error_line_and_nothing_written(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    required = {
        "synth": ["--out", "o"],
        "demo": ["--out", "o"],
        "serve": ["--index", "i"],
        "cache": ["--run", "r", "--out", "o"],
    }
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *required[argv[0]]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("composir ") and f"argument {argv[1]}" in err[-1] and "Traceback" not in "\n".join(err)
    assert list(tmp_path.iterdir()) == []


def test_worker_counts_are_capped_to_the_cpus_with_one_line(caplog):
    with caplog.at_level(logging.WARNING):
        assert capped_workers(100_000, "train.num_workers") == usable_cpus()
    assert "train.num_workers: 100000 asked, lowered to" in caplog.text
    assert capped_workers(0) == 0 and capped_workers(1) == 1


CHILD = """
import multiprocessing as mp, sys, time
from composir.utils.workers import die_with_parent

def child():
    die_with_parent()
    time.sleep(60)

if __name__ == "__main__":
    p = mp.get_context("fork").Process(target=child)
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its parent has not reaped it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(CHILD)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _writing_commands():
    import importlib

    from composir.cli import COMMANDS

    for name in COMMANDS:
        module = importlib.import_module(f"composir.cli.{name}")
        for output in getattr(module, "OUTPUTS", ()):
            yield pytest.param(module.NAME, output, id=f"{module.NAME}--{output}")


def _minimal_argv(command: str) -> list[str]:
    """Placeholder values for a subcommand's required options (the output check runs before any)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    argv = [command]
    for group in parser._mutually_exclusive_groups:
        if group.required:
            action = group._group_actions[0]
            argv += [action.option_strings[0], action.choices[0] if action.choices else "x"]
    for action in parser._actions:
        if action.required and action.option_strings:
            argv += [action.option_strings[0], action.choices[0] if action.choices else "x"]
        elif not action.option_strings and action.dest != "help":  # positionals: one value each
            argv.append(action.choices[0] if action.choices else "x")
    return argv


@pytest.mark.parametrize(("command", "output"), list(_writing_commands()))
def test_every_command_that_writes_names_an_impossible_output_before_any_work(command, output, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    argv = [*_minimal_argv(command), f"--{output.replace('_', '-')}", str(blocker / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --{output}") and "is a file, not a folder" in err and "\n" not in err
