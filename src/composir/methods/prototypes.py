"""Prototype libraries: K vectors that follow the data by a momentum update (IMAGINE's schemas).

Two rules, chosen by ``assignment``:

- ``batch_softmax`` -- the rule IMAGINE's text describes read literally, and composir's first
  implementation: each prototype takes a softmax *over the batch* of its similarities and moves
  towards that weighted mean of the *raw* features. Every prototype averages the same batch, so
  on features that share a strong common direction (LayerNorm outputs do) all K converge to the
  batch mean: the library collapses (docs/benchmarks.md, IMAGINE probe). Kept for the ablation.
- ``competitive_soft`` | ``hard`` | ``sinkhorn`` -- prototypes *compete* for samples: each
  sample's weight is spread over the prototypes (softmax over prototypes, arg-max, or a
  Sinkhorn-balanced assignment that gives every prototype an equal share of the batch), so
  different prototypes follow different subsets -- the paper's "prototypes attend to distinct
  sample subsets". The move is mass-weighted: step (1 - momentum) * min(1, mass_j), so a
  prototype that wins no sample stays put instead of drifting to the batch mean.

With ``centre`` (default), features are compared and averaged after subtracting a running mean
of the features and normalising: the shared direction that made every prototype alike is
removed, and prototypes live on the unit sphere of that centred space. ``init="kmeans++"``
places the prototypes on real features (k-means++ seeding over the first samples seen, in that
same space) instead of the query tokens, whose scale and direction have nothing to do with the
features (norm 0.27 vs 11.3 in the probe). The ``update`` mode: momentum | replace | static.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ASSIGNMENTS = ("competitive_soft", "hard", "sinkhorn", "batch_softmax")


class PrototypeLibrary(nn.Module):
    """K prototypes (buffers, saved in checkpoints) and the rule that moves them."""

    def __init__(
        self,
        init: torch.Tensor,
        momentum: float,
        temperature: float,
        update: str = "momentum",
        assignment: str = "competitive_soft",
        centre: bool = True,
        init_mode: str = "kmeans++",
        mean_momentum: float = 0.99,
    ):
        super().__init__()
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
        self.register_buffer("prototypes", init.detach().clone().float())
        self.register_buffer("mean", torch.zeros(init.shape[1]))
        # 0: no feature seen yet (the running mean starts from the first batch's mean);
        # 1: prototypes to be placed on these features (k-means++); 2: running.
        self.register_buffer("state", torch.tensor(0))
        self.momentum = momentum
        self.temperature = temperature
        self.mode = update
        self.assignment = assignment
        self.centre = centre
        self.init_mode = init_mode
        self.mean_momentum = mean_momentum
        if centre:
            with torch.no_grad():
                self.prototypes.copy_(F.normalize(self.prototypes, dim=-1))
        # Running sums of an epoch's update (``accumulate``): not saved, so a run resumed mid-epoch
        # makes that epoch's update from the batches after the resume.
        k, width = init.shape
        self.register_buffer("epoch_target", torch.zeros(k, width), persistent=False)
        self.register_buffer("epoch_mass", torch.zeros(k), persistent=False)
        self.register_buffer("epoch_max", torch.full((k,), float("-inf")), persistent=False)  # batch_softmax
        self.register_buffer("epoch_feature_sum", torch.zeros(width), persistent=False)
        self.register_buffer("epoch_count", torch.tensor(0), persistent=False)

    def space(self, features: torch.Tensor) -> torch.Tensor:
        """Features in the space the prototypes live in (centred and normalised, or as they are)."""
        if not self.centre:
            return features
        return F.normalize(features - self.mean.to(features.dtype), dim=-1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, K) of features to the prototypes, in the library's space."""
        return F.normalize(self.space(features), dim=-1) @ F.normalize(self.prototypes, dim=-1).T.to(features.dtype)

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """One update from these features (IMAGINE's per-step rule)."""
        if self.mode == "static" or features.shape[0] == 0:
            return
        g = features.detach().float()
        first = int(self.state) == 0
        if self.centre:
            batch_mean = g.mean(0)
            self.mean.copy_(
                batch_mean if first else self.mean_momentum * self.mean + (1 - self.mean_momentum) * batch_mean
            )
        if first:
            self.state.fill_(1 if self.init_mode == "kmeans++" else 2)
        x = self.space(g)
        if int(self.state) == 1:  # the first features decide where the prototypes start
            self.prototypes.copy_(kmeans_plus_plus(x, len(self.prototypes)))
            self.state.fill_(2)
            return
        weights = self.assign(x)  # (B, K)
        if self.assignment == "batch_softmax":
            self._move(weights.T @ x, torch.ones(len(self.prototypes), device=x.device))
        else:
            mass = weights.sum(0)  # (K,)
            self._move((weights.T @ x) / mass.clamp(min=1e-8).unsqueeze(1), mass)

    def _move(self, target: torch.Tensor, mass: torch.Tensor) -> None:
        """Each prototype a step (1 - momentum) * min(1, its mass) towards its target."""
        step = ((1 - self.momentum) * mass.clamp(max=1.0)).unsqueeze(1)
        if self.mode == "replace":
            step = (step > 0).float()
        moved = self.prototypes + step * (target - self.prototypes)
        self.prototypes.copy_(F.normalize(moved, dim=-1) if self.centre else moved)

    # ------------------------------------------------------------------------------ per epoch
    @torch.no_grad()
    def accumulate(self, features: torch.Tensor) -> None:
        """This batch's share of the epoch's single update (IMAGINE's per-epoch rule), kept as
        running sums -- the epoch's features are never held. Samples are assigned against the
        prototypes as they stand during the epoch (they move only at ``apply_epoch``), which is the
        whole-epoch rule exactly for competitive_soft, hard and batch_softmax (a running
        log-sum-exp over the epoch); sinkhorn balances within each batch. The first features ever
        seen set the centring mean and, with k-means++, place the prototypes."""
        if self.mode == "static" or features.shape[0] == 0:
            return
        g = features.detach().float()
        if int(self.state) == 0:
            if self.centre:
                self.mean.copy_(g.mean(0))
            if self.init_mode == "kmeans++":
                self.prototypes.copy_(kmeans_plus_plus(self.space(g), len(self.prototypes)))
            self.state.fill_(2)
        x = self.space(g)
        if self.assignment == "batch_softmax":  # softmax over the epoch's samples, per prototype
            logits = self.logits(x)
            top = torch.maximum(self.epoch_max, logits.max(0).values)
            rescale = torch.exp(self.epoch_max - top)
            weights = torch.exp(logits - top)
            self.epoch_mass.mul_(rescale).add_(weights.sum(0))
            self.epoch_target.mul_(rescale.unsqueeze(1)).add_(weights.T @ x)
            self.epoch_max.copy_(top)
        else:
            weights = self.assign(x)
            self.epoch_mass.add_(weights.sum(0))
            self.epoch_target.add_(weights.T @ x)
        self.epoch_feature_sum.add_(g.sum(0))
        self.epoch_count.add_(len(g))

    @torch.no_grad()
    def apply_epoch(self) -> None:
        """The epoch's update from the running sums; the centring mean becomes the epoch's mean."""
        if int(self.epoch_count) == 0:
            return
        target = self.epoch_target / self.epoch_mass.clamp(min=1e-30).unsqueeze(1)
        mass = torch.ones_like(self.epoch_mass) if self.assignment == "batch_softmax" else self.epoch_mass
        self._move(target, mass)
        if self.centre:
            self.mean.copy_(self.epoch_feature_sum / self.epoch_count)
        for buffer in (self.epoch_target, self.epoch_mass, self.epoch_feature_sum, self.epoch_count):
            buffer.zero_()
        self.epoch_max.fill_(float("-inf"))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, K) of features already in the library's space to the prototypes,
        over the update temperature."""
        return F.normalize(x, dim=-1) @ F.normalize(self.prototypes, dim=-1).T / self.temperature

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Each sample's weight on each prototype (B, K) under the library's assignment rule."""
        logits = self.logits(x)
        if self.assignment == "batch_softmax":
            return torch.softmax(logits, dim=0)  # per prototype, over the batch
        if self.assignment == "competitive_soft":
            return torch.softmax(logits, dim=1)  # per sample, over the prototypes
        if self.assignment == "hard":
            return F.one_hot(logits.argmax(1), len(self.prototypes)).float()
        return sinkhorn(logits) * len(x)  # rows sum to 1: each sample's unit of weight, balanced


