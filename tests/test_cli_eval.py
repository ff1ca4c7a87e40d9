"""`composir eval` end to end on the synthetic benchmark, and the JSON it writes."""

from __future__ import annotations

import json
import shutil

from composir.cli import main
from composir.data import load_benchmark
from composir.encoders import build_encoder
from composir.eval.evaluate import evaluate
from composir.methods import build_method


def test_eval_json_schema(synth_root, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = main(
        [
            "eval",
            "--benchmark",
            "synthetic",
            "--root",
            str(synth_root),
            "--split",
            "val",
            "--method",
            "sum",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "synthetic" and data["split"] == "val"
    assert data["n_queries"] == len(load_benchmark("synthetic", synth_root, "val").queries)
    assert {"R@1", "R@5", "R@10", "R@50", "Rsubset@1"} <= set(data["metrics"])
    assert all(isinstance(v, float) for v in data["metrics"].values())
    assert set(data["per_family"]) == {"explicit", "multi", "implicit"}
    assert "R@1" in capsys.readouterr().out


def test_reference_never_ranked_and_bad_media_skipped(synth_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    bench = load_benchmark("synthetic", root, "val")
    # Corrupt one gallery image that is not any query's reference: it is skipped and reported.
    refs = {q.reference_id for q in bench.queries}
    victim = next(g for g in bench.gallery if g.id not in refs)
    victim.path.write_bytes(b"not a png")
    method = build_method("image_only", build_encoder("tiny"))
    result = evaluate(method, bench)
    assert [i for i, _ in result.failures] == [victim.id]
    for q, ranking in zip(bench.queries, result.ranked_ids):
        assert q.reference_id not in ranking
        assert victim.id not in ranking
        assert len(ranking) == 50
    # image_only with the reference excluded ranks a family sibling first far more often than chance.
    siblings = sum(r[0] in q.subset_ids for q, r in zip(bench.queries, result.ranked_ids))
    assert siblings / len(bench.queries) > 0.3


def test_unknown_method_is_a_clear_error(synth_root, capsys):
    rc = main(["eval", "--benchmark", "synthetic", "--root", str(synth_root), "--method", "nope"])
    assert rc == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
