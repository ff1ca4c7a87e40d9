"""Malformed annotation files get errors naming the file, the entry and the field."""

from __future__ import annotations

import json

import pytest

from composir.data import load_benchmark
from composir.errors import AnnotationError

WEBVID_HEADER = "pth1,pth2,edit,txt1,txt2,scores\n"


def _cirr(tmp_path, captions, split_map=None):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    (tmp_path / "captions" / "cap.rc2.val.json").write_text(
        json.dumps(captions) if not isinstance(captions, str) else captions
    )
    split_map = split_map or {"a": "./dev/a.png", "b": "./dev/b.png"}
    (tmp_path / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split_map))
    return tmp_path


def _entry(**over):
    e = {"pairid": 1, "reference": "a", "target_hard": "b", "caption": "x", "img_set": {"id": 0, "members": ["a", "b"]}}
    e.update(over)
    return e


def test_cirr_missing_field_names_file_entry_field(tmp_path):
    e = _entry()
    del e["caption"]
    root = _cirr(tmp_path, [_entry(pairid=0), e])
    with pytest.raises(AnnotationError) as info:
        load_benchmark("cirr", root, "val")
    msg = str(info.value)
    assert "cap.rc2.val.json" in msg and "entry 1" in msg and "'caption'" in msg


def test_cirr_wrong_type(tmp_path):
    root = _cirr(tmp_path, [_entry(reference=5)])
    with pytest.raises(AnnotationError, match=r"entry 0, field 'reference': expected str, got int"):
        load_benchmark("cirr", root, "val")


def test_cirr_bad_json_and_missing_file(tmp_path):
    root = _cirr(tmp_path, "[{")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_benchmark("cirr", root, "val")
    with pytest.raises(AnnotationError, match="not found"):
        load_benchmark("cirr", tmp_path, "test1")


def test_cirr_unknown_image(tmp_path):
    root = _cirr(tmp_path, [_entry(target_hard="zzz")])
    with pytest.raises(AnnotationError, match=r"'zzz' is not in split\.rc2\.val\.json"):
        load_benchmark("cirr", root, "val")


def test_cirr_duplicate_pairid(tmp_path):
    root = _cirr(tmp_path, [_entry(), _entry()])
    with pytest.raises(AnnotationError, match="duplicate pairid"):
        load_benchmark("cirr", root, "val")


def test_fashioniq_caption_count(tmp_path):
    (tmp_path / "captions").mkdir()
    (tmp_path / "image_splits").mkdir()
    (tmp_path / "captions" / "cap.dress.val.json").write_text(
        json.dumps([{"candidate": "a", "target": "b", "captions": ["only one"]}])
    )
    (tmp_path / "image_splits" / "split.dress.val.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(AnnotationError, match=r"entry 0, field 'captions': expected 2 captions"):
        load_benchmark("fashioniq-dress", tmp_path, "val")


def test_circo_bool_is_not_an_id(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "test.json").write_text(
        json.dumps([{"id": 0, "reference_img_id": True, "relative_caption": "x"}])
    )
    with pytest.raises(AnnotationError, match="reference_img_id"):
        load_benchmark("circo", tmp_path, "test")


def test_webvid_covr_reader(tmp_path):
    csv_dir = tmp_path / "annotation" / "webvid-covr"
    csv_dir.mkdir(parents=True)
    (csv_dir / "webvid8m-covr_test.csv").write_text(
        WEBVID_HEADER
        + '0001/100,0002/200,make it night,"a dog, running",a dog at night,"[0.5, 0.7]"\n'
        + "0003/300,0004/400,add a cat,a room,a room with a cat,[]\n"
        + "0005/500,0002/200,same target,x,y,\n"
    )
    bench = load_benchmark("webvid-covr", tmp_path, "test")
    assert [q.target_ids for q in bench.queries] == [["0002/200"], ["0004/400"], ["0002/200"]]
    assert [g.id for g in bench.gallery] == ["0002/200", "0004/400"]
    assert bench.queries[0].extra["scores"] == [0.5, 0.7]
    assert bench.queries[0].extra["reference_caption"] == "a dog, running"
    assert bench.queries[1].extra["scores"] == []
    assert bench.media_item("0001/100").path == tmp_path / "videos" / "0001" / "100.mp4"
    assert bench.gallery[0].media_type == "video"


def test_webvid_covr_errors(tmp_path):
    (tmp_path / "test.csv").write_text("pth1,edit\nx,y\n")
    with pytest.raises(AnnotationError, match=r"missing column\(s\) \['pth2'\]"):
        load_benchmark("webvid-covr", tmp_path, "test")
    (tmp_path / "test.csv").write_text(WEBVID_HEADER + "a,b,,c,d,[]\n")
    with pytest.raises(AnnotationError, match=r"test.csv, entry line 2, field 'edit': empty value"):
        load_benchmark("webvid-covr", tmp_path, "test")
    (tmp_path / "test.csv").write_text(WEBVID_HEADER + "a,b,c,d,e,[oops\n")
    with pytest.raises(AnnotationError, match="field 'scores'"):
        load_benchmark("webvid-covr", tmp_path, "test")
    with pytest.raises(AnnotationError, match="no annotation CSV"):
        load_benchmark("webvid-covr", tmp_path, "val")


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("nope", ".", "val")
