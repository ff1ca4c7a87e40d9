"""`composir eval` end to end on the synthetic benchmark, and the JSON it writes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

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
            "--random-weights",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "synthetic" and data["split"] == "val" and data["random_weights"] is True
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
    rc = main(["eval", "--benchmark", "synthetic", "--root", str(synth_root), "--method", "nope", "--random-weights"])
    assert rc == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


METHODS = ["image_only", "text_only", "sum", "combiner", "tirg", "qformer_fusion", "imagine"]


@pytest.mark.parametrize("name", METHODS)
def test_queries_over_distinct_references_equal_one_by_one(name):
    """``encode_queries`` (each reference encoded once) gives what ``encode_query`` gives per query."""
    torch.manual_seed(0)
    method = build_method(name, build_encoder("tiny", config={"num_query_tokens": 4})).eval()
    frames = torch.randn(3, 2, 3, 64, 64)
    reference_index = torch.tensor([2, 0, 0, 1, 2, 2])
    tokens = method.encoder.tokenize([f"make it {c}" for c in ("red", "blue", "night", "big", "small", "green")])
    with torch.no_grad():
        together = method.encode_queries(frames, tokens, reference_index)
        one_by_one = torch.cat(
            [method.encode_query(frames[r : r + 1], tokens[i : i + 1]) for i, r in enumerate(reference_index.tolist())]
        )
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-5)


def test_evaluation_decodes_each_reference_once(synth_root, monkeypatch):
    import composir.data.media_dataset as ev

    bench = load_benchmark("synthetic", synth_root, "val")
    reads: list[str] = []
    real = ev.load_media
    monkeypatch.setattr(ev, "load_media", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    torch.manual_seed(0)
    method = build_method("qformer_fusion", build_encoder("tiny", config={"num_query_tokens": 4}))
    result = evaluate(method, bench, batch_size=7, progress=False)
    references = {q.reference_id for q in bench.queries}
    assert len(references) < len(bench.queries)  # the synthetic families share references
    assert len(reads) == len(bench.gallery) + len(references)
    # The same rankings as encoding every query on its own.
    method.eval()
    with torch.no_grad():
        gallery = torch.cat([method.encode_target(_frames(method, g)) for g in bench.gallery])
        for q, ranking in list(zip(bench.queries, result.ranked_ids))[:20]:
            tokens = method.encoder.tokenize([q.text])
            sims = method.encode_query(_frames(method, bench.media_item(q.reference_id)), tokens) @ gallery.T
            sims[0, [g.id for g in bench.gallery].index(q.reference_id)] = -2  # the reference is excluded
            assert ranking[0] == bench.gallery[int(sims.argmax())].id


def _frames(method, item):
    from composir.data.media import load_media

    return torch.stack([method.encoder.preprocess(f) for f in load_media(item.path, 1, item.media_type)])[None]


def test_eval_without_weights_refuses_before_reading_anything(tmp_path, capsys):
    rc = main(["eval", "--benchmark", "cirr", "--root", str(tmp_path / "nowhere"), "--method", "sum"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: no trained or pretrained weights") and "--random-weights" in err


def test_bad_data_is_named_before_a_model_is_built(tmp_path, capsys, monkeypatch):
    import composir.runs.factory as factory

    built = []
    monkeypatch.setattr(factory, "build_encoder", lambda *a, **k: built.append(1))
    rc = main(
        ["eval", "--benchmark", "cirr", "--root", str(tmp_path / "nowhere"), "--method", "sum", "--random-weights"]
    )
    assert rc == 2 and "annotation file not found" in capsys.readouterr().err and built == []
