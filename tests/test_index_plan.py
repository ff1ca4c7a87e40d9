"""The index that chooses itself: the written rule, the measured tuning, and ``--kind auto``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from composir.cli import main
from composir.index import GalleryIndex
from composir.index import plan as index_plan
from composir.index.plan import IndexPlan, build_faiss, exact_neighbours, first_choice, measured_recall, plan_index

MiB, GiB = 2**20, 2**30


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 2), d))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)))


def uniform(n: int, d: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def test_the_written_rule():
    assert first_choice(100_000, 256, GiB).kind == "flat"
    big = first_choice(1_000_000, 256, 6 * GiB)  # too many to scan, 8-bit codes fit
    assert (big.kind, big.nlist) == ("ivfsq8", 4096) and "exact scan" in big.reason
    assert first_choice(200_000, 1024, GiB).kind == "ivfsq8"  # the scan limit scales with 256/d
    tight = first_choice(1_000_000, 256, 100 * MiB)  # 8-bit codes do not fit: PQ, the most bytes that do
    assert (tight.kind, tight.pq_m, tight.refine) == ("ivfpq", 64, 20) and tight.memory_bytes <= 100 * MiB
    assert first_choice(10_000, 256, MiB).kind != "flat"  # flat vectors over the budget
    assert "over the memory budget" in first_choice(10_000_000, 256, 10 * MiB).reason
    assert first_choice(50, 16, GiB, flat_items=10).nlist == 1  # too few to train more lists


def test_tuning_meets_the_target_with_the_least_nprobe():
    vectors = clustered(20_000, 32)
    plan, index = plan_index(vectors, GiB, target_recall=0.95, flat_items=1000)
    assert plan.kind == "ivfsq8" and plan.recall_at_10 >= 0.95
    # Measured, not assumed: the recall it reports is what a fresh measurement on other queries finds.
    picks = np.random.default_rng(7).choice(len(vectors), 300, replace=False)
    truth = exact_neighbours(vectors, picks, 10)
    assert measured_recall(index, plan, vectors, picks, truth) >= 0.93
    if plan.nprobe > 1:  # and it is the cheapest setting that gets there
        half = IndexPlan(**{**plan.__dict__, "nprobe": plan.nprobe // 2})
        assert measured_recall(index, half, vectors, picks, truth) < 0.95
    assert plan.query_ms is not None and plan.threads in (1, 2)


def test_pq_under_a_tight_budget_reaches_the_target_by_reranking():
    vectors = clustered(20_000, 64)
    plan, index = plan_index(vectors, 20_000 * 24 + MiB, target_recall=0.95, flat_items=1000)
    assert plan.kind == "ivfpq" and plan.refine >= 20 and plan.recall_at_10 >= 0.95
    no_rerank = IndexPlan(**{**plan.__dict__, "refine": 0})
    picks = np.arange(0, 20_000, 97)
    truth = exact_neighbours(vectors, picks, 10)
    assert measured_recall(index, no_rerank, vectors, picks, truth) < plan.recall_at_10  # re-ranking is what helps


def test_structureless_vectors_fall_back_to_an_exact_scan():
    plan, _ = plan_index(uniform(20_000, 64), GiB, flat_items=1000)
    assert plan.kind == "flat" and plan.recall_at_10 == 1.0 and "no cluster structure" in plan.reason
    # Without room for flat it keeps the IVF and says honestly what it reached.
    tight = 20_000 * (64 + 8) + 512 * 64 * 4 + 1
    kept, _ = plan_index(uniform(20_000, 64), tight, flat_items=1000, target_recall=0.999)
    assert kept.kind == "ivfsq8" and kept.nprobe > kept.nlist // 4 and "no cluster structure" in kept.reason


def test_ids_other_than_positions():
    vectors = clustered(5_000, 16)
    ids = np.arange(5_000, dtype=np.int64)[::-1] * 3 + 11
    plan, index = plan_index(vectors, GiB, flat_items=100, ids=ids)
    assert plan.recall_at_10 >= 0.95
    _, found = index.search(vectors[:1], 1)
    assert found[0, 0] == ids[0]


def _media(folder, n):
    folder.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (4, 4), (i % 256, i // 256, 0)).save(folder / f"{i:04d}.png")


def test_auto_index_plans_itself_and_replans_when_the_collection_halves(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(index_plan, "FLAT_ITEMS_AT_256", 300 * 16 // 256)  # flat up to 300 items at 16-d
    media = tmp_path / "media"
    _media(media, 900)
    table = dict(zip([f"{i:04d}.png" for i in range(900)], clustered(900, 16, seed=3)))

    def encode(items):
        return np.stack([table[it.id] for it in items]), []

    index = GalleryIndex(tmp_path / "auto")
    index.update(media, encode, {"fingerprint": "x"}, progress=False, commit_every=256)
    info = index.info
    assert info["auto"] and info["kind"] == "ivfsq8" and info["recall_at_10"] >= 0.95 and info["tuned_count"] == 900
    assert 0 < info["nprobe"] <= info["nlist"]
    ids, exact = index.exact_vectors()  # kept for re-planning, float16
    assert len(ids) == 900 and np.allclose(exact[np.argsort(ids)], np.stack(list(table.values())), atol=1e-3)
    # Searches find the exact neighbours (the planned recall holds for the index as served).
    keys = sorted(table)
    queries = np.stack([table[k] for k in keys[::30]])
    _, found = index.search(queries, 10)
    names = index.lookup(sorted({int(i) for i in found.ravel() if i >= 0}))
    truth = np.argsort(-(queries @ np.stack([table[k] for k in keys]).T), axis=1)[:, :10]
    hits = [len({names[int(i)][0] for i in row if i >= 0} & {keys[j] for j in t}) / 10 for row, t in zip(found, truth)]
    assert np.mean(hits) >= 0.9
    # A few deletions: no re-planning (same generation count + 1), the plan stays.
    for path in sorted(media.glob("*.png"))[:5]:
        path.unlink()
    index.update(media, encode, {"fingerprint": "x"}, progress=False)
    assert len(index) == 895 and index.info["tuned_count"] == 900 and index.info["kind"] == "ivfsq8"
    # Halved: planned again (still too many to scan at this test's limit of 300).
    for path in sorted(media.glob("*.png"))[:495]:
        path.unlink()
    index.update(media, encode, {"fingerprint": "x"}, progress=False)
    assert len(index) == 400 and index.info["tuned_count"] == 400 and index.info["kind"] == "ivfsq8"
    # Below the limit: the rule now says flat, so it is planned again at once.
    for path in sorted(media.glob("*.png"))[:150]:
        path.unlink()
    index.update(media, encode, {"fingerprint": "x"}, progress=False)
    assert len(index) == 250 and index.info["kind"] == "flat" and index.info["tuned_count"] == 250
    _, found = index.search(table[keys[-1]][None], 1)
    assert index.lookup([int(found[0, 0])])[int(found[0, 0])][0] == keys[-1]


def test_a_small_auto_index_is_flat_in_one_generation(tmp_path):
    media = tmp_path / "media"
    _media(media, 20)
    vectors = dict(zip([f"{i:04d}.png" for i in range(20)], uniform(20, 8)))
    index = GalleryIndex(tmp_path / "small")
    index.update(media, lambda items: (np.stack([vectors[i.id] for i in items]), []), {"fingerprint": "x"},
                 progress=False)  # fmt: skip
    assert index.info["kind"] == "flat" and index.info["auto"] and index.info["recall_at_10"] == 1.0
    assert index.current_name == "gen-000001"
    assert IndexPlan.from_info(index.info).describe().startswith("flat; recall@10 1.000")


def test_from_vectors_auto(tmp_path):
    vectors = clustered(3_000, 16)
    keys = [f"k{i}" for i in range(3_000)]
    index = GalleryIndex.from_vectors(tmp_path / "fv", keys, vectors, {"fingerprint": "x"}, kind="auto",
                                      max_memory=3_000 * 24 + 64 * 16 * 4 + 10)  # fmt: skip
    assert index.info["kind"] == "ivfsq8" and index.info["recall_at_10"] >= 0.95
    _, found = index.search(vectors[5:6], 1)
    assert int(found[0, 0]) == 5


@pytest.mark.parametrize("args, fragment", [(["--max-memory", "lots"], "--max-memory"),
                                            (["--target-recall", "1.5"], "--target-recall")])  # fmt: skip
def test_bad_plan_arguments_are_one_line(tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--run", str(tmp_path), "--media", str(tmp_path), "--out", str(tmp_path / "i"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_build_faiss_kinds_hold_every_vector():
    vectors = clustered(2_000, 16)
    for kind, extra in (("flat", {}), ("ivfsq8", {"nlist": 16, "nprobe": 16}),
                        ("ivfpq", {"nlist": 16, "nprobe": 16, "pq_m": 4})):  # fmt: skip
        index = build_faiss(IndexPlan(kind, **extra), vectors, np.arange(2_000))
        assert index.ntotal == 2_000


def test_reranking_reads_memory_mapped_vectors_not_sqlite(tmp_path):
    vectors = clustered(3_000, 16)
    keys = [f"k{i}" for i in range(3_000)]
    index = GalleryIndex.from_vectors(tmp_path / "pq", keys, vectors, {"fingerprint": "x"}, kind="ivfpq", nlist=16,
                                      pq_m=4, refine=20)  # fmt: skip
    gen = index.generation
    assert (gen / "exact.npy").is_file() and index.exact is not None
    queries = vectors[::300] + 0.01
    mapped = index.search(queries, 10)

    class NoVectorReads:  # the metadata may be asked for names, never for vectors
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            assert "vector" not in sql, sql
            return self.db.execute(sql, *args)

    index.db = NoVectorReads(index.db)
    np.testing.assert_array_equal(index.search(queries, 10)[1], mapped[1])
    index.db = index.db.db
    index.exact = None  # without the arrays: the same answers from SQLite
    stored = index.search(queries, 10)
    np.testing.assert_array_equal(stored[1], mapped[1])
    np.testing.assert_allclose(stored[0], mapped[0], rtol=1e-5)
    exact_top = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mapped[1], exact_top)]) >= 0.9
    flat = GalleryIndex.from_vectors(tmp_path / "flat", keys, vectors, {"fingerprint": "x"}, kind="flat")
    assert not (flat.generation / "exact.npy").exists() and flat.exact is None
