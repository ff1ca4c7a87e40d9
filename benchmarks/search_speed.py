"""Search at scale: exact flat search beside the index ``--kind auto`` builds, 10k / 100k / 1M items.

Gallery vectors (dimension 256, BLIP-2's ITC width): ``clustered`` -- unit vectors around 2,000
random centres, queries noisy copies of gallery items, so that neighbourhoods exist as in real
embeddings; ``uniform`` -- structureless vectors, the worst case for any quantizer. Per size and
data: flat (one FAISS thread) and what ``GalleryIndex.from_vectors(kind="auto")`` chose within
``--max-memory`` (its plan: kind, nlist, nprobe, refine, the recall@10 it measured on the
collection's own vectors, threads), build time (planning and tuning included), resident memory
(codes, ids, centroids: computed), single-query search latency (encoding excluded: the tiny
model's cost is printed once), batch-64 throughput, and recall@10 against the exact top 10 of
the benchmark's own queries. Run with ``OMP_WAIT_POLICY=PASSIVE``.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/search_speed.py [--sizes ...] [--max-memory 300MiB]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from composir.encoders import build_encoder
from composir.index import GalleryIndex
from composir.index.plan import IndexPlan, parse_bytes
from composir.methods import build_method


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int, d: int, queries: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kind == "uniform":
        return unit(rng.standard_normal((n, d), dtype=np.float32)), unit(rng.standard_normal((queries, d)))
    centres = rng.standard_normal((2000, d), dtype=np.float32)
    gallery = unit(centres[rng.integers(0, 2000, n)] + 0.6 * rng.standard_normal((n, d), dtype=np.float32))
    picks = gallery[rng.integers(0, n, queries)]
    return gallery, unit(picks + 0.03 * rng.standard_normal((queries, d), dtype=np.float32))


def timed_searches(index, queries: np.ndarray) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) of one query at a time, and batch-64 throughput in queries/s: search only."""
    index.search(queries[:1], 10)  # warm
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None], 10)
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    t0 = time.perf_counter()
    for s in range(0, len(queries), 64):
        index.search(queries[s : s + 64], 10)
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(queries) / (time.perf_counter() - t0)


def auto_rows(n: int, dim: int, data: str, queries: int, max_memory: int, tmp: Path, rng, milvus: bool) -> list[str]:
    """Exact flat search (one FAISS thread) beside what ``--kind auto`` builds and serves."""
    gallery, qs = make_data(n, dim, queries, data, rng)
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(gallery)
    flat_build = time.perf_counter() - start
    p50, p99, qps = timed_searches(flat, qs)
    _, exact = flat.search(qs, 10)
    exact_ids = exact
    rows = [f"| {n:,} | {data} | flat (1 thread) | {flat_build:.1f} | {n * dim * 4 / 2**20:.0f} | {p50:.2f} | "
            f"{p99:.2f} | {qps:.0f} | 1.000 |"]  # fmt: skip
    del flat
    start = time.perf_counter()
    keys = [f"{i:07d}.png" for i in range(n)]
    index = GalleryIndex.from_vectors(tmp / f"auto-{data}-{n}", keys, gallery, {}, kind="auto", max_memory=max_memory)
    build_s = time.perf_counter() - start
    plan = IndexPlan.from_info(index.info)
    p50, p99, qps = timed_searches(index, qs)
    _, ids = index.search(qs, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    rows.append(
        f"| {n:,} | {data} | auto: {plan.describe()} | {build_s:.1f} | {plan.memory_bytes / 2**20:.0f} | "
        f"{p50:.2f} | {p99:.2f} | {qps:.0f} | {recall:.3f} |"
    )
    shutil.rmtree(tmp / f"auto-{data}-{n}", ignore_errors=True)
    if milvus:
        rows.append(milvus_row(n, data, gallery, qs, exact_ids, tmp))
    return rows


def milvus_row(n: int, data: str, gallery: np.ndarray, qs: np.ndarray, exact: np.ndarray, tmp: Path) -> str:
    """The same vectors in Milvus Lite (FLAT, the engine in-process) through ``MilvusIndex``."""
    from composir.index import MilvusIndex

    index = MilvusIndex(tmp / f"milvus-{data}-{n}", uri=str(tmp / f"milvus-{data}-{n}.db"))
    start = time.perf_counter()
    index._ensure_collection(gallery.shape[1], {})
    for s in range(0, n, 10_000):
        rows = [{"id": i, "key": f"{i:07d}.png", "path": f"{i:07d}.png", "media_type": "image", "size": 0,
                 "mtime": 0.0, "vector": gallery[i]} for i in range(s, min(n, s + 10_000))]  # fmt: skip
        index.client.insert(index.collection, rows)
    index.client.flush(index.collection)
    index.info["dim"] = gallery.shape[1]
    index.search(qs[:1], 10)  # loads the collection
    build_s = time.perf_counter() - start
    p50, p99, qps = timed_searches(index, qs)
    _, ids = index.search(qs, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    index.client.close()
    return (f"| {n:,} | {data} | Milvus Lite (FLAT, in-process) | {build_s:.1f} | – | {p50:.2f} | {p99:.2f} | "
            f"{qps:.0f} | {recall:.3f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", nargs="+", choices=["clustered", "uniform"], default=["clustered", "uniform"])
    parser.add_argument("--max-memory", default="300MiB", help="the auto index's memory budget")
    parser.add_argument("--milvus-max", type=int, default=100_000, help="Milvus Lite rows up to this size (0: none)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="composir-search-speed-"))
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    method = build_method("combiner", build_encoder("tiny")).eval()
    frames = torch.randn(1, 1, 3, 64, 64)
    tokens = method.encoder.tokenize(["make the background pink"])
    with torch.no_grad():
        for _ in range(3):
            method.encode_query(frames, tokens)
        t0 = time.perf_counter()
        for _ in range(20):
            method.encode_query(frames, tokens)
    encode_ms = (time.perf_counter() - t0) / 20 * 1000
    print(f"encoding one query (tiny model), not included below: {encode_ms:.1f} ms; auto budget {args.max_memory}")
    print(
        "| items | data | index | build (s) | memory (MiB) | p50 one query (ms) | p99 one query (ms) "
        "| batch-64 throughput (queries/s) | recall@10 vs exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for data in args.data:
            milvus = n <= args.milvus_max
            for row in auto_rows(n, args.dim, data, args.queries, parse_bytes(args.max_memory), tmp, rng, milvus):
                print(row, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
