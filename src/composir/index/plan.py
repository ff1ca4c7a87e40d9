"""Which FAISS index a gallery gets, and its search parameters, chosen from the collection itself.

``plan_index`` starts from a written rule and then *measures*: it samples the collection's own
vectors as queries, finds their exact top 10 (flat inner product), and raises ``nprobe`` (and,
for IVF-PQ, the re-ranking depth ``refine``) until recall@10 reaches ``target_recall``.

The rule (docs/benchmarks.md, "Search at scale", measured at 1M x 256 on 2 cores):

- **flat** while the vectors fit the memory budget (4·d bytes each) and a scan meets the latency
  target: about 300k items at 256-d on one thread (``flat_items``, scaled by 256/d);
- else **IVF-SQ8** (d + 8 bytes each: 8-bit codes and the id) if that fits the budget;
- else **IVF-PQ** (``pq_m`` + 8 bytes each) with exact re-ranking of ``refine`` x k candidates
  (refine >= 20: at refine 10 recall stays near 0.86 whatever nprobe is).

``nlist`` is about 4·sqrt(N) (a power of two, at least 39 training points per list). ``nprobe``
is always measured, never a fixed fraction of nlist. When the target needs more than a quarter
of the lists, the vectors have no cluster structure an IVF can use: the plan falls back to flat
if flat fits the budget, else keeps the IVF and reports the recall it reached. Single-query
latency is measured with 1 and 2 FAISS threads, and the faster is kept (``threads``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from composir.errors import ComposirError

KINDS = ("flat", "ivfsq8", "ivfpq")  # what a plan may choose (``auto`` is the planner itself)
# info.json keys a plan writes (``IndexPlan.info``), kept when an update adds or removes items.
PLAN_KEYS = ("nlist", "pq_m", "nprobe", "recall_at_10", "plan_query_ms", "threads", "plan_memory_bytes",
             "plan_reason", "tuned_count")  # fmt: skip
FLAT_ITEMS_AT_256 = 300_000  # a one-thread flat scan answers in about 15 ms at 256-d here
REFINES = (20, 40, 80)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}  # fmt: skip


def parse_bytes(text: str) -> int:
    """``"300MiB"``, ``"2 GB"``, ``"1500000"`` -> bytes; a clear error otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ComposirError(f"--max-memory: {text!r} is not a size (e.g. 300MiB, 2GiB, 1500000)")
    return int(float(match.group(1)) * _UNITS[unit])


def default_memory_budget() -> int:
    """A quarter of this machine's physical memory."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 4 * 1024**3


@dataclass
class IndexPlan:
    kind: str
    nlist: int = 0
    pq_m: int = 0
    nprobe: int = 0
    refine: int = 0
    recall_at_10: float | None = None  # measured against exact search on the collection's own vectors
    query_ms: float | None = None  # median single-query search time at ``threads``
    threads: int = 1
    memory_bytes: int = 0  # resident: codes, ids and coarse centroids
    reason: str = ""

    def info(self) -> dict:
        return {_info_key(k): v for k, v in asdict(self).items()}

    @classmethod
    def from_info(cls, info: dict) -> IndexPlan | None:
        """The plan recorded in an index's info.json (None for an index that was not planned)."""
        if "plan_reason" not in info:
            return None
        fields = {k: info.get(_info_key(k)) for k in asdict(cls("flat"))}
        return cls(**{k: v for k, v in fields.items() if v is not None})

    def describe(self) -> str:
        parts = [self.kind]
        if self.kind != "flat":
            parts.append(f"nlist {self.nlist}, nprobe {self.nprobe}")
        if self.kind == "ivfpq":
            parts.append(f"pq_m {self.pq_m}, refine {self.refine}")
        recall = "not measured" if self.recall_at_10 is None else f"{self.recall_at_10:.3f}"
        speed = "" if self.query_ms is None else f", {self.query_ms:.2f} ms/query on {self.threads} thread(s)"
        return (
            f"{', '.join(parts)}; recall@10 {recall}{speed}; {self.memory_bytes / 2**20:.0f} MiB in memory "
            f"({self.reason})"
        )


def _info_key(field: str) -> str:
    return f"plan_{field}" if field in ("reason", "memory_bytes", "query_ms") else field


def resident_bytes(kind: str, n: int, dim: int, nlist: int = 0, pq_m: int = 0) -> int:
    per_item = {"flat": 4 * dim + 8, "ivfsq8": dim + 8, "ivfpq": pq_m + 8}[kind]
    return n * per_item + nlist * dim * 4


