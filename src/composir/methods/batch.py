"""Training batches: a method turns the dataset's items into the tensors its losses read.

The dataset (``train.dataset.TripletDataset``) yields one dict per triplet: ``reference`` and
``target`` frames, ``text``, the ids (``query_id``, ``reference_id``, ``target_id``) and the
benchmark's ``extra`` fields (target captions, families, ...), or None for an unreadable one. A
method's ``collator()`` builds the batch from them; a method that needs more (target captions,
concept spans, reasoning chains) returns its own collator, usually a ``TripletCollator`` subclass
that adds fields in ``extend``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from composir.data.media_dataset import frame_score_matrix


class TripletCollator:
    """Stacks frames, tokenizes texts, keeps ids and extras; counts the unreadable items.

    Keys: ``size`` (readable items), ``skipped``; when ``size`` > 0 also ``index``, ``reference``,
    ``target``, ``text``, ``tokens``, ``query_id``, ``reference_id``, ``target_id``, ``extra``; with
    ``frame_scores`` also ``target_frame_scores`` (B, frames of a target).
    """

    def __init__(self, tokenize: Callable[[list[str]], Any], frame_scores: bool = False):
        self.tokenize = tokenize
        self.frame_scores = frame_scores  # the method weighs target frames (RetrievalMethod.target_frame_scores)

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        good = [x for x in items if x is not None]
        batch: dict[str, Any] = {"skipped": len(items) - len(good), "size": len(good)}
        if not good:
            return batch
        batch["index"] = torch.tensor([x["index"] for x in good])
        batch["reference"] = torch.stack([x["reference"] for x in good])
        batch["target"] = torch.stack([x["target"] for x in good])
        batch["text"] = [x["text"] for x in good]
        batch["tokens"] = self.tokenize(batch["text"])
        for key in ("query_id", "reference_id", "target_id", "extra"):
            batch[key] = [x.get(key) for x in good]
        if self.frame_scores:  # each target's per-frame scores (WebVid-CoVR's ``scores``), zeros where none
            batch["target_frame_scores"], _ = frame_score_matrix(
                [(x.get("extra") or {}).get("scores") for x in good], batch["target"].shape[1]
            )
        self.extend(batch, good)
        return batch

    def extend(self, batch: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Add a method's own fields to ``batch`` (a subclass's hook)."""


class CaptionedCollator(TripletCollator):
    """Adds ``target_caption``: the tokenized caption of each triplet's target ("" where none)."""

    def extend(self, batch: dict[str, Any], items: list[dict[str, Any]]) -> None:
        captions = [str((x.get("extra") or {}).get("target_caption") or "") for x in items]
        batch["target_caption"] = self.tokenize(captions)
