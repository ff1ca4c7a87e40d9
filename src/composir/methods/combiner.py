"""CLIP4Cir's Combiner (Baldrati et al., 2022): learned fusion of image and text features.

Both features are projected (Linear+ReLU+Dropout), concatenated and mixed by an MLP; a learned
scalar lambda in (0, 1) from the same concatenation weighs a residual text/image sum:
``q = normalize(MLP(concat) + lambda * text + (1 - lambda) * image)``. The original trains the
Combiner on frozen CLIP features with a fixed logit scale of 100; ``freeze_encoder`` and
``learn_temperature``/``temperature`` reproduce that; from scratch the encoder trains too.

CLIP4Cir's ``combine_features`` takes the *raw* CLIP features (``normalize_inputs: false``) and
concatenates (text, image) (``concat_order: text_image``); its published Combiner weights only
compute CLIP4Cir's query with both set, as ``configs/clip4cir-*.yaml`` and ``composir convert
clip4cir`` do. The defaults (unit inputs, image first) are composir's first baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from composir.errors import ConfigError
from composir.methods.base import LateFusion, MethodConfig
from composir.methods.registry import register_method
from composir.utils.typed import bounded


@dataclass
class CombinerConfig(MethodConfig):
    projection_dim: int = bounded(512, 1, 65536)
    hidden_dim: int = bounded(1024, 1, 65536)
    dropout: float = bounded(0.5, 0, 1, high_open=True)
    freeze_encoder: bool = False
    normalize_inputs: bool = True  # CLIP4Cir: false (raw CLIP features in, residual on raw features)
    concat_order: str = "image_text"  # CLIP4Cir: text_image

    def validate(self) -> None:
        if self.concat_order not in ("image_text", "text_image"):
            raise ConfigError(f"combiner.concat_order must be image_text or text_image, got {self.concat_order!r}")


@register_method("combiner")
class Combiner(LateFusion):
    config_class = CombinerConfig

    def __init__(self, encoder, config: CombinerConfig | None = None):
        super().__init__(encoder, config)
        cfg = self.config
        d = encoder.embed_dim
        self.text_projection = nn.Sequential(nn.Linear(d, cfg.projection_dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.image_projection = nn.Sequential(nn.Linear(d, cfg.projection_dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.mixer = nn.Sequential(
            nn.Linear(2 * cfg.projection_dim, cfg.hidden_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, d),
        )
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * cfg.projection_dim, cfg.hidden_dim),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, 1),
            nn.Sigmoid(),
        )
        if cfg.freeze_encoder:
            encoder.requires_grad_(False)

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.config.normalize_inputs:
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        parts = [self.image_projection(image), self.text_projection(text)]
        joint = torch.cat(parts if self.config.concat_order == "image_text" else parts[::-1], dim=-1)
        lam = self.dynamic_scalar(joint)
        return F.normalize(self.mixer(joint) + lam * text + (1 - lam) * image, dim=-1)
