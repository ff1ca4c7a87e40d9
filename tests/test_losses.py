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
