"""Contrastive losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from composir.methods.losses import hn_nce, info_nce


def test_hnnce_alpha1_beta0_is_infonce():
    torch.manual_seed(0)
    sim = torch.randn(6, 6).tanh()
    assert hn_nce(sim, 10.0, 1.0, 0.0).item() == pytest.approx(info_nce(sim, 10.0).item(), rel=1e-5)


def test_hnnce_hand_case():
    sim = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.6], [0.3, 0.0, 0.7]])
    scale, alpha, beta = 2.0, 0.5, 1.0
    total = 0.0
    for i in range(3):
        s = [scale * v for v in sim[i].tolist()]
        neg = [j for j in range(3) if j != i]
        z = sum(math.exp(beta * s[j]) for j in neg)
        w = {j: 2 * math.exp(beta * s[j]) / z for j in neg}
        denom = alpha * math.exp(s[i]) + sum(w[j] * math.exp(s[j]) for j in neg)
        total += -math.log(math.exp(s[i]) / denom)
    assert hn_nce(sim, scale, alpha, beta).item() == pytest.approx(total / 3, rel=1e-5)


def test_hnnce_beta_weighs_hard_negatives_more():
    # Row 0 has one hard negative (0.85) and one easy one: beta > 0 raises the loss.
    sim = torch.tensor([[0.9, 0.85, -0.5], [0.0, 0.9, 0.0], [0.0, 0.0, 0.9]])
    assert hn_nce(sim, 10.0, 1.0, 1.0) > hn_nce(sim, 10.0, 1.0, 0.0)


@pytest.mark.parametrize("loss", ["infonce", "hnnce"])
def test_excluded_entries_are_left_out_exactly(loss):
    """An excluded column contributes nothing: the loss equals the loss without that column."""
    torch.manual_seed(0)
    sim = torch.rand(3, 6) * 2 - 1
    exclude = torch.zeros(3, 6, dtype=torch.bool)
    exclude[0, 4] = exclude[2, 5] = True
    fn = info_nce if loss == "infonce" else lambda s, sc, **kw: hn_nce(s, sc, 1.0, 0.5, **kw)
    full = fn(sim, 10.0, exclude=exclude)
    rows = [fn(sim[i : i + 1, [j for j in range(6) if not exclude[i, j]]], 10.0, labels=torch.tensor([i]))
            for i in range(3)]  # fmt: skip
    torch.testing.assert_close(full, torch.stack(rows).mean())


def _covr_by_loops(q: torch.Tensor, t: torch.Tensor, temp: float, alpha: float, beta: float) -> torch.Tensor:
    """CoVR's HardNegativeNCE (src/model/loss.py, called as loss(query, target, temp)) restated
    entry by entry: s = q t^T / temp; w_v2t[i, j] = (B-1) e^{beta s_ij} / (sum_k e^{beta s_jk} -
    e^{beta s_jj}) (its broadcast divides by row j's sum), w_t2v[i, j] = (B-1) e^{beta s_ij} /
    (sum_k e^{beta s_kj} - e^{beta s_jj}); diagonals alpha; the loss sums the two directions' means."""
    s = q @ t.T / temp
    n = len(s)
    e = torch.exp(beta * s)
    total_v2t, total_t2v = 0.0, 0.0
    for i in range(n):
        row = sum((alpha if j == i else (n - 1) * e[i, j] / (e[j].sum() - e[j, j])) * torch.exp(s[i, j])
                  for j in range(n))  # fmt: skip
        total_v2t = total_v2t + torch.log(row) - s[i, i]
    for j in range(n):
        col = sum((alpha if i == j else (n - 1) * e[i, j] / (e[:, j].sum() - e[j, j])) * torch.exp(s[i, j])
                  for i in range(n))  # fmt: skip
        total_t2v = total_t2v + torch.log(col) - s[j, j]
    return total_v2t / n + total_t2v / n


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_covr_hard_negative_nce_is_what_covr_computes_gradients_included(beta):
    from composir.methods.losses import covr_hn_nce

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1).requires_grad_(True)
    t = torch.nn.functional.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1).requires_grad_(True)
    ours = covr_hn_nce(q @ t.T, 1 / 0.07, alpha=1.0, beta=beta)
    theirs = _covr_by_loops(q, t, 0.07, 1.0, beta)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(ours, (q, t))
    g_theirs = torch.autograd.grad(theirs, (q, t))  # the weights' own gradient is part of it
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_covr_form_differs_from_the_one_direction_detached_form():
    from composir.methods.losses import covr_hn_nce, hn_nce

    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    assert abs(float(covr_hn_nce(q @ t.T, 14.0, beta=0.5)) - float(hn_nce(q @ t.T, 14.0, beta=0.5))) > 0.1
