"""Chunked top-k equals one big stable sort, ties and exclusions included."""

from __future__ import annotations

import pytest
import torch

from composir.eval.ranking import chunked_topk, rank_members


def _reference(q, g, k, exclude):
    sims = (q @ g.T).float()
    for i, e in enumerate(exclude.tolist()):
        if e >= 0:
            sims[i, e] = float("-inf")
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(sims, 1, order), order


@pytest.mark.parametrize(("query_chunk", "gallery_chunk"), [(7, 13), (64, 1000), (1, 3)])
def test_matches_full_sort_with_ties(query_chunk, gallery_chunk):
    gen = torch.Generator().manual_seed(0)
    # Quantised features make many exact ties in the scores.
    q = torch.randint(-2, 3, (40, 8), generator=gen).float()
    g = torch.randint(-2, 3, (101, 8), generator=gen).float()
    exclude = torch.randint(-1, 101, (40,), generator=gen)
    s_ref, i_ref = _reference(q, g, 10, exclude)
    s, i = chunked_topk(q, g, 10, exclude, query_chunk=query_chunk, gallery_chunk=gallery_chunk)
    assert torch.equal(i, i_ref)
    assert torch.equal(s, s_ref)
    for row, e in enumerate(exclude.tolist()):
        assert e not in i[row].tolist()


def test_all_tied_scores_rank_by_gallery_order():
    q = torch.ones(2, 4)
    g = torch.ones(10, 4)
    _, idx = chunked_topk(q, g, 4, torch.tensor([0, -1]), gallery_chunk=3)
    assert idx.tolist() == [[1, 2, 3, 4], [0, 1, 2, 3]]


def test_k_larger_than_gallery():
    _, idx = chunked_topk(torch.eye(3), torch.eye(3), 50)
    assert idx.shape == (3, 3)
    assert idx[:, 0].tolist() == [0, 1, 2]


def test_rank_members_orders_and_keeps_missing_last():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    q = torch.tensor([[0.0, 1.0]])
    out = rank_members(q, g, torch.tensor([[0, 1, 2, -1]]))
    assert out.tolist() == [[1, 2, 0, -1]]


def test_subset_ranking_is_the_global_ranking_restricted_to_members_under_ties():
    """gallery [A, B, C, R] all scored alike, reference R, members listed [B, A, R], target A:
    the global ranking (ties by gallery order) is A, B, C, so the subset ranking starts with A."""
    from composir.eval import metrics as M

    gallery = torch.ones(4, 2) / 2**0.5
    query = torch.ones(1, 2) / 2**0.5
    ids = ["A", "B", "C", "R"]
    members = torch.tensor([[1, 0, 3, -1]])
    order = rank_members(query, gallery, members)
    subset_ranked = [[ids[j] for j in order[0].tolist() if j >= 0]]
    _, top = chunked_topk(query, gallery, 4, exclude=torch.tensor([3]))
    global_ranked = [ids[j] for j in top[0].tolist()]
    assert [i for i in global_ranked if i in {"A", "B"}] == subset_ranked[0][:2] == ["A", "B"]
    assert M.recall_subset_at_k(subset_ranked, [["A"]], [["B", "A", "R"]], ["R"], 1) == 100.0


def test_subset_ranking_still_orders_by_score():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    query = torch.tensor([[0.0, 1.0]])
    order = rank_members(query, gallery, torch.tensor([[0, 2, 1, -1]]))
    assert order[0].tolist() == [1, 2, 0, -1]


@pytest.mark.parametrize(("kq", "kg"), [(1, 5), (3, 5)])
def test_token_embeddings_rank_by_their_best_pair(kq, kg):
    """(N, K, D) embeddings: chunked ranking and member ranking both score max over token pairs."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(30, kq, 6, generator=gen).squeeze(1)
    g = torch.randn(57, kg, 6, generator=gen)
    exclude = torch.randint(-1, 57, (30,), generator=gen)
    qt = q if q.dim() == 3 else q[:, None]
    brute = torch.einsum("nqd,mkd->nmqk", qt, g).amax(dim=(2, 3))
    for i, e in enumerate(exclude.tolist()):
        if e >= 0:
            brute[i, e] = float("-inf")
    want = torch.sort(brute, dim=1, descending=True, stable=True).indices[:, :10]
    _, got = chunked_topk(q, g, 10, exclude, query_chunk=8, gallery_chunk=40)
    assert torch.equal(got, want)
    members = torch.randint(0, 57, (30, 6), generator=gen)
    member_scores = torch.gather(torch.einsum("nqd,mkd->nmqk", qt, g).amax(dim=(2, 3)), 1, members)
    ranked = rank_members(q, g, members)
    top = torch.einsum("nqd,nkd->nqk", qt, g[ranked[:, 0]]).amax(dim=(1, 2))
    torch.testing.assert_close(top, member_scores.amax(dim=1))
