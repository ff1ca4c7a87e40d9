"""Encode a benchmark's gallery once, rank every query in chunks, score with the benchmark's protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from composir.data.media_dataset import MediaDataset, collate_media, frame_score_matrix
from composir.data.records import Benchmark, GalleryItem, Protocol, Triplet
from composir.eval import metrics as M
from composir.eval.ranking import chunked_topk, rank_members
from composir.utils.progress import progress_bar
from composir.utils.workers import loader_workers

log = logging.getLogger(__name__)


def _reference_batches(query_counts: list[int], max_queries: int) -> list[list[int]]:
    """Consecutive references grouped so a batch's queries number at most ``max_queries`` (one
    reference with more queries than that is a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = 0
    for r, n in enumerate(query_counts):
        if current and size + n > max_queries:
            batches.append(current)
            current, size = [], 0
        current.append(r)
        size += n
    if current:
        batches.append(current)
    return batches


@dataclass
class EncodedMedia:
    features: torch.Tensor  # (n_ok, D), rows in ``ok_index`` order
    ok_index: list[int]  # indices into the item list
    failures: list[tuple[str, str]]  # (id, message)


@torch.no_grad()
def encode_media(
    items: Sequence[GalleryItem],
    encode: Callable[..., torch.Tensor],  # (frames) or (frames, caption tokens) -> features
    preprocess: Callable,
    num_frames: int = 8,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "encoding",
    cache=None,
    progress: bool = True,
    tokenize: Callable | None = None,
    frame_scores: bool = False,
) -> EncodedMedia:
    """``encode(frames)`` of every readable item, or ``encode(frames, tokenize(captions))`` when
    ``tokenize`` is given (a method whose targets read their caption; a missing one is ""); with
    ``frame_scores``, also ``frame_scores=`` the items' per-frame scores (``frame_score_matrix``)."""
    loader = DataLoader(
        MediaDataset(items, preprocess, num_frames, cache),
        batch_size=batch_size,
        **loader_workers(num_workers),
        collate_fn=collate_media,
    )
    feats, ok, failures = [], [], []  # type: list[torch.Tensor], list[int], list[tuple[str, str]]
    mismatched = 0
    for index, frames, bad in progress_bar(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        failures.extend((items[i].id, err) for i, err in bad)
        if frames is None:
            continue
        args: list[Any] = [frames.to(device)]
        if tokenize is not None:
            args.append(tokenize([items[i].caption or "" for i in index.tolist()]).to(device))
        kwargs: dict[str, Any] = {}
        if frame_scores:
            per_frame = frames.shape[1] if frames.dim() == 5 else 1
            rows, bad_rows = frame_score_matrix([items[i].extra.get("frame_scores") for i in index.tolist()], per_frame)
            kwargs["frame_scores"], mismatched = rows.to(device), mismatched + bad_rows
        feats.append(encode(*args, **kwargs).float().cpu())
        ok.extend(index.tolist())
    for item_id, err in failures:
        log.warning("skipped %s: %s", item_id, err)
    if mismatched:
        log.warning(
            "%d item(s) have per-frame scores of another length than the %d frames read: weighted equally",
            mismatched,
            num_frames,
        )
    dim = feats[0].shape[1] if feats else 0
    return EncodedMedia(torch.cat(feats) if feats else torch.empty(0, dim), ok, failures)


@dataclass
class EvalResult:
    benchmark: str
    split: str
    metrics: dict[str, float]
    query_ids: list[str]
    ranked_ids: list[list[str]]
    subset_ranked_ids: list[list[str]] | None
    failures: list[tuple[str, str]] = field(default_factory=list)
    per_family: dict[str, dict[str, float]] = field(default_factory=dict)
    scoring: str = "vector"  # how embeddings were compared (methods.scoring)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "benchmark": self.benchmark,
            "split": self.split,
            "metrics": self.metrics,
            "n_queries": len(self.query_ids),
            "scoring": self.scoring,
        }
        if self.per_family:
            out["per_family"] = self.per_family
        if self.failures:
            out["skipped_media"] = [{"id": i, "error": e} for i, e in self.failures]
        return out


def score(
    protocol: Protocol,
    queries: Sequence[Triplet],
    ranked: list[list[str]],
    subset_ranked: list[list[str]] | None,
) -> dict[str, float]:
    """The metrics ``protocol`` reports, from rankings (reference already removed where required)."""
    return M.protocol_metrics(
        protocol,
        ranked,
        [q.target_ids for q in queries],
        subset_ranked,
        [q.subset_ids or [] for q in queries],
        [q.reference_id for q in queries],
        [q.extra["target_img_id"] for q in queries] if protocol.recall_on_first_target else None,
    )


