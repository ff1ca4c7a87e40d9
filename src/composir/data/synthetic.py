"""Reader of the synthetic benchmark written by ``composir synth`` (CIRR layout + extra fields).

Split names: ``train``, ``val``, ``test``, or ``<split>-<family>`` (``val-explicit``,
``val-multi``, ``val-implicit``) to keep only one modification family's queries; the gallery is
always the whole split's gallery, hard negatives included.
"""

from __future__ import annotations

from pathlib import Path

from composir.data.captions import attach_captions, read_captions
from composir.data.cirr import load_cirr_layout
from composir.data.records import PROTOCOLS, Benchmark
from composir.data.registry import BenchmarkSpec, register_benchmark
from composir.errors import ConfigError

FAMILIES = ("explicit", "multi", "implicit")
# The generator's caption levels as a caption cache (data/captions.py), under captions/: the
# stand-in for the MCoT captions a multimodal LLM would write (`composir caption`).
MCOT_FILE = "mcot.jsonl"


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
    mcot = Path(root) / "captions" / MCOT_FILE
    if mcot.is_file():  # written by `composir synth` since the captions were added
        attach_captions(bench, read_captions(mcot))
    if family:
        bench.queries = [q for q in bench.queries if q.extra.get("family") == family]
        bench.split = split
    return bench


register_benchmark(
    BenchmarkSpec(
        "synthetic", PROTOCOLS["synthetic"], load_synthetic, "the controlled synthetic benchmark (composir synth)"
    )
)
