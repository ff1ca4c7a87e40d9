"""Test-server submission files for CIRR and CIRCO, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from composir.utils.io import atomic_write_json


def write_cirr_submission(
    out_dir: str | Path,
    pair_ids: Sequence[str],
    ranked_ids: Sequence[Sequence[str]],
    subset_ranked_ids: Sequence[Sequence[str]],
    reference_ids: Sequence[str],
    name: str = "composir",
) -> tuple[Path, Path]:
    """Two files as the CIRR server takes them: top 50 (``recall``) and top 3 of the subset (``recall_subset``).

    The reference is never listed (it is excluded from its own ranking by the protocol).
    """
    out_dir = Path(out_dir)
    recall: dict[str, object] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, object] = {"version": "rc2", "metric": "recall_subset"}
    for pid, ranking, sub, ref in zip(pair_ids, ranked_ids, subset_ranked_ids, reference_ids, strict=True):
        top = [i for i in ranking if i != ref][:50]
        if len(top) < 50:
            raise ValueError(f"pairid {pid}: only {len(top)} ranked images, the server needs 50")
        recall[str(pid)] = top
        sub3 = [i for i in sub if i != ref][:3]
        if len(sub3) < 3:
            raise ValueError(f"pairid {pid}: only {len(sub3)} subset images, the server needs 3")
        subset[str(pid)] = sub3
    recall_path = out_dir / f"recall_submission_{name}.json"
    subset_path = out_dir / f"recall_subset_submission_{name}.json"
    atomic_write_json(recall_path, recall)
    atomic_write_json(subset_path, subset)
    return recall_path, subset_path


def write_circo_submission(
    path: str | Path, query_ids: Sequence[str], ranked_ids: Sequence[Sequence[str]], top: int = 50
) -> Path:
    """``{"<query id>": [50 image ids as ints], ...}`` as in CIRCO's submission example."""
    data: dict[str, list[int]] = {}
    for qid, ranking in zip(query_ids, ranked_ids, strict=True):
        if len(ranking) < top:
            raise ValueError(f"query {qid}: only {len(ranking)} ranked images, the server needs {top}")
        data[str(qid)] = [int(i) for i in ranking[:top]]
    atomic_write_json(path, data)
    return Path(path)
