"""Training triplets as tensors, an epoch-seeded batch sampler that can resume mid-epoch, and
augmentation hooks."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from composir.data.augment import AUGMENTATIONS
from composir.data.media import load_media
from composir.data.records import Benchmark
from composir.errors import ConfigError, MediaError

log = logging.getLogger(__name__)


class TripletDataset(Dataset):
    """(reference frames, target frames, text) per query; the first target when there are several.

    Items whose media cannot be read come back as ``None`` (the collate drops them and counts them).
    """

    def __init__(
        self,
        bench: Benchmark,
        preprocess: Callable,
        num_frames: int = 1,
        augment: str = "none",
        seed: int = 0,
        cache=None,
        reference_sampling: str = "segments",
    ):
        self.queries = [q for q in bench.queries if q.target_ids]
        self.bench = bench
        self.preprocess = preprocess
        self.num_frames = num_frames
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; known: {sorted(AUGMENTATIONS)}")
        self.augment = AUGMENTATIONS[augment]
        self.seed = seed
        self.epoch = 0
        self.cache = cache  # composir.data.feature_cache.FeatureCache: cached vision tokens instead of pixels
        self.reference_sampling = reference_sampling  # the method's (data.media.frame_indices)

    def __len__(self) -> int:
        return len(self.queries)

    def groups(self) -> list[list[int]]:
        """Indices grouped by img_set (or by reference when there is none)."""
        by_key: dict[object, list[int]] = {}
        for i, q in enumerate(self.queries):
            key = q.extra.get("img_set", {}).get("id") if isinstance(q.extra.get("img_set"), dict) else None
            by_key.setdefault(key if key is not None else q.reference_id, []).append(i)
        return list(by_key.values())

    def _frames(self, media_id: str, rng: random.Random, sampling: str = "segments") -> torch.Tensor:
        if self.cache is not None:
            try:
                return self.cache.get(media_id)
            except KeyError as exc:
                raise MediaError(media_id, str(exc.args[0])) from exc
        item = self.bench.media_item(media_id)
        frames = self.augment(load_media(item.path, self.num_frames, item.media_type, sampling=sampling), rng)
        return torch.stack([self.preprocess(f) for f in frames])

    def __getitem__(self, index: int):
        # Per-sample randomness depends on (seed, epoch, index) only: identical after a resume
        # and whatever the number of workers.
        rng = random.Random(hash((self.seed, self.epoch, index)))
        q = self.queries[index]
        try:
            text = q.text
            if q.train_texts:  # e.g. FashionIQ's captions joined in either order
                text = q.train_texts[min(int(rng.random() * len(q.train_texts)), len(q.train_texts) - 1)]
            return {
                "index": index,
                "query_id": q.query_id,
                "reference_id": q.reference_id,
                "target_id": q.target_ids[0],
                "reference": self._frames(q.reference_id, rng, self.reference_sampling),
                "target": self._frames(q.target_ids[0], rng),
                "text": text,
                "extra": q.extra,
            }
        except MediaError as exc:
            log.warning("skipping training triplet %s: %s", q.query_id, exc)
            return None


class ResumableBatchSampler:
    """Batches of one epoch from a permutation seeded by (seed, epoch); starts at any batch.

    With ``groups`` the permutation shuffles whole groups (then their members), so members of an
    img_set land in the same batch. Under DDP each rank takes its slice of every global batch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        groups: list[list[int]] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.groups = groups
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise ConfigError(
                f"train.batch_size: {n} training triplets are fewer than one global batch of {self.global_batch}"
            )

    def order(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch])
        if self.groups is None:
            return rng.permutation(self.n).tolist()
        out: list[int] = []
        for g in rng.permutation(len(self.groups)):
            members = list(self.groups[g])
            out.extend(members[i] for i in rng.permutation(len(members)))
        return out

    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        order = self.order(epoch)
        for b in range(start, self.batches_per_epoch()):
            chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