def choose_nlist(n: int) -> int:
    """About 4·sqrt(n), a power of two, with at least 39 training points per list (FAISS's minimum)."""
    if n < 39 * 2:
        return 1
    wanted = 2 ** round(math.log2(4 * math.sqrt(n)))
    return int(max(1, min(wanted, 65536, 2 ** int(math.log2(n // 39)))))


def choose_pq_m(dim: int, budget_per_item: float) -> int:
    """The most bytes per vector (a divisor of ``dim``, at most dim/4) that fits the budget."""
    options = [m for m in (64, 48, 32, 24, 16, 12, 8, 4) if dim % m == 0 and m <= max(4, dim // 4)]
    fitting = [m for m in options if m + 8 <= budget_per_item]
    return fitting[0] if fitting else options[-1]


def first_choice(n: int, dim: int, max_memory: int, flat_items: int | None = None) -> IndexPlan:
    """The written rule's choice, before any measurement."""
    flat_items = flat_items if flat_items is not None else FLAT_ITEMS_AT_256 * 256 // dim
    flat_bytes = resident_bytes("flat", n, dim)
    if n <= flat_items and flat_bytes <= max_memory:
        return IndexPlan("flat", memory_bytes=flat_bytes, reason=f"{n} items: an exact scan is fast enough")
    nlist = choose_nlist(n)
    sq8 = resident_bytes("ivfsq8", n, dim, nlist)
    why = "too many items for an exact scan" if flat_bytes <= max_memory else "flat vectors exceed the memory budget"
    if sq8 <= max_memory:
        return IndexPlan("ivfsq8", nlist=nlist, memory_bytes=sq8, reason=why)
    pq_m = choose_pq_m(dim, (max_memory - nlist * dim * 4) / max(n, 1))
    pq = resident_bytes("ivfpq", n, dim, nlist, pq_m)
    over = "" if pq <= max_memory else "; over the memory budget even so"
    return IndexPlan("ivfpq", nlist=nlist, pq_m=pq_m, refine=REFINES[0], memory_bytes=pq,
                     reason=f"{why}; 8-bit codes exceed the budget{over}")  # fmt: skip


def ivf_min_vectors(nlist: int) -> int:
    """Vectors an explicit IVF kind needs to train its quantizer."""
    return max(nlist * 4, 256)  # 256: one 8-bit product-quantizer codebook


def new_faiss(plan: IndexPlan, dim: int, train: np.ndarray | None = None):
    """An empty FAISS index of the plan's kind (inner product), its IVF quantizer trained on ``train``."""
    import faiss

    if plan.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if plan.kind not in ("ivfsq8", "ivfpq"):
        raise ComposirError(f"unknown index kind {plan.kind!r}; use one of {', '.join(KINDS)}")
    if plan.kind == "ivfpq" and dim % plan.pq_m:
        raise ComposirError(f"IVF-PQ: --pq-m {plan.pq_m} must divide the embedding dimension {dim}")
    quantizer = faiss.IndexFlatIP(dim)
    index: Any
    if plan.kind == "ivfsq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, plan.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, plan.nlist, plan.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    if train is not None:
        index.train(np.ascontiguousarray(train, dtype=np.float32))
    index.nprobe = max(1, plan.nprobe)
    return index  # IVF indexes take explicit ids themselves


def build_faiss(plan: IndexPlan, vectors: np.ndarray, ids: np.ndarray, seed: int = 0):
    """The planned index, trained on (a sample of) ``vectors`` and holding them under ``ids``."""
    sample = None
    if plan.kind != "flat":
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(len(vectors), min(len(vectors), 64 * plan.nlist), replace=False)]
    index = new_faiss(plan, vectors.shape[1], sample)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


def rerank(
    queries: np.ndarray,
    candidates: np.ndarray,
    approx: np.ndarray,
    k: int,
    vectors_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, candidates) of each row's best ``k`` candidates (-1: none) by exact inner product.
    ``vectors_of(candidates)`` -> (their exact vectors, which of them have one): a candidate
    without an exact vector keeps its approximate score."""
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, cand, approx_row) in enumerate(zip(queries, candidates, approx)):
        keep = cand >= 0
        cand, approx_row = cand[keep], approx_row[keep]
        mat, have = vectors_of(cand)
        rescored = np.where(have, mat @ query, approx_row).astype(np.float32)
        order = np.argsort(-rescored, kind="stable")[:k]
        out_scores[row, : len(order)] = rescored[order]
        out_ids[row, : len(order)] = cand[order]
    return out_scores, out_ids


def exact_neighbours(vectors: np.ndarray, picks: np.ndarray, k: int) -> np.ndarray:
    """Exact top ``k`` positions for ``vectors[picks]`` over ``vectors``, the query itself left out."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, found = flat.search(np.ascontiguousarray(vectors[picks], dtype=np.float32), k + 1)
    return _drop_self(found, picks, k)


def _drop_self(found: np.ndarray, picks: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(found), k), -1, dtype=np.int64)
    for row, (ids, me) in enumerate(zip(found, picks)):
        kept = ids[(ids != me) & (ids >= 0)][:k]
        out[row, : len(kept)] = kept
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / k for f, t in zip(found, truth)]))


def positions_of(found: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    """FAISS ids -> row positions in ``ids`` (-1 stays -1); identity when ``ids`` is None."""
    if ids is None:
        return found
    order = np.argsort(ids, kind="stable")
    at = np.clip(np.searchsorted(ids[order], found), 0, len(ids) - 1)
    return np.where(found >= 0, order[at], -1)


def measured_recall(
    index, plan: IndexPlan, vectors: np.ndarray, picks: np.ndarray, truth: np.ndarray, ids: np.ndarray | None = None
) -> float:
    """recall@k of ``index`` (holding ``vectors`` under ``ids``, default 0..n-1) at the plan's nprobe/refine."""
    k = truth.shape[1]
    if hasattr(index, "nprobe"):
        index.nprobe = plan.nprobe
    queries = np.ascontiguousarray(vectors[picks], dtype=np.float32)
    depth = (k + 1) * max(plan.refine, 1)
    _, found = index.search(queries, min(depth, index.ntotal))
    found = positions_of(found, ids)
    if plan.refine > 1:  # re-ranked by the exact vectors, as GalleryIndex does (float16 on disk)
        exact = vectors.astype(np.float16).astype(np.float32)
        _, found = rerank(queries, found, np.zeros(found.shape, np.float32), k + 1,
                          lambda cand: (exact[cand], np.ones(len(cand), dtype=bool)))  # fmt: skip
    return recall(_drop_self(found, picks, k), truth)


def tune(
    index,
    plan: IndexPlan,
    vectors: np.ndarray,
    target: float,
    sample: int = 500,
    ids: np.ndarray | None = None,
    seed: int = 0,
) -> IndexPlan:
    """Raise nprobe (and refine for IVF-PQ) until recall@10 on ``sample`` of the collection's own
    vectors reaches ``target``; the cheapest setting that does, else the best one tried."""
    n = len(vectors)
    rng = np.random.default_rng(seed)
    picks = rng.choice(n, min(sample, n), replace=False)
    truth = exact_neighbours(vectors, picks, min(10, n - 1))
    if plan.kind == "flat":
        return _with(plan, nprobe=0, recall_at_10=measured_recall(index, plan, vectors, picks, truth, ids))
    best = None
    nprobe = 1
    while nprobe <= plan.nlist:
        for refine in REFINES if plan.kind == "ivfpq" else (0,):
            trial = _with(plan, nprobe=nprobe, refine=refine)
            trial.recall_at_10 = measured_recall(index, trial, vectors, picks, truth, ids)
            if best is None or trial.recall_at_10 > best.recall_at_10 + 1e-9:
                best = trial
            if trial.recall_at_10 >= target:
                return trial
        nprobe *= 2
    return best


def _with(plan: IndexPlan, **changes) -> IndexPlan:
    return IndexPlan(**{**asdict(plan), **changes})


def time_queries(index, plan: IndexPlan, vectors: np.ndarray, queries: int = 50, seed: int = 1) -> IndexPlan:
    """Median single-query search time with 1 and 2 FAISS threads; keeps 2 only when clearly faster."""
    import faiss

    rng = np.random.default_rng(seed)
    picks = np.ascontiguousarray(vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)])
    if hasattr(index, "nprobe"):
        index.nprobe = max(1, plan.nprobe)
    depth = 10 * max(plan.refine, 1)
    before = faiss.omp_get_max_threads()
    times = {}
    try:
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            index.search(picks[:1], depth)  # warm
            spent = []
            for q in picks:
                start = time.perf_counter()
                index.search(q[None], depth)
                spent.append(time.perf_counter() - start)
            times[threads] = float(np.median(spent)) * 1000
    finally:
        faiss.omp_set_num_threads(before)
    threads = 2 if times[2] < 0.9 * times[1] else 1  # a second thread must clearly pay for itself
    return _with(plan, threads=threads, query_ms=times[threads])


def plan_index(
    vectors: np.ndarray,
    max_memory: int,
    target_recall: float = 0.95,
    flat_items: int | None = None,
    sample: int = 500,
    ids: np.ndarray | None = None,
) -> tuple[IndexPlan, object]:
    """Choose, build and tune an index over ``vectors`` under ``ids`` (default 0..n-1): (the plan,
    the FAISS index holding them)."""
    n, dim = vectors.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    plan = first_choice(n, dim, max_memory, flat_items)
    index = build_faiss(plan, vectors, ids)
    plan = tune(index, plan, vectors, target_recall, sample, ids)
    flat_bytes = resident_bytes("flat", n, dim)
    if plan.kind != "flat" and plan.nprobe > max(1, plan.nlist // 4) and flat_bytes <= max_memory:
        reason = f"no cluster structure an IVF can use (recall {plan.recall_at_10:.3f} needed nprobe {plan.nprobe} "
        reason += f"of {plan.nlist} lists): exact scan"
        plan = IndexPlan("flat", memory_bytes=flat_bytes, reason=reason)
        index = build_faiss(plan, vectors, ids)
        plan = tune(index, plan, vectors, target_recall, sample, ids)
    elif plan.kind != "flat" and plan.nprobe > max(1, plan.nlist // 4):
        plan.reason += f"; no cluster structure: it probes {plan.nprobe} of {plan.nlist} lists (flat does not fit)"
    if plan.recall_at_10 is not None and plan.recall_at_10 < target_recall:
        plan.reason += f"; recall target {target_recall} not reached (best {plan.recall_at_10:.3f})"
    return time_queries(index, plan, vectors), index
