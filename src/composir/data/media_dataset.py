"""Media items as a torch Dataset: preprocessed frames, or an item's error instead of a crash (the
batch goes on without it), or rows of a feature cache in place of pixels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from composir.data.media import load_media
from composir.data.records import GalleryItem
from composir.errors import MediaError


class MediaDataset(Dataset):
    """Preprocessed frames of media items; an unreadable item yields its error instead."""

    def __init__(
        self,
        items: Sequence[GalleryItem],
        preprocess: Callable,
        num_frames: int,
        cache=None,
        sampling: str = "segments",
    ):
        self.items = items
        self.preprocess = preprocess
        self.num_frames = num_frames
        self.sampling = sampling  # which frames of a video (data.media.frame_indices)
        self.cache = cache  # a composir.data.feature_cache.FeatureCache: rows instead of pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if self.cache is not None:
            try:
                return index, self.cache.get(item.id), None
            except KeyError as exc:
                return index, None, str(exc.args[0])
        try:
            if item.path is None:
                raise MediaError(item.id, "no file path")
            frames = load_media(item.path, self.num_frames, item.media_type, sampling=self.sampling)
            return index, torch.stack([self.preprocess(f) for f in frames]), None
        except MediaError as exc:
            return index, None, str(exc)


def collate_media(batch):
    """``MediaDataset`` items -> (indices of the readable ones, their stacked frames or None, [(index, error)])."""
    good = [(i, x) for i, x, err in batch if err is None]
    bad = [(i, err) for i, x, err in batch if err is not None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, bad
    return torch.tensor([i for i, _ in good]), torch.stack([x for _, x in good]), bad


def frame_score_matrix(score_lists: Sequence[Sequence[float] | None], num_frames: int) -> tuple[torch.Tensor, int]:
    """Per-frame scores of a batch as a (B, num_frames) tensor, and how many rows had scores of the
    wrong length. A row with none (or of the wrong length) is zeros: equal weights after a softmax,
    as CoVR does for a target without scores."""
    rows = torch.zeros(len(score_lists), num_frames)
    mismatched = 0
    for i, scores in enumerate(score_lists):
        if not scores:
            continue
        if len(scores) != num_frames:
            mismatched += 1
            continue
        rows[i] = torch.tensor([float(v) for v in scores])
    return rows, mismatched
