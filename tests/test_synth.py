"""The synthetic benchmark: layout, families, hard negatives, determinism."""

from __future__ import annotations

import hashlib
import json

from composir.data import load_benchmark
from composir.synth import SynthConfig, generate
from composir.synth.concepts import CONCEPTS
from composir.synth.scenes import Edit, EditConflict, Scene, SceneObject


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "synthetic.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed_and_worker_count(tmp_path):
    a = generate(SynthConfig(out=tmp_path / "a", seed=7, size=120, workers=1), progress=False)
    b = generate(SynthConfig(out=tmp_path / "b", seed=7, size=120, workers=2), progress=False)
    generate(SynthConfig(out=tmp_path / "c", seed=8, size=120, workers=1), progress=False)
    assert a["val"] == b["val"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_layout_families_and_hard_negatives(synth_root):
    bench = load_benchmark("synthetic", synth_root, "val")
    assert bench.has_targets and bench.exclude_reference
    gallery = {g.id for g in bench.gallery}
    families = {q.extra["family"] for q in bench.queries}
    assert families == {"explicit", "multi", "implicit"}
    for q in bench.queries:
        assert q.reference_id in gallery and q.target_ids[0] in gallery
        assert len(q.subset_ids) == 6 and q.reference_id in q.subset_ids and q.target_ids[0] in q.subset_ids
        assert set(q.extra["hard_negatives"]) <= set(q.subset_ids) - {q.reference_id, q.target_ids[0]}
        assert set(q.extra["target_captions"]) == {"global", "attributes", "layout"}
        assert set(q.extra["cot"]) == {"caption", "reasoning", "conclusion"}
        assert bench.media_item(q.reference_id).path.is_file()
    multi = [q for q in bench.queries if q.extra["family"] == "multi"]
    assert all(q.extra["hard_negatives"] for q in multi)
    assert all(len(q.extra["edits"]) >= 2 for q in multi)
    implicit = [q for q in bench.queries if q.extra["family"] == "implicit"]
    assert all(q.extra["concept"] for q in implicit)
    only = load_benchmark("synthetic", synth_root, "val-explicit")
    assert {q.extra["family"] for q in only.queries} == {"explicit"}
    assert len(only.gallery) == len(bench.gallery)


def test_split_sizes(synth_root):
    summary = json.loads((synth_root / "synthetic.json").read_text())
    assert summary["train"]["triplets"] >= 320 and summary["val"]["triplets"] >= 40
    assert summary["val"]["images"] % 6 == 0


def test_implicit_text_does_not_name_the_edit():
    for concept in CONCEPTS:
        for text in concept.texts:
            assert "background" not in text and "colour" not in text


def test_edit_apply_and_conflicts():
    red = SceneObject("circle", "red", "small", 0)
    blue = SceneObject("square", "blue", "large", 4)
    scene = Scene("gray", (red, blue))
    moved = Edit("move", red.key, 8).apply(scene)
    assert moved.find(red.key).cell == 8
    try:
        Edit("move", red.key, 4).apply(scene)
    except EditConflict:
        pass
    else:
        raise AssertionError("moving onto a taken cell must conflict")
    assert Edit("colour", red.key, "green").describe() == "make the red circle green"


def test_video_variant(tmp_path):
    generate(SynthConfig(out=tmp_path, seed=1, size=30, video=True, num_frames=4, workers=1), progress=False)
    bench = load_benchmark("synthetic", tmp_path, "val")
    item = bench.gallery[0]
    assert item.media_type == "video" and item.path.suffix == ".mp4"
    from composir.data.media import load_video

    assert len(load_video(item.path, 4)) == 4
