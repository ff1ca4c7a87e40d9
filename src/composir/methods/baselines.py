"""Trivial baselines: what the reference alone, the text alone, or their sum retrieve."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from composir.methods.base import LateFusion, RetrievalMethod
from composir.methods.registry import register_method


@register_method("image_only")
class ImageOnly(RetrievalMethod):
    """Query = the reference's image feature; ignores the text."""

    training_free = True

    # The text tower gets no gradient: DDP must look for the unused parameters.
    ddp_find_unused_parameters = True

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.encode_image(frames), dim=-1)

    def encode_queries(self, frames: torch.Tensor, tokens: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
        return self.encode_query(frames, tokens)[reference_index]


@register_method("text_only")
class TextOnly(RetrievalMethod):
    """Query = the modification text's feature; ignores the reference."""

    training_free = True

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.encode_text(tokens), dim=-1)


@register_method("sum")
class Sum(LateFusion):
    """Query = normalised image feature + normalised text feature (the late-fusion baseline)."""

    training_free = True

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.normalize(image, dim=-1) + F.normalize(text, dim=-1), dim=-1)
