"""BLIP-2 zero-shot, scored as BLIP-2 scores image-text pairs (its ITC): the composed query is the
fused pass's first text token through ``text_projection`` (the reference's query tokens and the
text attend to each other while the query tokens see the reference), and a gallery item scores by
its best unit query token (``max_target_tokens``), as ``Blip2Qformer``'s retrieval does. Every
weight is the pretrained model's: ``composir eval|index --encoder blip2 --pretrained
Salesforce/blip2-itm-vit-g --method blip2_zero_shot``."""

from __future__ import annotations

from dataclasses import dataclass

from composir.methods.qformer_fusion import QFormerFusion, QFormerFusionConfig
from composir.methods.registry import register_method


@dataclass
class Blip2ZeroShotConfig(QFormerFusionConfig):
    query_pool: str = "text_cls"
    scoring: str = "max_target_tokens"


@register_method("blip2_zero_shot")
class Blip2ZeroShot(QFormerFusion):
    config_class = Blip2ZeroShotConfig
    training_free = True
