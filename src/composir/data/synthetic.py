"""Reader of the synthetic benchmark written by ``composir synth`` (CIRR layout + extra fields).

Split names: ``train``, ``val``, ``test``, or ``<split>-<family>`` (``val-explicit``,
``val-multi``, ``val-implicit``) to keep only one modification family's queries; the gallery is
always the whole split's gallery, hard negatives included.
"""

from __future__ import annotations

from pathlib import Path

from composir.data.cirr import load_cirr_layout
from composir.data.records import PROTOCOLS, Benchmark
from composir.errors import ConfigError

FAMILIES = ("explicit", "multi", "implicit")


def load_synthetic(root: str | Path, split: str) -> Benchmark:
    base, _, family = split.partition("-")
    if family and family not in FAMILIES:
        raise ConfigError(f"unknown synthetic family {family!r} in split {split!r}; expected one of {FAMILIES}")
    bench = load_cirr_layout(Path(root), base, name="synthetic")
    # The synthetic test split has targets (it is ours, not a test server's).
    bench.has_targets = True
    bench.protocol = PROTOCOLS["synthetic"]
    for q in bench.queries:  # the one caption a method that reads one takes (CoVR-2's txt2)
        q.extra.setdefault("target_caption", (q.extra.get("target_captions") or {}).get("global", ""))
    if family:
        bench.queries = [q for q in bench.queries if q.extra.get("family") == family]
        bench.split = split
    return bench
