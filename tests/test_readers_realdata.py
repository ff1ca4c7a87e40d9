"""The readers on the public annotation files copied into tests/data/realdata (CIRCO: the first 40 entries)."""

from __future__ import annotations

import json

import pytest

from composir.data import load_benchmark


@pytest.mark.parametrize(
    ("split", "n_queries", "n_gallery", "has_targets"),
    [("val", 4181, 2297, True), ("test1", 4148, 2315, False), ("test", 4148, 2315, False)],
)
def test_cirr_counts(realdata, split, n_queries, n_gallery, has_targets):
    bench = load_benchmark("cirr", realdata / "cirr", split)
    assert len(bench.queries) == n_queries
    assert len(bench.gallery) == n_gallery
    assert bench.has_targets is has_targets
    assert bench.exclude_reference
    q = bench.queries[0]
    assert len(q.subset_ids) == 6
    assert q.reference_id in q.subset_ids
    assert all(len(x.target_ids) == (1 if has_targets else 0) for x in bench.queries)
    gallery_ids = {g.id for g in bench.gallery}
    assert all(q.reference_id in gallery_ids for q in bench.queries)


def test_cirr_val_fields(realdata):
    bench = load_benchmark("cirr", realdata / "cirr", "val")
    q = bench.queries[0]
    assert q.query_id == "12060"
    assert q.reference_id == "dev-244-0-img0"
    assert q.target_ids == ["dev-1028-1-img1"]
    assert q.text == "show three bottles of soft drink"
    assert q.extra["img_set"]["target_rank"] == 3
    item = bench.media_item("dev-244-0-img0")
    assert item.path.as_posix().endswith("dev/dev-244-0-img0.png")
    # Targets are img_set members in val, as the subset protocol needs.
    assert all(q.target_ids[0] in q.subset_ids for q in bench.queries)


def test_cirr_train_image_split_has_nested_paths(realdata):
    data = json.loads((realdata / "cirr/image_splits/split.rc2.train.json").read_text())
    assert len(data) == 16939


@pytest.mark.parametrize(
    ("category", "split", "n_queries", "n_gallery"),
    [
        ("dress", "val", 2017, 3817),
        ("shirt", "val", 2038, 6346),
        ("toptee", "val", 1961, 5373),
        ("dress", "test", 2024, 3818),
        ("shirt", "test", 2038, 6346),
        ("toptee", "test", 2056, 5374),
    ],
)
def test_fashioniq_counts(realdata, category, split, n_queries, n_gallery):
    bench = load_benchmark(f"fashioniq-{category}", realdata / "fashioniq", split)
    assert len(bench.queries) == n_queries
    assert len(bench.gallery) == n_gallery
    assert not bench.exclude_reference
    assert bench.has_targets is (split == "val")
    assert all(len(q.extra["captions"]) == 2 for q in bench.queries)


def test_fashioniq_caption_join(realdata):
    bench = load_benchmark("fashioniq-dress", realdata / "fashioniq", "val")
    q = bench.queries[0]
    assert q.extra["captions"] == ["is shiny and silver with shorter sleeves", "fit and flare"]
    assert q.text == "Is shiny and silver with shorter sleeves and fit and flare"
    test = load_benchmark("fashioniq-dress", realdata / "fashioniq", "test")
    # Leading space and no target on the test split, as published.
    assert test.queries[0].text == "Yello and more flowing and short and black"
    assert test.queries[0].target_ids == []


@pytest.mark.parametrize(("split", "n"), [("val", 40), ("test", 40)])
def test_circo_counts(realdata, split, n):
    bench = load_benchmark("circo", realdata / "circo", split)
    assert len(bench.queries) == n
    assert bench.exclude_reference
    # The COCO unlabeled image list is not shipped: the gallery is only what the annotations name.
    assert bench.info["gallery_complete"] is False
    if split == "val":
        counts = [len(q.target_ids) for q in bench.queries]
        assert min(counts) >= 1 and max(counts) <= 14
        assert all(q.extra["target_img_id"] == q.target_ids[0] for q in bench.queries)
        q = bench.queries[0]
        assert (q.reference_id, q.target_ids) == ("271520", ["355099", "528417", "534704"])
        assert "cardinality" in q.extra["semantic_aspects"]


def _circo_copy(realdata, tmp_path):
    """A CIRCO folder with the val annotations, for tests that add a gallery beside them."""
    root = tmp_path / "circo"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "val.json").write_text((realdata / "circo/annotations/val.json").read_text())
    return root


def test_circo_full_gallery_from_coco_image_info(realdata, tmp_path):
    root = _circo_copy(realdata, tmp_path)
    info = root / "COCO2017_unlabeled" / "annotations"
    info.mkdir(parents=True)
    (info / "image_info_unlabeled2017.json").write_text(json.dumps({"images": [{"id": 1}, {"id": 2}]}))
    bench = load_benchmark("circo", root, "val")
    assert [g.id for g in bench.gallery] == ["1", "2"]
    assert bench.info["gallery_complete"] is True
    assert bench.media_item("1").path.name == "000000000001.jpg"


def test_circo_gallery_lists_each_image_once(realdata, tmp_path):
    root = _circo_copy(realdata, tmp_path)
    folder = root / "COCO2017_unlabeled" / "unlabeled2017"
    folder.mkdir(parents=True)
    for name in ("000000000005.jpg", "5.jpg", "000000000007.jpg", "²³.jpg", "notes.jpg"):
        (folder / name).write_bytes(b"")
    bench = load_benchmark("circo", root, "val")
    assert [g.id for g in bench.gallery] == ["5", "7"]
    info = root / "COCO2017_unlabeled" / "annotations"
    info.mkdir()
    (info / "image_info_unlabeled2017.json").write_text(json.dumps({"images": [{"id": 9}, {"id": 3}, {"id": 9}]}))
    assert [g.id for g in load_benchmark("circo", root, "val").gallery] == ["9", "3"]
