"""A small encoder trained from scratch on the CPU: conv stem + transformer for images, a
word-hash tokenizer + transformer for text.

The tokenizer hashes lower-cased words into a fixed vocabulary (no file to download, stable
across runs and machines); collisions are rare at the synthetic benchmark's ~100 words.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from composir.encoders.base import Encoder

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@dataclass
class TinyConfig:
    image_size: int = 64
    width: int = 128
    embed_dim: int = 128
    vision_layers: int = 2
    text_layers: int = 2
    heads: int = 4
    vocab_size: int = 4096
    context_length: int = 32
    num_frames: int = 1  # frames a video is sampled to; 1 for images


class HashTokenizer:
    PAD, CLS = 0, 1

    def __init__(self, vocab_size: int, context_length: int):
        self.vocab_size = vocab_size
        self.context_length = context_length

    def word_id(self, word: str) -> int:
        return 2 + zlib.crc32(word.encode()) % (self.vocab_size - 2)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.CLS] + [self.word_id(w) for w in _WORD.findall(text.lower())]
            ids = ids[: self.context_length]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def _transformer(width: int, layers: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, width * 2, dropout=0.0, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class TinyEncoder(Encoder):
    name = "tiny"

    def __init__(self, config: TinyConfig | None = None):
        super().__init__()
        self.config = cfg = config or TinyConfig()
        self.embed_dim = cfg.embed_dim
        self.image_size = cfg.image_size
        w = cfg.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w // 4, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(w // 4, w // 2, 3, 2, 1),
            nn.GELU(),
            nn.Conv2d(w // 2, w, 3, 2, 1),
        )
        grid = (cfg.image_size // 8) ** 2
        self.vision_pos = nn.Parameter(torch.randn(1, grid + 1, w) * 0.02)
        self.vision_cls = nn.Parameter(torch.zeros(1, 1, w))
        self.vision = _transformer(w, cfg.vision_layers, cfg.heads)
        self.vision_norm = nn.LayerNorm(w)
        self.vision_proj = nn.Linear(w, cfg.embed_dim, bias=False)
        self.tokenizer = HashTokenizer(cfg.vocab_size, cfg.context_length)
        self.token_embedding = nn.Embedding(cfg.vocab_size, w, padding_idx=0)
        self.text_pos = nn.Parameter(torch.randn(1, cfg.context_length, w) * 0.02)
        self.text = _transformer(w, cfg.text_layers, cfg.heads)
        self.text_norm = nn.LayerNorm(w)
        self.text_proj = nn.Linear(w, cfg.embed_dim, bias=False)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(3, 1, 1), persistent=False)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def image_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame patch tokens with a leading CLS: (B*T, 1 + grid, width)."""
        _b, _t = frames.shape[:2]
        x = self.stem(frames.flatten(0, 1)).flatten(2).transpose(1, 2)
        x = torch.cat([self.vision_cls.expand(x.shape[0], -1, -1), x], 1) + self.vision_pos
        return self.vision_norm(self.vision(x))

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        cls = self.image_tokens(frames)[:, 0].view(b, t, -1).mean(1)  # videos: mean over frames
        return self.vision_proj(cls)

    def text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.text_pos[:, : tokens.shape[1]]
        return self.text_norm(self.text(x, src_key_padding_mask=tokens == HashTokenizer.PAD))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.text_tokens(tokens)[:, 0])


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
