"""Contrastive losses on a query x target similarity matrix.

Row i's positive is column ``labels[i]`` (the diagonal when not given): a matrix may have more
columns than rows, e.g. every rank's targets under DDP or a memory bank of extra negatives.
``exclude`` (same shape, bool) leaves entries out of a row entirely (a bank entry that is the
row's own positive). They are masked on the *logits*, after scaling, so no -inf ever meets the
temperature: ``-inf * scale`` has a NaN gradient with respect to a learned scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _labels(sim: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return torch.arange(sim.shape[0], device=sim.device) if labels is None else labels


def _masked(logits: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    return logits if exclude is None else logits.masked_fill(exclude, float("-inf"))


def info_nce(
    sim: torch.Tensor,
    scale: torch.Tensor | float,
    labels: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each query against all targets (columns); ``sim`` is cosine similarity."""
    return F.cross_entropy(_masked(sim * scale, exclude), _labels(sim, labels))


def hn_nce(
    sim: torch.Tensor,
    scale: torch.Tensor | float,
    alpha: float = 1.0,
    beta: float = 0.0,
    labels: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hard-negative NCE (Radenovic et al. 2023, arXiv 2301.02280), as CoVR uses it.

    ``-log(e^{s_ii} / (alpha * e^{s_ii} + sum_{j != i} w_ij e^{s_ij}))`` with logits ``s = scale * sim``
    and ``w_ij = (N - 1) * softmax_{j != i}(beta * s_ij)``: negatives that score high weigh more.
    alpha = 1, beta = 0 is InfoNCE.
    """
    logits = sim * scale
    labels = _labels(sim, labels)
    eye = torch.zeros_like(logits, dtype=torch.bool)
    eye[torch.arange(len(labels), device=logits.device), labels] = True
    left_out = eye if exclude is None else eye | exclude
    n_negatives = (~left_out).sum(1, keepdim=True).clamp_min(1)  # per row: the N - 1 negatives it has
    negatives = logits.masked_fill(left_out, float("-inf"))
    # log w_ij, computed in log space; the (N - 1) keeps the weights' mean at 1.
    log_w = torch.log_softmax((beta * logits).masked_fill(left_out, float("-inf")), dim=1) + torch.log(
        n_negatives.to(logits.dtype)
    )
    log_w = log_w.detach()  # the weights re-weight negatives; gradients flow through e^{s_ij} only
    positive = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    weighted_negatives = torch.logsumexp((negatives + log_w).masked_fill(left_out, float("-inf")), dim=1)
    denominator = torch.logaddexp(positive + torch.log(torch.tensor(alpha, device=logits.device)), weighted_negatives)
    return (denominator - positive).mean()


def covr_hn_nce(sim: torch.Tensor, scale: torch.Tensor | float, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """Hard-negative NCE as CoVR's own code computes it (``HardNegativeNCE`` called with the query
    features first and the targets second), the loss CoVR-2 trains with; ``sim`` is the square
    query x target cosine matrix of a batch.

    Where it differs from ``hn_nce``: both directions are computed and *summed* (query -> target
    over each row, target -> query over each column); the weights w stay in the autograd graph, so
    the gradient also flows through them; and each direction's weight for entry (i, j) divides
    e^{beta s_ij} by the exp-sum its code broadcasts against column j -- row j's sum for the
    query -> target direction (not row i's), column j's for the other. We follow the code.
    """
    logits = (sim * scale).float()
    n = logits.shape[0]
    if logits.shape != (n, n):
        raise ValueError("covr_hn_nce needs the square in-batch similarity matrix")
    e = torch.exp(beta * logits)
    own = torch.diagonal(e)
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    # (B, B) / (B,) broadcasts over the last dimension: entry (i, j) is divided by entry j of the sums.
    w_qt = ((n - 1) * e / (e.sum(dim=1) - own)).masked_fill(eye, alpha)
    w_tq = ((n - 1) * e / (e.sum(dim=0) - own)).masked_fill(eye, alpha)
    positive = torch.diagonal(logits)
    query_to_target = torch.logsumexp(logits + torch.log(w_qt), dim=1)  # log sum_j w_ij e^{s_ij}
    target_to_query = torch.logsumexp(logits + torch.log(w_tq), dim=0)
    return (query_to_target - positive).mean() + (target_to_query - positive).mean()
