"""The BLIP-2 multimodal fusion baseline (CoVR-2 / SPRC style).

The composed query is the Q-Former's joint encoding of the text and the query tokens while they
cross-attend to the reference's ViT tokens (``Encoder.encode_query``); the target is the
Q-Former image feature. Needs an encoder with fusion (``blip2`` or ``tiny``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from composir.encoders.base import QFormerBackbone
from composir.errors import ConfigError
from composir.methods.base import RetrievalMethod
from composir.methods.registry import register_method


@register_method("qformer_fusion")
class QFormerFusion(RetrievalMethod):
    def __init__(self, encoder, config=None):
        super().__init__(encoder, config)
        if not isinstance(encoder, QFormerBackbone):
            raise ConfigError(f"qformer_fusion needs an encoder with a Q-Former fusion; {encoder.name!r} has none")

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.encode_query(frames, tokens), dim=-1)

    def encode_queries(self, frames: torch.Tensor, tokens: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
        memory = self.encoder.vision_tokens(frames)[reference_index]  # one ViT pass per reference
        return F.normalize(self.encoder.pool_fusion(self.encoder.fusion_hidden(None, tokens, memory)), dim=-1)
