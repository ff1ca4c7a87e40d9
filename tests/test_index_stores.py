"""The same index operations on both stores: FAISS files and Milvus (Milvus Lite: a real engine,
in-process, on a local file)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from composir.cli import main
from composir.errors import ComposirError
from composir.index import STORES as REGISTERED
from composir.index import MilvusIndex, open_index, shard_of
from composir.search import Searcher
from helpers import INFO, _encoder, _images

STORES = sorted(REGISTERED)  # every registered store passes this contract


def _open(store: str, tmp_path, name: str = "index"):
    return REGISTERED[store].example(tmp_path / name, tmp_path)


def _vector(encode, path) -> np.ndarray:
    from composir.data.records import GalleryItem

    return encode([GalleryItem(path.name, path, "image")])[0][0]


@pytest.mark.parametrize("store", STORES)
def test_index_search_lookup(store, tmp_path):
    media = tmp_path / "media"
    paths = _images(media, 30)
    index = _open(store, tmp_path)
    report = index.update(media, _encoder(), INFO, progress=False, batch_size=8)
    assert (report["added"], report["total"], len(index)) == (30, 30, 30)
    scores, ids = index.search(_vector(_encoder(), paths[5])[None], 3)
    assert ids.shape == (1, 3) and scores[0, 0] >= scores[0, 1] >= scores[0, 2]
    key, path, media_type = index.lookup([int(ids[0, 0])])[int(ids[0, 0])]
    assert (key, media_type) == ("005.png", "image") and path.endswith("005.png")
    assert index.key_to_id("005.png") == int(ids[0, 0]) and index.key_to_id("nope.png") is None
    assert set(index.items()) == {p.name for p in paths}
    if store == "milvus":  # as another process finds a collection it did not write: released
        index.client.release_collection(index.collection)
    reopened = open_index(tmp_path / "index")  # what search and serve open
    assert type(reopened) is type(index) and len(reopened) == 30 and reopened.info["fingerprint"] == "test"
    assert reopened.key_to_id("005.png") == int(ids[0, 0])
    assert reopened.search(_vector(_encoder(), paths[5])[None], 3)[1].tolist() == ids.tolist()


@pytest.mark.parametrize("store", STORES)
def test_incremental_update_and_a_deleted_file(store, tmp_path):
    media = tmp_path / "media"
    paths = _images(media, 20)
    _open(store, tmp_path).update(media, _encoder(), INFO, progress=False)
    before = _open(store, tmp_path).items()
    paths[3].unlink()  # deleted
    shutil.copy(paths[10], paths[4])  # changed
    os.utime(paths[4], (1, 1))
    _images(media, 1, start=50)  # added
    (media / "broken.png").write_bytes(b"\x89PNG broken")  # reported and skipped
    encoded = []
    encode = _encoder()

    def counting(items):
        encoded.extend(it.id for it in items)
        return encode(items)

    index = _open(store, tmp_path)
    report = index.update(media, counting, INFO, progress=False)
    assert (report["added"], report["updated"], report["removed"], report["total"]) == (1, 1, 1, 20)
    assert [s["file"] for s in report["skipped"]] == ["broken.png"]
    assert sorted(encoded) == ["004.png", "050.png", "broken.png"]  # nothing else re-encoded
    after = index.items()
    assert "003.png" not in after and after["007.png"][0] == before["007.png"][0]
    _, ids = index.search(_vector(encode, paths[10])[None], 20)
    keys = {v[0] for v in index.lookup([int(i) for i in ids[0] if i >= 0]).values()}
    assert "003.png" not in keys and {"004.png", "010.png"} <= keys  # 004 is now 010's pixels


@pytest.mark.parametrize("store", STORES)
def test_an_interrupted_run_goes_on_from_its_last_commit(store, tmp_path):
    media = tmp_path / "media"
    _images(media, 24)
    encode, calls = _encoder(), []

    def dies_on_the_fourth_batch(items):
        calls.append(len(items))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return encode(items)

    with pytest.raises(KeyboardInterrupt):
        _open(store, tmp_path).update(media, dies_on_the_fourth_batch, INFO, progress=False, batch_size=4,
                                      commit_every=4)  # fmt: skip
    encoded = []

    def counting(items):
        encoded.extend(it.id for it in items)
        return encode(items)

    index = _open(store, tmp_path)
    report = index.update(media, counting, INFO, progress=False, batch_size=4, commit_every=4)
    assert len(encoded) == 24 - 12 and report["total"] == 24  # the 3 committed batches were kept
    assert len(index) == 24 and len(set(index.items())) == 24


def test_milvus_shards_never_remove_each_others_items(tmp_path):
    media = tmp_path / "media"
    paths = _images(media, 16)
    for rank in (0, 1):  # as two torchrun ranks would, one after the other (Milvus Lite: one process)
        _open("milvus", tmp_path).update(media, _encoder(), INFO, progress=False, write_info=False,
                                         keep=lambda key, r=rank: shard_of(key, 2) == r)  # fmt: skip
    assert not (tmp_path / "index" / "info.json").exists()  # ranks leave the folder to rank 0
    _open("milvus", tmp_path).write_info(INFO, media)  # rank 0, after the barrier
    index = open_index(tmp_path / "index")
    assert isinstance(index, MilvusIndex) and index.exists and index.info["dim"] == 8
    assert len(index) == 16
    gone = next(p for p in paths if shard_of(p.name, 2) == 1)
    gone.unlink()
    index.update(media, _encoder(), INFO, progress=False, keep=lambda key: shard_of(key, 2) == 0)
    assert len(index) == 16  # rank 0 leaves rank 1's files alone, even the deleted one
    index.update(media, _encoder(), INFO, progress=False, keep=lambda key: shard_of(key, 2) == 1)
    assert len(index) == 15 and gone.name not in index.items()


def test_milvus_index_searched_from_the_cli(synth_root, tiny_run, tmp_path, capsys, caplog):
    media = tmp_path / "photos"
    shutil.copytree(synth_root / "val", media)
    for extra in sorted(media.glob("*.png"))[20:]:
        extra.unlink()
    out, uri = tmp_path / "index", str(tmp_path / "store" / "gallery.db")
    argv = ["index", "--run", str(tiny_run), "--media", str(media), "--out", str(out), "--store", "milvus"]
    assert main([*argv, "--uri", uri]) == 0
    # A run that succeeds logs no error (Milvus Lite's gRPC server logs calls it does not implement).
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert json.loads((out / "milvus.json").read_text())["uri"] == uri
    assert main([*argv, "--uri", str(tmp_path / "other.db")]) == 2  # one folder, one store
    assert "lives in" in capsys.readouterr().err
    first = sorted(media.glob("*.png"))[0].name
    results = Searcher(out).search(first, "make the red circle blue", k=5)
    assert len(results) == 5 and first not in [r.id for r in results]  # the reference is left out
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--id", first, "--text", "add a cat", "--k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3
    assert main([*argv[:-2], "--store", "milvus"]) == 2  # --uri is required


@pytest.mark.parametrize("store", STORES)
def test_ids_with_any_characters_are_looked_up(store, tmp_path):
    media = tmp_path / "media"
    names = ["café.png", "日本.png", 'q"uote.png', "back\\slash.png", "x%20y #1.png"]
    media.mkdir()
    from PIL import Image

    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (20 * i, 7, 7)).save(media / name)
    index = _open(store, tmp_path)
    assert index.update(media, _encoder(), INFO, progress=False)["total"] == len(names)
    for name in names:
        found = index.key_to_id(name)
        assert found is not None and index.lookup([found])[found][0] == name


@pytest.mark.parametrize("store", STORES)
def test_rebuild_starts_the_index_afresh(store, tmp_path):
    media = tmp_path / "media"
    _images(media, 6)
    _open(store, tmp_path).update(media, _encoder(), INFO, progress=False)
    for extra in sorted(media.glob("*.png"))[3:]:
        extra.unlink()
    counting = _encoder()
    report = _open(store, tmp_path).update(media, counting, INFO, progress=False, rebuild=True)
    assert (report["added"], report["total"]) == (3, 3)  # every remaining file encoded again


def test_a_milvus_lite_file_another_process_holds_is_named_as_such(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from composir.index.milvus_store import _connect; "
        f"c = _connect({str(db)!r}); print('open', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ComposirError, match="another process has this Milvus Lite file open"):
            MilvusIndex(tmp_path / "index", uri=str(db))
    finally:
        holder.kill()
        holder.wait()


def test_a_relative_milvus_lite_uri_is_stored_absolute(tmp_path, monkeypatch):
    media = tmp_path / "media"
    _images(media, 3)
    monkeypatch.chdir(tmp_path)
    MilvusIndex(tmp_path / "index", uri="rel.db").update(media, _encoder(), INFO, progress=False)
    saved = json.loads((tmp_path / "index" / "milvus.json").read_text())
    assert saved["uri"] == str(tmp_path / "rel.db")
    monkeypatch.chdir(media)  # searched from another folder: the same collection, not a new empty file
    assert len(open_index(tmp_path / "index")) == 3


@pytest.mark.parametrize("name", ["9starts-with-a-digit", "has space", "x" * 256, "", "naïve"])
def test_a_collection_name_milvus_refuses_is_one_line_before_connecting(tmp_path, name, capsys):
    media = tmp_path / "media"
    _images(media, 2)
    code = main(["index", "--run", "unused", "--media", str(media), "--out", str(tmp_path / "i"), "--store", "milvus",
                 "--uri", str(tmp_path / "m.db"), "--collection", name])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --collection") and "\n" not in err
    assert not (tmp_path / "m.db").exists()


def test_a_milvus_lite_file_where_no_folder_can_be_made_is_one_line_before_connecting(tmp_path, capsys):
    media = tmp_path / "media"
    _images(media, 2)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    uri = tmp_path / "notes.txt" / "m.db"
    code = main(["index", "--run", "unused", "--media", str(media), "--out", str(tmp_path / "i"), "--store", "milvus",
                 "--uri", str(uri)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --uri") and "is a file, not a folder" in err and "\n" not in err
    assert not (tmp_path / "i").exists()
