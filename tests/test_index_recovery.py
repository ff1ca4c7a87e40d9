"""An index survives what crashes and careless users leave behind: leftovers of a killed run,
dangling and escaping symlinks, damaged files; its report counts what happened."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from composir.cli import main
from composir.errors import ComposirError
from composir.index import GalleryIndex, IndexDamagedError, scan_media
from helpers import INFO, _encoder, _images


def test_a_generation_left_by_a_killed_run_is_garbage_not_a_dead_end(tmp_path):
    media, out = tmp_path / "media", tmp_path / "index"
    _images(media, 10)
    index = GalleryIndex(out)
    index.update(media, _encoder(), INFO, progress=False)
    assert (out / "CURRENT").read_text().strip() == "gen-000001"
    # A kill between renaming .gen-N.tmp -> gen-N and switching CURRENT, plus other leftovers.
    (out / "gen-000002").mkdir()
    (out / "gen-000002" / "x").write_text("half")
    (out / ".gen-000003.tmp").mkdir()
    (out / ".CURRENT.abc123.tmp").write_text("gen-000003")
    (out / ".report.json.zz.tmp").write_text("{")
    _images(media, 1, start=50)
    report = GalleryIndex(out).update(media, _encoder(), INFO, progress=False)
    assert report["added"] == 1 and report["total"] == 11
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["CURRENT", "gen-000002", "report.json"]
    assert not (out / "gen-000002" / "x").exists()  # the garbage folder was replaced by the real generation


def test_symlinks_dangling_or_leading_outside_are_skipped_and_reported(tmp_path):
    media = tmp_path / "media"
    _images(media, 3)
    outside = _images(tmp_path / "elsewhere", 1, start=90)[0]
    os.symlink(tmp_path / "nowhere.png", media / "dangling.png")
    os.symlink(outside, media / "leak.png")
    os.symlink(media / "000.png", media / "alias.png")  # inside the collection: indexed
    files, skipped = scan_media(media)
    assert [f.key for f in files] == ["000.png", "001.png", "002.png", "alias.png"]
    assert skipped == [
        {"file": "dangling.png", "error": "dangling symlink"},
        {"file": "leak.png", "error": "symlink to a file outside the media folder"},
    ]
    report = GalleryIndex(tmp_path / "index").update(media, _encoder(), INFO, progress=False)
    assert report["total"] == 4 and {s["file"] for s in report["skipped"]} == {"dangling.png", "leak.png"}


def test_report_counts_new_changed_and_broken_files_apart(tmp_path):
    media, out = tmp_path / "media", tmp_path / "index"
    paths = _images(media, 20)
    GalleryIndex(out).update(media, _encoder(), INFO, progress=False)
    _images(media, 11, start=100)
    for path in paths[:3]:  # changed: now corrupt
        path.write_bytes(b"\x89PNG broken")
    shutil.copy(paths[10], paths[4])  # changed: still readable
    os.utime(paths[4], (1, 1))
    report = GalleryIndex(out).update(media, _encoder(), INFO, progress=False)
    assert (report["added"], report["updated"], report["removed"], len(report["skipped"])) == (11, 1, 3, 3)
    assert report["total"] == 20 + 11 - 3
    assert json.loads((out / "report.json").read_text()) == report


@pytest.mark.parametrize("damage", ["missing_generation", "truncated_vectors", "garbage_sqlite", "garbage_info"])
def test_a_damaged_index_is_named_and_rebuilt_on_request(tmp_path, damage, tiny_run, capsys):
    media, out = tmp_path / "media", tmp_path / "index"
    _images(media, 6)
    GalleryIndex(out).update(media, _encoder(), INFO, progress=False)
    gen = out / "gen-000001"
    if damage == "missing_generation":
        (out / "CURRENT").write_text("gen-000007\n")
    elif damage == "truncated_vectors":
        data = (gen / "vectors.faiss").read_bytes()
        (gen / "vectors.faiss").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_sqlite":
        (gen / "meta.sqlite").write_bytes(b"this is not a database" * 100)
    else:
        (gen / "info.json").write_text("{not json")
    with pytest.raises(IndexDamagedError, match=r"index is damaged .*--rebuild"):
        GalleryIndex(out)
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--text", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "damaged" in err and "\n" not in err and "Traceback" not in err
    assert main(["index", "--run", str(tiny_run), "--media", str(media), "--out", str(out)]) == 2
    assert "--rebuild" in capsys.readouterr().err
    assert main(["index", "--run", str(tiny_run), "--media", str(media), "--out", str(out), "--rebuild"]) == 0
    assert len(GalleryIndex(out)) == 6


def test_only_one_writer_at_a_time(tmp_path):
    media, out = tmp_path / "media", tmp_path / "index"
    _images(media, 3)
    first = GalleryIndex(out)
    with first.writing(), pytest.raises(ComposirError, match="another process is writing"):
        GalleryIndex(out).update(media, _encoder(), INFO, progress=False)
