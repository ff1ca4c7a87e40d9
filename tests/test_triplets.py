"""`composir make-triplets`: one-phrase edits toward neighbours, matched targets, the CIRR layout."""

from __future__ import annotations

import json
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
    assert code == 2 and err.startswith("error: ") and "fewer than 2 readable images with a usable caption" in err


@pytest.mark.parametrize("match", ["model"])
def test_model_matching_needs_a_run(tmp_path, match, capsys):
    code = main(["make-triplets", "--images", str(tmp_path), "--captions", str(tmp_path / "c.jsonl"),
                 "--out", str(tmp_path / "o"), "--match", match])  # fmt: skip
    assert code == 2 and "--match must be captions, or model with --run" in capsys.readouterr().err


def _captioned_folder(tmp_path, captions: dict[str, str]):
    from PIL import Image

    img = tmp_path / "img"
    img.mkdir(exist_ok=True)
    for i, key in enumerate(captions):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(img / f"{key}.png")
    lines = [json.dumps({"id": k, "stages": {"final": v}}, ensure_ascii=False) for k, v in captions.items()]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    return img


def test_bad_captions_and_images_are_skipped_and_listed_not_fatal(tmp_path, capsys):
    good = {f"g{i}": f"a {c} circle on a {b} background" for i, (c, b) in
            enumerate([("red", "blue"), ("blue", "red"), ("green", "blue"), ("red", "green")])}  # fmt: skip
    bad = {"empty": "", "punct": "!!! ...", "huge": "a cat " * 300_000}
    img = _captioned_folder(tmp_path, {**good, **bad})
    (img / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write(json.dumps({"id": "broken", "stages": {"final": "a red square"}}) + "\n")
    out = tmp_path / "o"
    code = main(["make-triplets", "--images", str(img), "--captions", str(tmp_path / "c.jsonl"), "--out", str(out),
                 "--quiet"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "4 skipped" in printed.out and "data.benchmark=cirr" in printed.out
    skipped = {s["id"]: s["error"] for s in json.loads((out / "skipped.json").read_text())}
    assert set(skipped) == {"empty", "punct", "huge", "broken"}
    assert "unreadable image" in skipped["broken"] and "noun phrase" in skipped["punct"]
    used = json.loads((out / "image_splits" / "split.rc2.train.json").read_text())
    assert set(used) <= set(good)


@pytest.mark.parametrize("which", ["images-missing", "images-a-file", "out-a-file", "latin1"])
def test_bad_paths_and_files_are_one_error_line(tmp_path, capsys, which):
    img = _captioned_folder(tmp_path, {"a": "a red circle", "b": "a blue square"})
    images, out, captions = img, tmp_path / "o", tmp_path / "c.jsonl"
    if which == "images-missing":
        images = tmp_path / "nowhere"
    elif which == "images-a-file":
        images = captions
    elif which == "out-a-file":
        out.write_text("x")
    else:
        captions.write_bytes('{"id": "a", "stages": {"final": "a caf\u00e9"}}\n'.encode("latin-1"))
    code = main(["make-triplets", "--images", str(images), "--captions", str(captions), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err
