"""A bounded memory bank of target features used as extra negatives (CSMCIR's entropy bank).

Each entry is (feature, target key, step written, score). Training adds the step's target
features after each optimizer step (gathered across ranks first), so the bank holds targets the
model embedded recently; ``negatives`` gives them to the next steps' losses, with a mask of the
entries that are a query's own positive (the same target id), which must never count as negatives.

Which entries stay when the bank is full (``policy``):

- ``fifo``: the newest ``size`` entries;
- ``entropy``: the entries that are still *confusable*. For an entry e and a recent query q with
  positive p, the model's similarity distribution over the pair {p, e} is
  ``(sigmoid(s(q,p) - s(q,e)) * scale, ...)``; its binary entropy is 1 bit when the model cannot
  tell e from the positive and 0 when e is easy (far below the positive) -- or an obvious mismatch
  the model already ranks above it. An entry's score is the highest entropy over the step's queries
  (it is informative if it confuses *some* query), smoothed over steps (exponential average, 0.5);
  the lowest-scoring entries are evicted.

Both policies drop entries older than ``max_age`` steps (0: no limit), so the negatives stay
consistent with the evolving model (the paper's "temporally dynamic" bank); re-encoding old
entries would need their pixels, which the bank does not keep. A target seen again replaces its
older entry. All state lives in buffers: checkpoints save it, and a resumed run has the bank it had.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

POLICIES = ("fifo", "entropy")


def target_key(target_id: str) -> int:
    """A stable signed 64-bit key for a target id (the same on every rank and run)."""
    return int.from_bytes(hashlib.blake2b(target_id.encode(), digest_size=8).digest(), "big", signed=True)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """In bits: 1 at p = 0.5, 0 at p in {0, 1}."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


class MemoryBank(nn.Module):
    def __init__(self, size: int, dim: int, policy: str = "entropy", max_age: int = 0, smoothing: float = 0.5):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"memory bank policy must be one of {POLICIES}, got {policy!r}")
        self.size, self.policy, self.max_age, self.smoothing = size, policy, max_age, smoothing
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("keys", torch.zeros(size, dtype=torch.long))
        self.register_buffer("written", torch.zeros(size, dtype=torch.long))
        self.register_buffer("scores", torch.zeros(size))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    def negatives(self, positive_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank's features (N, D) and a (B, N) mask, True where entry n is query b's positive."""
        n = int(self.count)
        feats, keys = self.features[:n], self.keys[:n]
        return feats, positive_keys.to(keys.device)[:, None] == keys[None, :]

    @torch.no_grad()
    def update(
        self,
        features: torch.Tensor,
        keys: torch.Tensor,
        step: int,
        queries: torch.Tensor | None = None,
        query_keys: torch.Tensor | None = None,
        positive_sim: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> None:
        """Add this step's target ``features`` (with their ``keys``); score every entry on the step's
        ``queries`` (their positives' keys and similarities), then keep ``size`` entries."""
        n = int(self.count)
        old_f, old_k, old_w, old_s = self.features[:n], self.keys[:n], self.written[:n], self.scores[:n]
        fresh = ~torch.isin(old_k, keys)  # a target seen again replaces its older entry
        if self.max_age > 0:
            fresh &= (step - old_w) <= self.max_age
        feats = torch.cat([old_f[fresh], features.to(old_f)])
        all_keys = torch.cat([old_k[fresh], keys.to(old_k)])
        written = torch.cat([old_w[fresh], torch.full_like(keys, step)])
        scores = torch.cat([old_s[fresh], torch.zeros(len(keys), device=old_s.device)])
        if self.policy == "entropy" and queries is not None and len(queries):
            current = self.entropy_scores(feats, all_keys, queries, query_keys, positive_sim, scale)
            seen = int(fresh.sum())
            scores[:seen] = self.smoothing * scores[:seen] + (1 - self.smoothing) * current[:seen]
            scores[seen:] = current[seen:]
        keep = self._choose(written, scores)
        m = len(keep)
        self.features[:m], self.keys[:m] = feats[keep], all_keys[keep]
        self.written[:m], self.scores[:m] = written[keep], scores[keep]
        self.count.fill_(m)

    @staticmethod
    def entropy_scores(
        feats: torch.Tensor,
        keys: torch.Tensor,
        queries: torch.Tensor,
        query_keys: torch.Tensor,
        positive_sim: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Per entry: the highest binary entropy of {positive, entry} over the queries (its own
        positive's queries excluded)."""
        sim = queries.to(feats) @ feats.T  # (Q, N)
        p_entry = torch.sigmoid((sim - positive_sim.to(feats)[:, None]) * scale)
        entropy = binary_entropy(p_entry)
        own = query_keys.to(keys.device)[:, None] == keys[None, :]
        return entropy.masked_fill(own, 0.0).amax(0)

    def _choose(self, written: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Indices of the entries to keep, at most ``size``: the newest (fifo) or highest-scoring."""
        if len(written) <= self.size:
            return torch.arange(len(written), device=written.device)
        if self.policy == "fifo":
            # Newest first; among equal steps the later-added (the end of the list) first.
            position = torch.arange(len(written), device=written.device)
            order = torch.argsort(written * len(written) + position, descending=True)
        else:
            order = torch.argsort(scores, descending=True, stable=True)
        return order[: self.size].sort().values
