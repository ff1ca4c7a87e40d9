"""What every method provides: a composed query embedding, a target embedding, its losses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from composir.encoders.base import Encoder
from composir.methods.losses import hn_nce, info_nce


@dataclass
class MethodConfig:
    temperature: float = 0.07
    learn_temperature: bool = True
    loss: str = "infonce"  # "infonce" or "hnnce" (hard-negative NCE; alpha=1, beta=0 equals InfoNCE)
    hn_alpha: float = 1.0
    hn_beta: float = 0.0
    symmetric: bool = False  # add the target -> query direction


class RetrievalMethod(nn.Module):
    """Base class: (reference frames, text) -> query; target frames -> target; in-batch InfoNCE."""

    name = "method"
    config_class: type[MethodConfig] = MethodConfig

    def __init__(self, encoder: Encoder, config: MethodConfig | None = None):
        super().__init__()
        self.encoder = encoder
        self.config = config or self.config_class()
        scale = torch.tensor(math.log(1.0 / self.config.temperature))
        self.logit_scale = nn.Parameter(scale, requires_grad=self.config.learn_temperature)

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_queries(self, frames: torch.Tensor, tokens: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
        """Queries over distinct references: query i fuses ``frames[reference_index[i]]`` with ``tokens[i]``.

        Benchmarks reuse references (CIRR: 4,181 val queries over 2,165 references), so evaluation
        decodes each reference once and calls this. Methods whose reference encoding does not
        depend on the text override it to run the vision tower once per reference as well.
        """
        return self.encode_query(frames[reference_index], tokens)

    def encode_target(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.encode_image(frames), dim=-1)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        query = self.encode_query(batch["reference"], batch["tokens"])
        target = self.encode_target(batch["target"])
        return {"contrastive": self.contrastive(query, target)}

    def contrastive(self, query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The configured batch contrastive loss between normalised query and target features."""
        scale = self.logit_scale.exp().clamp(max=100.0)
        sim = query @ target.T
        if self.config.loss == "infonce":
            loss = info_nce(sim, scale)
            return (loss + info_nce(sim.T, scale)) / 2 if self.config.symmetric else loss
        if self.config.loss == "hnnce":
            c = self.config
            loss = hn_nce(sim, scale, c.hn_alpha, c.hn_beta)
            return (loss + hn_nce(sim.T, scale, c.hn_alpha, c.hn_beta)) / 2 if c.symmetric else loss
        raise ValueError(f"unknown loss {self.config.loss!r}; expected 'infonce' or 'hnnce'")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # DDP hooks gradient sync onto forward(), so training calls the losses through it.
        return self.losses(batch)

    def weights_loaded(self, names: set[str]) -> None:
        """Called after weights named ``names`` were copied in from another run (``train.init_from``)."""

    def explain(self, frames: torch.Tensor, tokens: torch.Tensor) -> list[dict[str, Any]] | None:
        """Per-query explanation for people (reasoning, prototypes); None where the method has none."""
        return None


class LateFusion(RetrievalMethod):
    """A query combined from the pooled reference feature and the text feature (``combine``)."""

    def combine(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.combine(self.encoder.encode_image(frames), self.encoder.encode_text(tokens))

    def encode_queries(self, frames: torch.Tensor, tokens: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
        return self.combine(self.encoder.encode_image(frames)[reference_index], self.encoder.encode_text(tokens))
