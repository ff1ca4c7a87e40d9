"""An index stays whole when writers race, keeps its I/O linear, leaves torch's threads alone,
and takes file names and settings it cannot use without losing anything."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from composir.cli import main
from composir.errors import ComposirError
from composir.index import GalleryIndex, IndexSettings, faiss_store, open_index
from helpers import INFO, _encoder, _images


def test_intermediate_commits_of_an_ivf_build_do_not_rewrite_the_exact_vectors(tmp_path, monkeypatch):
    media = tmp_path / "media"
    _images(media, 500)
    writes = []
    real = faiss_store._write_exact
    monkeypatch.setattr(
        faiss_store, "_write_exact", lambda db, folder, dim: (writes.append(folder), real(db, folder, dim))
    )
    index = GalleryIndex(tmp_path / "ivf")
    index.update(media, _encoder(16), INFO, kind="ivfsq8", nlist=4, progress=False, batch_size=32, commit_every=64)
    generations = int(index.current_name.split("-")[1])
    assert generations >= 4  # 256 (the quantizer's training set), then every 64, then the end
    assert len(writes) == 1  # only the final commit writes exact.npy
    assert (index.generation / "exact.npy").is_file()


def test_a_writer_opened_before_another_commits_works_from_the_new_generation(tmp_path):
    media, out = tmp_path / "media", tmp_path / "index"
    _images(media, 6)
    GalleryIndex(out).update(media, _encoder(), INFO, progress=False)
    stale = GalleryIndex(out)  # loads gen-000001
    _images(media, 3, start=6)
    GalleryIndex(out).update(media, _encoder(), INFO, progress=False)  # gen-000002; gen-000001 is deleted
    _images(media, 2, start=9)
    report = stale.update(media, _encoder(), INFO, progress=False)
    assert (report["added"], report["total"]) == (2, 11)
    fresh = GalleryIndex(out)
    assert len(fresh) == 11 and set(fresh.items()) == {f"{i:03d}.png" for i in range(11)}


def test_two_writers_at_once_one_waits_its_turn_and_nothing_is_lost(tmp_path):
    media, out = tmp_path / "media", tmp_path / "index"
    _images(media, 8)
    GalleryIndex(out).update(media, _encoder(), INFO, progress=False)
    _images(media, 8, start=8)
    second = GalleryIndex(out)  # opened while the first writer is still encoding
    inside, release = threading.Event(), threading.Event()
    encode = _encoder()

    def slow(items):
        inside.set()
        release.wait(10)
        return encode(items)

    first = threading.Thread(target=lambda: GalleryIndex(out).update(media, slow, INFO, progress=False))
    first.start()
    assert inside.wait(10)
    with pytest.raises(ComposirError, match="another process is writing this index"):
        second.update(media, encode, INFO, progress=False)
    release.set()
    first.join(10)
    report = second.update(media, encode, INFO, progress=False)  # after the first: nothing left to do
    assert (report["added"], report["total"]) == (0, 16)
    assert len(open_index(out)) == 16


def test_opening_and_searching_an_index_leaves_torchs_thread_count_alone(tmp_path):
    index = GalleryIndex.from_vectors(tmp_path / "i", ["a", "b", "c"], np.eye(3, dtype=np.float32), dict(INFO))
    info = index.generation / "info.json"
    info.write_text(info.read_text().replace('"kind"', '"threads": 1, "kind"'))  # as a planned index records
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        reopened = GalleryIndex(tmp_path / "i")
        assert reopened.info["threads"] == 1
        _, ids = reopened.search(np.eye(3, dtype=np.float32)[:1], 2)
        assert ids[0, 0] == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_file_name_that_is_not_utf8_is_skipped_and_reported_not_fatal(tmp_path):
    media = tmp_path / "media"
    _images(media, 3)
    bad = os.fsencode(media) + b"/caf\xe9.png"
    with open(bad, "wb") as handle:
        handle.write((media / "000.png").read_bytes())
    index = GalleryIndex(tmp_path / "index")
    report = index.update(media, _encoder(), INFO, progress=False)
    assert report["total"] == 3
    assert [s["error"] for s in report["skipped"]] == ["file name is not valid UTF-8; rename the file to index it"]
    assert "caf" in report["skipped"][0]["file"]


@pytest.mark.parametrize(
    ("knobs", "field"),
    [({"nlist": 0}, "nlist"), ({"nlist": -1}, "nlist"), ({"pq_m": 0}, "pq_m"), ({"refine": -1}, "refine"),
     ({"kind": "hnsw"}, "kind"), ({"target_recall": 0.0}, "target_recall"), ({"max_memory": 0}, "max_memory")],
)  # fmt: skip
def test_index_settings_refuse_what_makes_no_sense(knobs, field):
    with pytest.raises(ComposirError, match=field):
        IndexSettings(**knobs)


@pytest.mark.parametrize("option", [["--nlist", "0"], ["--nlist", "-1"], ["--pq-m", "0"], ["--refine", "-1"]])
def test_index_options_out_of_range_are_one_line_before_any_work(option, tmp_path, capsys):
    media = tmp_path / "media"
    _images(media, 3)
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "index",
                "--encoder",
                "tiny",
                "--random-weights",
                "--media",
                str(media),
                "--out",
                str(tmp_path / "o"),
                *option,
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {option[0]}" in err
    assert not (tmp_path / "o").exists()


def test_index_out_naming_a_file_is_one_line(tmp_path, capsys):
    media = tmp_path / "media"
    _images(media, 3)
    (tmp_path / "o").write_text("x")
    assert (
        main(["index", "--encoder", "tiny", "--random-weights", "--media", str(media), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "is a file, not an index folder" in capsys.readouterr().err
