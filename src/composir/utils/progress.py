"""Progress bars (tqdm) that stay readable where stderr is a log file rather than a terminal.

tqdm redraws its line in place with carriage returns; a log file keeps every redraw on one
ever-growing line (a training run wrote tens of thousands of them). Off a terminal a bar here
writes a line per update, at most every ``LOG_INTERVAL_S`` seconds, and transient bars (``leave=False``,
the inner loops of a bigger job) are not shown at all.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


class LogLines:
    """A stream that turns tqdm's in-place redraws into whole lines and drops the blanking of a
    finished bar."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, as lines at a slower cadence when its stream is not a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if not _is_terminal(stream):
        if kwargs.get("leave") is False:
            kwargs["disable"] = True
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("ncols", 100)
        stream = LogLines(stream)
    return tqdm(iterable, file=stream, **kwargs)
