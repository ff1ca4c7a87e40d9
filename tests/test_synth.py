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
        assert f'"{q.text}"' not in q.extra["cot"]["reasoning"]  # the request is in the prompt, not quoted again
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


# ------------------------------------------------------------------ the schema benchmark (issue 12)
def _schema_bench(tmp_path, workers=1, seed=5):
    from composir.synth import SynthConfig, generate

    out = tmp_path / f"schemas-{workers}"
    cfg = SynthConfig(
        out=out,
        seed=seed,
        size=60,
        workers=workers,
        schemas=True,
        schema_appearances=3,
        schema_test_queries=24,
        schema_val_queries=6,
    )
    generate(cfg, progress=False)
    return out


def _entries(root, split):
    import json

    return json.loads((root / "captions" / f"cap.rc2.{split}.json").read_text())


def _cues(scene: dict) -> set:
    return {(o["colour"], o["shape"]) for o in scene["objects"]} | {("background", scene["background"])}


def test_schema_benchmark_buckets_cues_and_names(tmp_path):
    from composir.synth.schemas import BUCKETS, make_schemas

    schemas = make_schemas(5)
    assert len({(s.objects, s.background) for s in schemas}) == 24
    assert all(2 <= len(s.objects) + (s.background is not None) <= 4 for s in schemas)
    assert sorted(s.shots for s in schemas) == [0] * 4 + [1] * 5 + [4] * 5 + [16] * 5 + [64] * 5
    root = _schema_bench(tmp_path)
    test = _entries(root, "test")
    counts = {b: sum(e["family"] == b for e in test) for b in BUCKETS}
    assert all(n >= 24 for n in counts.values()), counts
    by_name = {s.name: s for s in schemas}
    for e in test:
        if not e["family"].startswith("schema"):
            continue
        schema = by_name[e["schema"]["name"]]
        wanted = {*schema.objects} | ({("background", schema.background)} if schema.background else set())
        assert wanted <= _cues(e["target_scene"]), e["caption"]  # the target holds every cue
        assert schema.name in e["caption"] and len(e["hard_negatives"]) >= 2
    train = _entries(root, "train")
    implicit_train = [e for e in train if e["family"].startswith("schema-") and e["family"] != "schema-appearance"]
    for s in schemas:  # shots per schema as planned; transfer schemas get none
        assert sum(e["schema"]["name"] == s.name for e in implicit_train) == s.shots
    for e in (e for e in train if e["family"] == "schema-appearance"):
        named = e["schema"]["name"] in e["caption"]
        assert named == (by_name[e["schema"]["name"]].shots == 0), e["caption"]  # only transfer paraphrases name it


def test_schema_references_hold_at_most_one_cue_and_gate_references_another_schema(tmp_path):
    from composir.synth.schemas import make_schemas

    root = _schema_bench(tmp_path)
    schemas = make_schemas(5)
    by_name = {s.name: s for s in schemas}

    def cues_of(schema):
        return {*schema.objects} | ({("background", schema.background)} if schema.background else set())

    gates = 0
    for e in _entries(root, "test"):
        if not e["family"].startswith("schema"):
            continue
        asked, held = by_name[e["schema"]["name"]], _cues(e["reference_scene"])
        if e["family"] == "schema-gate":
            gates += 1
            others = [s for s in schemas if s.name != asked.name and cues_of(s) <= held]
            assert others, e["caption"]  # the reference is another schema's complete scene
        else:
            assert len(cues_of(asked) & held) <= 1, e["caption"]  # new references with 0-1 cues
    assert gates >= 24


def test_schema_benchmark_is_the_same_for_a_seed_whatever_the_workers(tmp_path):
    one, two = _schema_bench(tmp_path, workers=1), _schema_bench(tmp_path, workers=2)
    for split in ("train", "val", "test"):
        assert _entries(one, split) == _entries(two, split)


def test_only_the_layout_caption_says_where_objects_are():
    """The same objects in other cells: the global and attribute captions are word for word the
    same (their object order is not the grid's), the layout caption is not."""
    from composir.synth.scenes import Scene, SceneObject, caption_levels

    objects = [SceneObject("circle", "red", "small", 0), SceneObject("square", "blue", "big", 4),
               SceneObject("triangle", "green", "small", 8)]  # fmt: skip
    moved = [SceneObject(o.shape, o.colour, o.size, cell) for o, cell in zip(objects, (8, 0, 4))]
    by_cell = Scene("white", tuple(sorted(objects, key=lambda o: o.cell)))
    reordered = Scene("white", tuple(sorted(moved, key=lambda o: o.cell)))
    a, b = caption_levels(by_cell, False), caption_levels(reordered, False)
    assert a["global"] == b["global"] and a["attributes"] == b["attributes"]
    assert a["layout"] != b["layout"]
    assert a["global"] == "a red circle, a blue square and a green triangle on a white background"
