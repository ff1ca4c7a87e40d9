"""How a query embedding scores a gallery item: one vector each, or the best pair of tokens.

An embedding is (D,) per item -- a single vector -- or (K, D): K unit tokens (BLIP-2's 32 query
tokens). The score of query ``q`` and item ``g`` is the largest inner product over their tokens
(a single vector is one token), so one formula covers the peers' scorings:

- ``vector``: q . g (CLIP4Cir; CoVR-2 on WebVid-CoVR, FashionIQ and CIRCO, whose vectors are
  means of unit tokens);
- ``max_target_tokens``: max_k q . g_k (BLIP-2's own image-text ITC; SPRC);
- ``max_token_pairs``: max_{j,k} q_j . g_k (CoVR-2's evaluation on CIRR).

Methods produce the embeddings their scoring needs (``RetrievalMethod.use_scoring``); evaluation
and the index's re-ranking call ``similarity``.
"""

from __future__ import annotations

import torch

from composir.errors import ConfigError

SCORINGS = ("vector", "max_target_tokens", "max_token_pairs")


def check_scoring(value: str, where: str) -> str:
    if value not in SCORINGS:
        raise ConfigError(f"{where} must be one of {list(SCORINGS)}, got {value!r}")
    return value


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, 1, D); (N, K, D) unchanged."""
    return x[:, None] if x.dim() == 2 else x


def similarity(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """(N, M) scores: the best inner product over each pair's tokens (see the module text)."""
    if queries.dim() == 2 and gallery.dim() == 2:
        return queries @ gallery.T
    q, g = as_tokens(queries), as_tokens(gallery)
    (n, kq, d), (m, kg, _) = q.shape, g.shape
    # One matrix product over all tokens, then the maximum over each pair's kq x kg block.
    pairs = (q.reshape(n * kq, d) @ g.reshape(m * kg, d).T).view(n, kq, m, kg)
    return pairs.amax(dim=(1, 3))


def member_similarity(queries: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """(N, S) scores of query i against its own S items ``members[i]`` ((N, S, D) or (N, S, K, D))."""
    q = as_tokens(queries)  # (N, Kq, D)
    g = members if members.dim() == 4 else members[:, :, None]  # (N, S, Kg, D)
    return torch.einsum("nqd,nskd->nsqk", q, g).amax(dim=(2, 3))


def tokens_per_item(x: torch.Tensor) -> int:
    return 1 if x.dim() == 2 else x.shape[1]


def shortlist_vector(x: torch.Tensor) -> torch.Tensor:
    """One unit vector per item for an ANN index: a vector as it is, tokens (N, K, D) by their
    normalised mean -- q . mean_k(g_k) is the mean of the token scores, so the items whose best
    token scores high tend to rank high by it too (the index re-ranks a shortlist with the tokens)."""
    return x if x.dim() == 2 else torch.nn.functional.normalize(x.mean(1), dim=-1)
