"""Sample queries of a benchmark split, as ids of a served index: the web page's result grid.

``composir serve --benchmark B --root R --split S`` gives the page a "sample queries" view: for
each sampled query its reference, its text, the top results with the ground truth marked and the
method's explanation -- ``composir eval --grid`` in the browser, over the live index.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from composir.data.media import media_type_of
from composir.data.records import Benchmark


def index_key(path: Path, media_root: Path | None, is_indexed) -> str | None:
    """The served index's key of a benchmark file: its path relative to the indexed media folder,
    or else its file name (a folder of copies); None when the index does not hold it."""
    candidates = []
    if media_root is not None:
        real, root = os.path.realpath(path), os.path.realpath(media_root)
        if Path(real).is_relative_to(root):
            candidates.append(Path(real).relative_to(root).as_posix())
    candidates.append(Path(path).name)
    return next((key for key in candidates if is_indexed(key)), None)


def sample_examples(
    bench: Benchmark, media_root: Path | None, is_indexed, n: int = 8, seed: int = 0
) -> list[dict[str, Any]]:
    """Up to ``n`` queries whose reference and a target are in the index, taken in turn from each
    modification family (seeded), as ``{query_id, reference, media_type, text, targets, family}`` with index keys."""
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for q in bench.queries:
        if not q.target_ids:
            continue
        ref = index_key(bench.media_item(q.reference_id).path, media_root, is_indexed)
        targets = [index_key(bench.media_item(t).path, media_root, is_indexed) for t in q.target_ids]
        targets = [t for t in targets if t is not None]
        if ref is None or not targets:
            continue
        family = str(q.extra.get("family", "")) or "all"
        by_family[family].append(
            {
                "query_id": q.query_id,
                "reference": ref,
                "media_type": media_type_of(ref) or "image",
                "text": q.text,
                "targets": targets,
                "family": family,
            }
        )
    rng = np.random.default_rng(seed)
    pools = {f: [items[i] for i in rng.permutation(len(items))] for f, items in sorted(by_family.items())}
    picked: list[dict[str, Any]] = []
    while len(picked) < n and any(pools.values()):
        for items in pools.values():
            if items and len(picked) < n:
                picked.append(items.pop())
    return picked
