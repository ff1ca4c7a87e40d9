"""Top-k ranking of queries against a gallery in chunks, never holding an N x M score matrix.

Ties are broken by gallery order (the lower index first), so rankings are deterministic and
match a stable full sort.
"""

from __future__ import annotations

import torch

from composir.methods.scoring import member_similarity, similarity, tokens_per_item
from composir.utils.progress import progress_bar


def _merge(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of each row by (score desc, index asc)."""
    by_index = torch.sort(indices, dim=1, stable=True).indices
    scores = torch.gather(scores, 1, by_index)
    indices = torch.gather(indices, 1, by_index)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(scores, 1, order), torch.gather(indices, 1, order)


def _chunk_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """topk of each row with ties at the k-th place resolved towards lower column indices."""
    values, idx = torch.topk(sims, k, dim=1)
    kth = values[:, -1:]
    # Rows where more columns tie with the k-th value than topk kept need a stable sort.
    ambiguous = (sims == kth).sum(1) > (values == kth).sum(1)
    if ambiguous.any():
        rows = ambiguous.nonzero().squeeze(1)
        order = torch.sort(sims[rows], dim=1, descending=True, stable=True).indices[:, :k]
        values[rows] = torch.gather(sims[rows], 1, order)
        idx[rows] = order
    return values, idx


@torch.no_grad()
def chunked_topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    query_chunk: int = 1024,
    gallery_chunk: int = 65536,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and gallery indices of the ``k`` best items per query (inner product).

    ``exclude[i]`` is a gallery index removed from query i's ranking (-1 for none): the
    reference image, as CIRR/CIRCO require. Peak extra memory is one query_chunk x gallery_chunk block.
    Embeddings of K tokens each (``methods.scoring``) score by their best token pair; the chunks
    shrink by the token counts, so the block stays that size.
    """
    n, m = queries.shape[0], gallery.shape[0]
    k = min(k, m)
    query_chunk = max(1, query_chunk // tokens_per_item(queries))
    gallery_chunk = max(1, gallery_chunk // tokens_per_item(gallery))
    out_scores = torch.empty(n, k, dtype=torch.float32)
    out_index = torch.empty(n, k, dtype=torch.long)
    for qs in progress_bar(range(0, n, query_chunk), desc="ranking", unit="chunk", disable=not progress):
        q = queries[qs : qs + query_chunk]
        ex = exclude[qs : qs + query_chunk].to(q.device) if exclude is not None else None
        best_s = torch.full((q.shape[0], 0), float("-inf"), device=q.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
        for gs in range(0, m, gallery_chunk):
            g = gallery[gs : gs + gallery_chunk].to(q.device)
            sims = similarity(q, g).float()
            if ex is not None:
                local = ex - gs
                rows = ((local >= 0) & (local < g.shape[0])).nonzero().squeeze(1)
                sims[rows, local[rows]] = float("-inf")
            s, i = _chunk_topk(sims, min(k, g.shape[0]))
            best_s, best_i = _merge(torch.cat([best_s, s], 1), torch.cat([best_i, i + gs], 1), k)
        out_scores[qs : qs + q.shape[0]] = best_s.cpu()
        out_index[qs : qs + q.shape[0]] = best_i.cpu()
    return out_scores, out_index


@torch.no_grad()
def rank_members(queries: torch.Tensor, gallery: torch.Tensor, member_index: torch.Tensor) -> torch.Tensor:
    """Order each query's members (``member_index`` N x S gallery indices, -1 = absent) by score.

    Ties are broken by gallery order, as in ``chunked_topk``: the subset ranking is the global
    ranking restricted to the members (the CIRR protocol), whatever order the members are listed in.
    """
    absent = member_index < 0
    # Members in gallery order first (absent ones last), then a stable sort by score.
    by_gallery = torch.sort(torch.where(absent, torch.iinfo(member_index.dtype).max, member_index), dim=1, stable=True)
    members = torch.gather(member_index, 1, by_gallery.indices)
    safe = members.clamp(min=0)
    scores = member_similarity(queries.float(), gallery[safe].float())
    scores[members < 0] = float("-inf")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return torch.gather(members, 1, order)
