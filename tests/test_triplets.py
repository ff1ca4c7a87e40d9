"""`composir make-triplets`: one-phrase edits toward neighbours, matched targets, the CIRR layout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from composir.annotate.triplets import PhraseIndex, neighbour_edits, phrase_key
from composir.cli import main
from composir.data import load_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_neighbour_edits_turn_the_reference_into_each_neighbour():
    caption = "a red circle and a blue square on a pink background"
    spans = [(0, 12), (17, 30), (34, 51)]
    assert [phrase_key(caption[a:b]) for a, b in spans] == ["red circle", "blue square", "pink background"]
    mine = frozenset(["red circle", "blue square", "pink background"])
    neighbours = [
        (mine - {"red circle"}) | {"green circle"},  # swap
        mine | {"small cross"},  # add
        mine - {"blue square"},  # remove
        frozenset(["x", "y"]),  # two or more changes: no one-phrase edit
    ]
    edits = neighbour_edits(caption, spans, neighbours)
    texts = ["replace a red circle with a green circle", "add a small cross", "remove a blue square"]
    assert [e.text for e in edits] == texts
    assert [e.phrases for e in edits] == neighbours[:3]
    assert edits[0].caption == "a green circle and a blue square on a pink background"


def test_phrase_index_jaccard():
    sets = [frozenset(["a", "b"]), frozenset(["a"]), frozenset(["c"])]
    np.testing.assert_allclose(PhraseIndex(sets).jaccard(frozenset(["a", "b"])), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(PhraseIndex(sets).jaccard(frozenset(["a", "z"])), [1 / 3, 0.5, 0.0])


def test_make_triplets_on_the_synthetic_benchmark(synth_root, tmp_path, capsys):
    from context_cir import cmd_triplets

    out = tmp_path / "gen"
    args = ["make-triplets", "--images", str(synth_root / "train"), "--captions"]
    args += [str(synth_root / "captions" / "mcot.jsonl"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "triplets kept" in capsys.readouterr().out
    bench = load_benchmark("cirr", out, "train")  # every reader works on it unchanged
    assert len(bench.queries) > 50
    for q in bench.queries:
        assert q.target_ids[0] != q.reference_id and q.subset_ids[:2] == [q.reference_id, q.target_ids[0]]
        assert bench.media_item(q.target_ids[0]).path.is_file()
    # Against the generator's scenes most pairs differ by exactly the text's edit (random pairs: ~0).
    cmd_triplets(type("A", (), {"data": str(synth_root), "generated": str(out)})())
    line = capsys.readouterr().out.splitlines()[0]
    assert float(line.rsplit("precision ", 1)[1]) > 50.0, line


def test_make_triplets_needs_captioned_images(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "c.jsonl").write_text('{"id": "a", "stages": {"final": "a red circle"}}\n')
    code = main(["make-triplets", "--images", str(tmp_path / "img"), "--captions", str(tmp_path / "c.jsonl"),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "fewer than 2 images with a caption" in err


@pytest.mark.parametrize("match", ["model"])
def test_model_matching_needs_a_run(tmp_path, match, capsys):
    code = main(["make-triplets", "--images", str(tmp_path), "--captions", str(tmp_path / "c.jsonl"),
                 "--out", str(tmp_path / "o"), "--match", match])  # fmt: skip
    assert code == 2 and "--match must be captions, or model with --run" in capsys.readouterr().err
