"""Index a folder, search it from Python and the CLI, update it incrementally, survive bad files."""

from __future__ import annotations

import json
import shutil

import pytest

from composir.cli import main
from composir.errors import ComposirError
from composir.index import GalleryIndex
from composir.search import Searcher
from helpers import torchrun


def test_index_search_and_incremental_update(synth_root, tiny_run, tmp_path, capsys):
    media = tmp_path / "photos"
    shutil.copytree(synth_root / "val", media / "album")
    files = sorted((media / "album").glob("*.png"))[:30]
    for extra in sorted((media / "album").glob("*.png"))[30:]:
        extra.unlink()
    (media / "album" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (media / "notes.txt").write_text("ignored: not a media file")
    out = tmp_path / "index"
    assert main(["index", "--run", str(tiny_run), "--media", str(media), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["total"] == 30 and report["added"] == 30
    printed = capsys.readouterr().out  # the default kind is auto: what it chose and measured, printed
    assert "index plan: flat; recall@10 1.000" in printed and "30 items: an exact scan is fast enough" in printed
    assert [s["file"] for s in report["skipped"]] == ["album/broken.jpg"]

    searcher = Searcher(out)
    ref_key = f"album/{files[0].name}"
    results = searcher.search(ref_key, "make the red circle blue", k=5)
    assert len(results) == 5 and ref_key not in [r.id for r in results]
    assert results == sorted(results, key=lambda r: -r.score)
    by_path = searcher.search(files[0], "make the red circle blue", k=5)
    assert [r.id for r in by_path] == [r.id for r in results]
    assert len(searcher.search(files[1], None, k=3)) == 3  # image only
    assert len(searcher.search(None, "a red circle", k=3)) == 3  # text only

    capsys.readouterr()
    assert (
        main(["search", "--index", str(out), "--image", str(files[2]), "--text", "add a cat", "--k", "4", "--json"])
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["results"]) == 4
    assert set(payload["results"][0]) >= {"id", "path", "score"}

    # Incremental: delete one, change one, add one; the rest is not re-encoded.
    generation = (out / "CURRENT").read_text()
    files[3].unlink()
    shutil.copy(files[5], files[4])
    shutil.copy(files[6], media / "album" / "new.png")
    before = GalleryIndex(out).items()
    assert main(["index", "--run", str(tiny_run), "--media", str(media), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["added"], report["updated"], report["removed"], report["total"]) == (1, 1, 1, 30)
    after = GalleryIndex(out).items()
    assert f"album/{files[3].name}" not in after and "album/new.png" in after
    unchanged = f"album/{files[7].name}"
    assert after[unchanged][0] == before[unchanged][0]  # same vector id: not re-encoded
    assert (out / "CURRENT").read_text() != generation
    assert len(list(out.glob("gen-*"))) == 1  # old generation cleaned up


def test_errors(tiny_run, tmp_path):
    with pytest.raises(ComposirError, match="no index here"):
        Searcher(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["index", "--run", str(tiny_run), "--media", str(empty), "--out", str(tmp_path / "i")]) == 2


@pytest.mark.slow
def test_sharded_indexing_with_two_workers_matches_one(synth_root, tiny_run, tmp_path):
    import os
    import subprocess

    import numpy as np

    media = tmp_path / "media"
    shutil.copytree(synth_root / "val", media)
    single = tmp_path / "single"
    assert main(["index", "--run", str(tiny_run), "--media", str(media), "--out", str(single)]) == 0
    sharded = tmp_path / "sharded"
    cmd = [
        *torchrun(2, 29531),
        "-m",
        "composir.cli",
        "index",
        "--run-dir",
        str(tiny_run),
        "--media",
        str(media),
        "--out",
        str(sharded),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = GalleryIndex(single), GalleryIndex(sharded)
    assert len(a) == len(b) == len(list(media.glob("*.png")))
    assert len(list((sharded / "parts").iterdir())) == 2
    ka, kb = a.items(), b.items()
    assert set(ka) == set(kb)
    for key in list(ka)[:20]:
        np.testing.assert_allclose(a.vectors.reconstruct(ka[key][0]), b.vectors.reconstruct(kb[key][0]), atol=1e-5)
    # Both answer a search the same way.
    sa, sb = Searcher(single), Searcher(sharded)
    ref = next(iter(ka))
    assert [r.id for r in sa.search(ref, "add a cat", 5)] == [r.id for r in sb.search(ref, "add a cat", 5)]


def test_ivfpq_index_kind(tmp_path):
    import numpy as np
    from PIL import Image

    media = tmp_path / "m"
    media.mkdir()
    for i in range(300):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(media / f"{i:03d}.png")
    rng = np.random.default_rng(0)
    table = {f"{i:03d}.png": v / np.linalg.norm(v) for i, v in enumerate(rng.standard_normal((300, 16)))}

    def encode(items):
        return np.stack([table[it.id] for it in items]).astype(np.float32), []

    index = GalleryIndex(tmp_path / "ivf")
    report = index.update(
        media, encode, {"fingerprint": "x"}, kind="ivfpq", nlist=4, pq_m=4, progress=False, commit_every=10_000
    )
    assert report["total"] == 300 and index.info["kind"] == "ivfpq"
    _, ids = index.search(table["007.png"][None], 5)
    assert ids.shape == (1, 5) and (ids >= 0).all()
    assert index.lookup([int(ids[0, 0])])  # ids map back to files
    # The quantizer trains on the first commit, which waits for enough vectors (256) even when
    # commits are more frequent than that.
    small_commits = GalleryIndex(tmp_path / "commits").update(
        media, encode, {"fingerprint": "x"}, kind="ivfpq", nlist=4, pq_m=4, progress=False, commit_every=100
    )
    assert small_commits["total"] == 300
    # A collection too small for IVF-PQ is refused before a single file is encoded.
    for extra in sorted(media.glob("*.png"))[200:]:
        extra.unlink()
    calls = []
    with pytest.raises(ComposirError, match="200 files, but ivfpq with nlist=4 needs at least 256"):
        GalleryIndex(tmp_path / "small").update(
            media, lambda items: calls.append(items), {"fingerprint": "x"}, kind="ivfpq", nlist=4, pq_m=4
        )
    assert calls == []


def test_ivfpq_reranks_by_exact_vectors_and_updates_incrementally(tmp_path):
    import numpy as np
    from PIL import Image

    media = tmp_path / "m"
    media.mkdir()
    n, dim = 400, 32
    for i in range(n):
        Image.new("RGB", (8, 8), (i % 256, i // 256, 0)).save(media / f"{i:03d}.png")
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    table = {f"{i:03d}.png": v / np.linalg.norm(v) for i, v in enumerate(vecs)}

    def encode(items):
        return np.stack([table[it.id] for it in items]).astype(np.float32), []

    def recall(index, queries, exact_keys):
        _, ids = index.search(queries, 5)
        found = [[index.lookup([int(i)])[int(i)][0] for i in row if i >= 0] for row in ids]
        return np.mean([len(set(f) & set(e)) / 5 for f, e in zip(found, exact_keys)])

    keys = sorted(table)
    gallery = np.stack([table[k] for k in keys])
    queries = gallery[:40] + 0.3 * rng.standard_normal((40, dim)).astype(np.float32)
    exact = [[keys[j] for j in np.argsort(-(gallery @ q))[:5]] for q in queries]
    common = {"nlist": 4, "pq_m": 4, "progress": False, "commit_every": 10_000}
    plain = GalleryIndex(tmp_path / "plain")
    plain.update(media, encode, {"fingerprint": "x"}, kind="ivfpq", refine=0, **common)
    refined = GalleryIndex(tmp_path / "refined")
    refined.update(media, encode, {"fingerprint": "x"}, kind="ivfpq", **common)
    assert refined.info["refine"] == 10
    for index in (plain, refined):
        index.vectors.nprobe = 4  # every list: the candidates differ by the re-ranking only
    r_plain, r_refined = recall(plain, queries, exact), recall(refined, queries, exact)
    assert r_refined >= 0.95 and r_refined > r_plain, (r_plain, r_refined)  # measured: 0.76 -> 1.0
    scores, _ = refined.search(queries[:1], 5)
    assert np.all(np.diff(scores[0]) <= 0)  # best first, by exact score

    # Incremental: one file deleted, one changed; the rest keep their ids, new ids are never reused.
    before = refined.items()
    (media / "003.png").unlink()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(media / "004.png")
    table["004.png"] = table["005.png"]
    report = refined.update(media, encode, {"fingerprint": "x"}, **common)  # kind and refine: the index's own
    assert (report["removed"], report["updated"], report["added"]) == (1, 1, 0)
    after = refined.items()
    assert "003.png" not in after and after["004.png"][0] > max(v[0] for v in before.values())
    assert all(after[k][0] == before[k][0] for k in after if k != "004.png")
    _, ids = refined.search(table["005.png"][None], 2)
    assert {refined.lookup([int(i)])[int(i)][0] for i in ids[0]} == {"004.png", "005.png"}
    with pytest.raises(ComposirError, match="the index is ivfpq, not flat"):
        refined.update(media, encode, {"fingerprint": "x"}, kind="flat", **common)