@torch.no_grad()
def evaluate(
    method,
    bench: Benchmark,
    *,
    k: int = 50,
    batch_size: int = 64,
    num_frames: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    query_chunk: int = 1024,
    gallery_chunk: int = 65536,
    cache=None,
    progress: bool = True,
) -> EvalResult:
    """Rank the gallery for every query of ``bench`` with ``method`` and score it."""
    method.eval()
    scoring = method.use_scoring(bench.name)
    enc = method.encoder
    common = dict(
        preprocess=enc.preprocess,
        num_frames=num_frames,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        cache=cache,
        progress=progress,
    )
    caption_tokens = enc.tokenize if method.target_text else None
    gallery = encode_media(
        bench.gallery,
        method.encode_target,
        desc="gallery",
        tokenize=caption_tokens,
        frame_scores=method.target_frame_scores,
        **common,
    )
    gallery_ids = [bench.gallery[i].id for i in gallery.ok_index]
    position = {gid: row for row, gid in enumerate(gallery_ids)}

    # Queries: each distinct reference is decoded (and, where the method allows, encoded) once,
    # then fused with the texts of all its queries; a batch holds at most ``batch_size`` queries.
    tokens = enc.tokenize([q.text for q in bench.queries])
    query_feats: torch.Tensor | None = None  # allocated when the first batch shows the embedding's shape
    failures = list(gallery.failures)
    queries_of: dict[str, list[int]] = {}
    for i, q in enumerate(bench.queries):
        queries_of.setdefault(q.reference_id, []).append(i)
    references = list(queries_of)
    dataset = MediaDataset(
        [bench.media_item(r) for r in references], enc.preprocess, num_frames, cache, method.reference_sampling
    )
    loader = DataLoader(
        dataset,
        batch_sampler=_reference_batches([len(queries_of[r]) for r in references], batch_size),
        **loader_workers(num_workers),
        collate_fn=collate_media,
    )
    ok_query = torch.zeros(len(bench.queries), dtype=torch.bool)
    for index, frames, bad in progress_bar(loader, desc="queries", unit="batch", leave=False, disable=not progress):
        for r, err in bad:
            for i in queries_of[references[r]]:
                failures.append((f"query {bench.queries[i].query_id}", err))
        if frames is None:
            continue
        rows = [(i, j) for j, r in enumerate(index.tolist()) for i in queries_of[references[r]]]
        query_index = torch.tensor([i for i, _ in rows])
        reference_index = torch.tensor([j for _, j in rows], device=device)
        feats = method.encode_queries(frames.to(device), tokens[query_index].to(device), reference_index)
        if query_feats is None:
            query_feats = torch.zeros(len(bench.queries), *feats.shape[1:])
        query_feats[query_index] = feats.float().cpu()
        ok_query[query_index] = True

    exclude = torch.full((len(bench.queries),), -1, dtype=torch.long)
    if bench.exclude_reference:
        for i, q in enumerate(bench.queries):
            exclude[i] = position.get(q.reference_id, -1)
    ranked: list[list[str]] = [[] for _ in bench.queries]
    if query_feats is None:  # no reference could be read: every query ranks nothing
        query_feats = torch.zeros(len(bench.queries), *gallery.features.shape[1:])
    if len(gallery_ids):
        _, index = chunked_topk(query_feats, gallery.features, k, exclude, query_chunk, gallery_chunk)
        for i in range(len(bench.queries)):
            if ok_query[i]:  # a query whose reference could not be read ranks nothing: a miss
                ranked[i] = [gallery_ids[j] for j in index[i].tolist()]
    subset_ranked = None
    if any(q.subset_ids for q in bench.queries):
        width = max(len(q.subset_ids or []) for q in bench.queries)
        members = torch.tensor(
            [
                [position.get(m, -1) for m in (q.subset_ids or [])] + [-1] * (width - len(q.subset_ids or []))
                for q in bench.queries
            ]
        )
        order = rank_members(query_feats, gallery.features, members) if len(gallery_ids) else members
        subset_ranked = [
            [gallery_ids[j] for j in row if j >= 0] if ok_query[i] else [] for i, row in enumerate(order.tolist())
        ]
    metrics: dict[str, float] = {}
    per_family: dict[str, dict[str, float]] = {}
    if bench.has_targets and bench.queries:
        metrics = score(bench.protocol, bench.queries, ranked, subset_ranked)
        families = sorted({q.extra.get("family") for q in bench.queries if q.extra.get("family")})
        for fam in families:
            keep = [i for i, q in enumerate(bench.queries) if q.extra.get("family") == fam]
            per_family[fam] = score(
                bench.protocol,
                [bench.queries[i] for i in keep],
                [ranked[i] for i in keep],
                [subset_ranked[i] for i in keep] if subset_ranked else None,
            )
    return EvalResult(
        bench.name,
        bench.split,
        metrics,
        [q.query_id for q in bench.queries],
        ranked,
        subset_ranked,
        failures,
        per_family,
        scoring,
    )
