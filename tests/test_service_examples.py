"""The page's sample queries: benchmark queries mapped to the served index's keys, with their
ground truth, taken in turn from each family; /examples behind the token; serve's bad input."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from composir.cli import main
from composir.data import load_benchmark
from composir.service import ServiceSettings, create_app
from composir.service.examples import sample_examples


def _examples(searcher, synth_root, n=6, seed=0):
    bench = load_benchmark("synthetic", synth_root, "val")
    index = searcher.index
    return bench, sample_examples(bench, searcher.media_root, lambda key: index.key_to_id(key) is not None, n, seed)


def test_examples_are_indexed_queries_with_their_targets(searcher, synth_root):
    bench, examples = _examples(searcher, synth_root)
    by_id = {q.query_id: q for q in bench.queries}
    assert examples
    for ex in examples:
        q = by_id[ex["query_id"]]
        # The index holds copies named like the benchmark's files: keys are those names.
        assert ex["reference"] == f"{q.reference_id}.png" and ex["text"] == q.text
        assert ex["targets"] == [f"{t}.png" for t in q.target_ids]
        assert searcher.index.key_to_id(ex["reference"]) is not None
        assert ex["family"] == q.extra["family"] and ex["media_type"] == "image"
    # Only 24 images are indexed: queries whose reference or target is missing are not offered.
    indexed = {ex["reference"] for ex in examples} | {t for ex in examples for t in ex["targets"]}
    assert all(searcher.index.key_to_id(k) is not None for k in indexed)


def test_examples_alternate_families_and_are_seeded(synth_root):
    bench = load_benchmark("synthetic", synth_root, "val")

    def pick(n, seed=0, indexed=lambda key: True):  # the whole split indexed from its own folder
        return sample_examples(bench, synth_root / "val", indexed, n, seed)

    families = [ex["family"] for ex in pick(6)]
    present = sorted({q.extra["family"] for q in bench.queries})
    assert len(present) == 3
    # In turn: each run of len(present) examples has one from each family.
    assert sorted(families[:3]) == present and sorted(families[3:]) == present, families
    assert pick(6) == pick(6)
    everything, reseeded = pick(1000), pick(1000, seed=1)
    assert len(everything) == len(bench.queries)
    assert sorted(e["query_id"] for e in everything) == sorted(e["query_id"] for e in reseeded)
    assert [e["query_id"] for e in everything] != [e["query_id"] for e in reseeded]
    # Keys are paths relative to the media folder; a query whose target is not indexed is left out.
    q = bench.queries[0]
    without = pick(1000, indexed=lambda key: key != f"{q.target_ids[0]}.png")
    assert q.query_id not in [e["query_id"] for e in without] and len(without) < len(everything)


def test_examples_endpoint_and_token(searcher, synth_root):
    _, examples = _examples(searcher, synth_root)
    assert TestClient(create_app(searcher)).get("/examples").json() == {"examples": []}
    client = TestClient(create_app(searcher, ServiceSettings(token="s3cret"), examples))
    assert client.get("/examples").status_code == 401
    got = client.get("/examples", headers={"Authorization": "Bearer s3cret"})
    assert got.status_code == 200 and got.json() == {"examples": examples}


def test_serve_benchmark_errors_are_one_line(searcher, synth_root, capsys):
    index = str(searcher.index.root)
    assert main(["serve", "--index", index, "--benchmark", "synthetic"]) == 2
    assert "--benchmark needs --root" in capsys.readouterr().err
    # The index holds val images only: the test split's queries cannot be shown, said before serving.
    code = main(["serve", "--index", index, "--benchmark", "synthetic", "--root", str(synth_root), "--split", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "no query has its reference and a target in the index" in err, err


@pytest.mark.parametrize("n", [1, 3])
def test_examples_count(searcher, synth_root, n):
    assert len(_examples(searcher, synth_root, n=n)[1]) == n
