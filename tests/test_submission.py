"""Submission files have exactly the published shapes."""

from __future__ import annotations

import json

import pytest

from composir.data.submission import write_circo_submission, write_cirr_submission
from composir.eval import metrics as M


def test_cirr_submission_matches_published_example(realdata, tmp_path):
    example = json.loads((realdata / "cirr/demo_files/test1_pred_ranks_recall_subset.json").read_text())
    from composir.data import load_benchmark

    bench = load_benchmark("cirr", realdata / "cirr", "test1")
    gallery = [g.id for g in bench.gallery]
    pair_ids = [q.query_id for q in bench.queries]
    refs = [q.reference_id for q in bench.queries]
    # A ranking that starts with the reference: the writer must drop it.
    ranked = [[r, *[g for g in gallery if g != r][:60]] for r in refs]
    subset = [list(q.subset_ids) for q in bench.queries]
    recall_path, subset_path = write_cirr_submission(tmp_path, pair_ids, ranked, subset, refs)
    ours = json.loads(subset_path.read_text())
    assert set(ours) == set(example)
    assert ours["version"] == "rc2" and ours["metric"] == "recall_subset"
    assert all(len(ours[p]) == 3 and refs[i] not in ours[p] for i, p in enumerate(pair_ids))
    recall = json.loads(recall_path.read_text())
    assert recall["metric"] == "recall"
    assert all(len(recall[p]) == 50 and refs[i] not in recall[p] for i, p in enumerate(pair_ids))
    # The published example's members are the query's img_set members (reference excluded).
    for q in bench.queries[:200]:
        assert set(example[q.query_id]) <= set(q.subset_ids) - {q.reference_id}


def test_cirr_submission_refuses_short_rankings(tmp_path):
    with pytest.raises(ValueError, match="needs 50"):
        write_cirr_submission(tmp_path, ["1"], [["a", "b"]], [["a", "b", "c"]], ["r"])


def test_circo_submission_and_example_scoring(realdata, tmp_path):
    example = json.loads((realdata / "circo/submission_examples/submission_val.json").read_text())
    from composir.data import load_benchmark

    bench = load_benchmark("circo", realdata / "circo", "val")
    ids = [q.query_id for q in bench.queries]
    ranked = [[str(i) for i in example[qid]] for qid in ids]
    path = write_circo_submission(tmp_path / "sub.json", ids, ranked)
    assert json.loads(path.read_text()) == {qid: example[qid] for qid in ids}
    # Scoring the published example runs on every query and gives a valid percentage.
    m = M.circo_metrics(
        ranked, [q.target_ids for q in bench.queries], [q.extra["target_img_id"] for q in bench.queries]
    )
    assert all(0.0 <= v <= 100.0 for v in m.values())
    q0 = bench.queries[0]
    hits = [i for i, x in enumerate(ranked[0][:50], start=1) if x in q0.target_ids]
    manual = sum((n + 1) / rank for n, rank in enumerate(hits)) / min(50, len(q0.target_ids))
    assert M.average_precision_at_k(ranked[0], q0.target_ids, 50) == pytest.approx(manual)
