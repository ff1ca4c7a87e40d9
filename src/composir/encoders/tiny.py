"""The tiny encoder: the BLIP-2 retrieval architecture (ViT + Q-Former + ITC projections) at a
size that trains from scratch on 2 CPU cores, with a word-hash tokenizer.

The tokenizer hashes lower-cased words into a fixed vocabulary: no file to download, the same
ids on every machine; collisions are rare at the synthetic benchmark's ~100 words.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from composir.encoders.base import Encoder
from composir.encoders.blip2 import Blip2Encoder, Blip2Options
from composir.encoders.registry import register_encoder
from composir.utils.typed import bounded

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@dataclass
class TinyConfig:
    image_size: int = bounded(64, 1, 4096)
    patch_size: int = bounded(8, 1, 512)
    width: int = bounded(128, 1, 65536)
    embed_dim: int = bounded(128, 1, 65536)
    vision_layers: int = bounded(2, 1, 64)
    qformer_layers: int = bounded(2, 1, 64)
    heads: int = bounded(4, 1, 256)
    num_query_tokens: int = bounded(8, 1, 1024)
    vocab_size: int = bounded(4096, 1, 10_000_000)
    context_length: int = bounded(32, 1, 8192)
    # "conv": a small CNN producing the patch tokens (learns colour/shape/layout from scratch far
    # faster than a ViT on a CPU budget); "vit": BLIP-2's own ViT at this size.
    vision: str = "conv"
    video_pooling: str = "mean"
    fusion_pool: str = "mean"
    gradient_checkpointing: bool = False
    # The peers' preprocessing switches, as for blip2 (encoders/preprocessing.py).
    target_pad: float | None = None
    resize: str = "square"
    caption_words: int | None = None

    def blip2_config(self) -> dict:
        return {
            "vision_config": {
                "hidden_size": self.width,
                "intermediate_size": self.width * 2,
                "num_hidden_layers": self.vision_layers,
                "num_attention_heads": self.heads,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                # transformers initialises the BLIP-2 ViT at std 1e-10 (it expects EVA weights): from
                # scratch that leaves images nearly invisible, so use the usual 0.02.
                "initializer_range": 0.02,
            },
            "qformer_config": {
                "hidden_size": self.width,
                "intermediate_size": self.width * 2,
                "num_hidden_layers": self.qformer_layers,
                "num_attention_heads": self.heads,
                "vocab_size": self.vocab_size,
                "max_position_embeddings": self.context_length,
                "cross_attention_frequency": 1,
                "encoder_hidden_size": self.width,
                "use_qformer_text_input": True,
            },
            "num_query_tokens": self.num_query_tokens,
            "image_text_hidden_size": self.embed_dim,
        }


class ConvTokens(nn.Module):
    """A CNN vision tower with the ViT's interface: pixels -> ``last_hidden_state`` (B, 1 + grid, width)."""

    def __init__(self, width: int, image_size: int, layers: int, heads: int):
        super().__init__()
        c = width // 4
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(2 * c, width, 3, 2, 1),
        )
        grid = (image_size // 8) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, grid + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = (
            nn.TransformerEncoder(layer, max(0, layers - 1), enable_nested_tensor=False) if layers > 1 else None
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        x = self.stem(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        if self.encoder is not None:
            x = self.encoder(x)
        return SimpleNamespace(last_hidden_state=self.norm(x))


class HashTokenizer:
    PAD, CLS = 0, 1
    pad_token_id = 0

    def __init__(self, vocab_size: int, context_length: int):
        self.vocab_size = vocab_size
        self.context_length = context_length

    def word_id(self, word: str) -> int:
        return 2 + zlib.crc32(word.encode()) % (self.vocab_size - 2)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.with_offsets(texts)[0]

    def with_offsets(self, texts: list[str]) -> tuple[torch.Tensor, list[list[tuple[int, int]]]]:
        """Ids (B, context_length) and each token's character span ((0, 0) for [CLS] and padding)."""
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        offsets = []
        for i, text in enumerate(texts):
            words = list(_WORD.finditer(text.lower()))[: self.context_length - 1]
            ids = [self.CLS] + [self.word_id(m.group()) for m in words]
            out[i, : len(ids)] = torch.tensor(ids)
            spans = [(0, 0)] + [m.span() for m in words]
            offsets.append(spans + [(0, 0)] * (self.context_length - len(spans)))
        return out, offsets


class TinyEncoder(Blip2Encoder):
    name = "tiny"

    def __init__(self, config: TinyConfig | None = None):
        from transformers import Blip2Config, Blip2ForImageTextRetrieval

        cfg = config or TinyConfig()
        model = Blip2ForImageTextRetrieval(Blip2Config(**cfg.blip2_config()))
        # transformers zero-initialises the query tokens (real checkpoints overwrite them); from
        # scratch identical queries would receive identical gradients and never diverge.
        nn.init.normal_(model.query_tokens, std=0.02)
        if cfg.vision == "conv":
            model.vision_model = ConvTokens(cfg.width, cfg.image_size, cfg.vision_layers, cfg.heads)
        elif cfg.vision != "vit":
            raise ValueError(f"tiny.vision must be 'conv' or 'vit', got {cfg.vision!r}")
        options = Blip2Options(
            image_size=cfg.image_size,
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            max_text_length=cfg.context_length,
            video_pooling=cfg.video_pooling,
            fusion_pool=cfg.fusion_pool,
            gradient_checkpointing=cfg.gradient_checkpointing,
            target_pad=cfg.target_pad,
            resize=cfg.resize,
            caption_words=cfg.caption_words,
        )
        super().__init__(model, HashTokenizer(cfg.vocab_size, cfg.context_length), options)
        self.config = cfg


@register_encoder("tiny", example=lambda workdir: build_tiny(config={"width": 32, "embed_dim": 16, "heads": 2}))
def build_tiny(pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    """A small BLIP-2-shaped model trained from scratch (CPU set-ups, tests); weights: a safetensors file."""
    from composir.utils.typed import build_dataclass

    encoder = TinyEncoder(build_dataclass(TinyConfig, config or {}, "encoder.config"))
    if pretrained:
        from safetensors.torch import load_file

        encoder.load_state_dict(load_file(pretrained))
    return encoder
