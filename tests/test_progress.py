"""Progress bars in a log file: whole lines, no carriage returns, no transient inner bars."""

from __future__ import annotations

import io
import subprocess
import sys
import time

from composir.utils.progress import progress_bar


def test_a_bar_off_a_terminal_writes_lines():
    log = io.StringIO()
    for _ in progress_bar(range(5), desc="work", file=log, mininterval=0, miniters=1):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("work:") for line in lines)
    assert "5/5" in lines[-1]


def test_transient_bars_are_not_written_to_a_log():
    log = io.StringIO()
    for _ in progress_bar(range(5), desc="inner", file=log, leave=False, mininterval=0):
        pass
    assert log.getvalue() == ""


def test_a_log_gets_few_lines_by_default():
    log = io.StringIO()
    for _ in progress_bar(range(40), desc="steps", file=log, miniters=1):
        time.sleep(0.02)  # 0.8 s: a terminal's bar (0.1 s between redraws) would redraw about 8 times
    assert 1 <= len(log.getvalue().splitlines()) <= 3  # start and end (30 s between updates)


def test_a_command_writing_to_a_file_has_no_carriage_returns(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "composir.cli", "synth", "--out", str(tmp_path / "s"), "--size", "40", "--workers", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "synth families" in run.stderr and "\r" not in run.stderr