def sinkhorn(logits: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """A transport plan (B, K) with equal row sums 1/B and column sums 1/K (SwAV's balancing)."""
    plan = torch.exp(logits - logits.max())
    plan = plan / plan.sum()
    rows, cols = plan.shape
    for _ in range(iterations):
        plan = plan / plan.sum(1, keepdim=True) / rows
        plan = plan / plan.sum(0, keepdim=True) / cols
    return plan / plan.sum(1, keepdim=True) / rows


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding: k rows of ``x`` chosen far apart (each next one with probability
    proportional to its squared distance to the chosen); repeats rows when ``x`` has fewer than k."""
    generator = generator or torch.Generator(device="cpu").manual_seed(0)
    chosen = [int(torch.randint(len(x), (1,), generator=generator))]
    dist = (x - x[chosen[0]]).pow(2).sum(1)
    for _ in range(1, k):
        if float(dist.sum()) <= 0:
            chosen.append(int(torch.randint(len(x), (1,), generator=generator)))
        else:
            chosen.append(int(torch.multinomial(dist.cpu(), 1, generator=generator)))
        dist = torch.minimum(dist, (x - x[chosen[-1]]).pow(2).sum(1))
    return x[chosen].clone()


def mean_pairwise_cosine(prototypes: torch.Tensor) -> float:
    """Mean cosine between distinct prototypes of a library (1.0: collapsed to one vector)."""
    p = F.normalize(prototypes.float(), dim=-1)
    k = len(p)
    return float(((p @ p.T).sum() - k) / (k * (k - 1)))
