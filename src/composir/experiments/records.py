"""The board's record: the small result files of a board's cache, kept gzipped in the repository
(``benchmarks/records/claims``), so that a fresh clone draws the same board (``--render``) and a
later invocation adds seeds or papers to it instead of starting over. The cache itself (data,
checkpoints, caption caches) is not kept; what the board is drawn from is.

Recorded: each run the board draws (its ``hits.json``: per-query hits, probes, sub-tasks,
diagnostics, seconds), the backbone's val scores and each learned captioner's accuracy, under
their paths relative to the cache. Restoring writes a recorded file into the cache only where the
cache has none, so a run finished here is never replaced by a recorded one.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable
from pathlib import Path

from composir.utils.io import atomic_open

SUFFIX = ".gz"


def save_record(root: Path, record: Path, files: Iterable[Path]) -> int:
    """Copy ``files`` (paths under ``root``) into ``record``, gzipped under the same relative paths;
    a file is rewritten only when its content changed (byte-stable: no time stamp in the gzip
    header). Returns how many were written."""
    written = 0
    for path in files:
        target = record / f"{path.relative_to(root).as_posix()}{SUFFIX}"
        data = path.read_bytes()
        if target.is_file() and _read(target) == data:
            continue
        with atomic_open(target, "wb") as handle:
            handle.write(gzip.compress(data, mtime=0))
        written += 1
    return written


def restore_record(record: Path, root: Path) -> int:
    """Write every file of ``record`` that ``root`` lacks into ``root``; returns how many."""
    restored = 0
    for source in sorted(record.rglob(f"*{SUFFIX}")) if record.is_dir() else []:
        target = root / source.relative_to(record).as_posix().removesuffix(SUFFIX)
        if target.exists():
            continue
        data = _read(source)
        with atomic_open(target, "wb") as handle:
            handle.write(data)
        restored += 1
    return restored


def _read(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise SystemExit(f"{path}: not a readable gzip record ({exc})") from None
