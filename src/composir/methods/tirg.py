"""TIRG (Vo et al., 2019): text-image residual gating.

``q = w_gate * sigmoid(G([image, text])) * image + w_res * R([image, text])``, with G and R
two-layer MLPs over the concatenation and learned weights initialised at (1, 10) as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from composir.methods.base import LateFusion, MethodConfig
from composir.methods.registry import register_method
from composir.utils.typed import bounded


@dataclass
class TirgConfig(MethodConfig):
    hidden_dim: int = bounded(512, 1, 65536)


@register_method("tirg")
class Tirg(LateFusion):
    config_class = TirgConfig

    def __init__(self, encoder, config: TirgConfig | None = None):
        super().__init__(encoder, config)
        d, h = encoder.embed_dim, self.config.hidden_dim
        self.gate = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, h), nn.ReLU(), nn.Linear(h, d))
        self.residual = nn.Sequential(nn.BatchNorm1d(2 * d), nn.ReLU(), nn.Linear(2 * d, h), nn.ReLU(), nn.Linear(h, d))
        self.weights = nn.Parameter(torch.tensor([1.0, 10.0]))

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([image, text], dim=-1)
        out = self.weights[0] * torch.sigmoid(self.gate(joint)) * image + self.weights[1] * self.residual(joint)
        return F.normalize(out, dim=-1)
