"""Before training or evaluation: are the media files a benchmark names all there?

A benchmark's annotations name every image or video its queries and gallery use; when some are
missing (a partial download, the wrong ``--root``), failing or silently skipping deep inside a run
wastes the run. ``require_media`` counts them up front and stops with one line — how many of how
many, a few examples, where it looked — unless the caller allows missing files, which are then
skipped and listed as before.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from composir.data.records import Benchmark
from composir.errors import ComposirError
from composir.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class MediaCount:
    needed: int
    missing: list[str]  # paths (or ids without a path), sorted

    def examples(self, n: int = 3) -> str:
        shown = ", ".join(self.missing[:n])
        return shown + (f", … ({len(self.missing) - n:,} more)" if len(self.missing) > n else "")


def count_missing(bench: Benchmark, progress: bool = False) -> MediaCount:
    """Every distinct file the split's gallery and queries refer to, and those not on disk."""
    items = {item.id: item for item in bench.gallery} | dict(bench.media)
    paths = {str(item.path) if item.path else f"{item_id} (no path)" for item_id, item in items.items()}
    quiet = not progress or len(paths) < 100_000  # stat is fast: a bar only where it takes a while
    missing = [p for p in progress_bar(sorted(paths), desc="checking media", unit="file", disable=quiet)
               if p.endswith(" (no path)") or not os.path.exists(p)]  # fmt: skip
    return MediaCount(len(paths), missing)


def require_media(bench: Benchmark, allow_missing: bool, how_to_allow: str, progress: bool = False) -> MediaCount:
    """Stop before any work when media are missing, unless ``allow_missing`` (then warn once)."""
    count = count_missing(bench, progress)
    if not count.missing:
        return count
    what = (
        f"{bench.name}/{bench.split}: {len(count.missing):,} of {count.needed:,} media files are missing under "
        f"{bench.root} (e.g. {count.examples()})"
    )
    if not allow_missing:
        raise ComposirError(f"{what}; put them there, or {how_to_allow} to skip and list them")
    log.warning("%s; skipping them (they are listed with the results)", what)
    return count
