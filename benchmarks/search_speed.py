"""Search latency and throughput: exact (flat inner product) vs IVF-PQ, on 10k / 100k / 1M items.

Gallery vectors (dimension 256, BLIP-2's ITC width) are unit vectors drawn around 2,000 random
centres, and queries are noisy copies of gallery items, so that neighbourhoods exist as in real
embeddings (`--data uniform` draws structureless vectors: the worst case for any quantizer). One
query's latency includes encoding it with the tiny model (reference image + text) and searching.
IVF-PQ's recall@10 is measured against the exact top 10 of the same queries. The third row of
each size is the same IVF-PQ served by `GalleryIndex` with re-ranking (`--refine` x 10
candidates rescored by exact float16 vectors read from its SQLite metadata; memory column: RAM,
the vectors add 2·d bytes per item on disk).

    .venv/bin/python benchmarks/search_speed.py [--sizes 10000 100000 1000000]
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


def build(kind: str, gallery: np.ndarray) -> tuple[faiss.Index, float]:
    d = gallery.shape[1]
    start = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(len(gallery)))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, 32, 8, faiss.METRIC_INNER_PRODUCT)
        sample = gallery[np.random.default_rng(0).choice(len(gallery), min(len(gallery), 64 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = max(16, nlist // 16)
    index.add(gallery)
    return index, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument("--refine", type=int, default=10)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="composir-search-speed-")
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
    print(f"{faiss.omp_get_max_threads()} FAISS threads; encoding one query (tiny model): {encode_ms:.1f} ms")
    print(
        "| items | index | build (s) | memory (MiB) | p50 one query (ms) | p99 one query (ms) "
        "| batch-64 throughput (queries/s) | recall@10 vs exact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        gallery, queries = make_data(n, args.dim, args.queries, args.data, rng)
        exact_ids = None
        ivf, build_s = None, 0.0
        for kind in ("flat", "ivfpq", f"ivfpq + refine {args.refine}"):
            if kind.startswith("ivfpq + refine"):
                # The same IVF-PQ, served by GalleryIndex: refine*k candidates re-ranked by the exact
                # float16 vectors it keeps on disk (SQLite), not in memory.
                start = time.perf_counter()
                keys = [f"{i:07d}.png" for i in range(n)]
                index = GalleryIndex.from_vectors(
                    Path(tmp) / f"index-{n}", keys, gallery, {}, "ivfpq", refine=args.refine, faiss_index=ivf
                )
                build_s += time.perf_counter() - start
            else:
                index, build_s = build(kind, gallery)
                if kind == "ivfpq":
                    ivf = index
            mem = (n * args.dim * 4 if kind == "flat" else n * (32 + 8)) / 2**20
            lat = []
            for q in queries:
                t0 = time.perf_counter()
                index.search(q[None], 10)
                lat.append((time.perf_counter() - t0) * 1000 + encode_ms)
            lat.sort()
            t0 = time.perf_counter()
            for s in range(0, len(queries), 64):
                index.search(queries[s : s + 64], 10)
            qps = len(queries) / (time.perf_counter() - t0)
            _, ids = index.search(queries, 10)
            if kind == "flat":
                exact_ids = ids
                recall = "1.000 (exact)"
            else:
                recall = f"{np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)]):.3f}"
            print(
                f"| {n:,} | {kind} | {build_s:.1f} | {mem:.0f} | {lat[len(lat) // 2]:.2f} | "
                f"{lat[int(len(lat) * 0.99)]:.2f} | {qps:.0f} | {recall} |",
                flush=True,
            )
            if kind == "flat":
                del index
        del ivf, index
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
