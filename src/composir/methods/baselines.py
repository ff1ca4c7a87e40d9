"""Trivial baselines: what the reference alone, the text alone, or their sum retrieve."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from composir.methods.base import LateFusion, MethodConfig, RetrievalMethod
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


@dataclass
class SumConfig(MethodConfig):
    # false: CLIP4Cir's ``element_wise_sum``, normalize(raw image + raw text feature)
    normalize_inputs: bool = True


@register_method("sum")
class Sum(LateFusion):
    """Query = normalised image feature + normalised text feature (the late-fusion baseline);
    ``normalize_inputs: false`` sums the raw features first, as CLIP4Cir's baseline does."""

    config_class = SumConfig
    training_free = True

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.config.normalize_inputs:
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return F.normalize(image + text, dim=-1)
