"""The one interface every backbone implements."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image
from torch import nn

Span = tuple[int, int]


@dataclass
class Tokens:
    """Tokenized texts: ``ids`` and ``mask`` (B, L), and for each text each token's character
    span in it (``offsets[b][i]`` = (start, end); (0, 0) for special and padding tokens), so that
    a method can find which tokens a phrase of the text became (ConText-CIR's concept spans).
    ``texts``: the texts themselves, for methods that read them with a tokenizer of their own
    (CIR-CoT's language model)."""

    ids: torch.Tensor
    mask: torch.Tensor
    offsets: list[list[Span]]
    texts: list[str] | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Tokens:
        return Tokens(self.ids.to(device, non_blocking=non_blocking), self.mask.to(device), self.offsets, self.texts)

    def pin_memory(self) -> Tokens:
        return Tokens(self.ids.pin_memory(), self.mask.pin_memory(), self.offsets, self.texts)

    def __getitem__(self, index) -> Tokens:
        """Rows by slice, integer tensor or list (evaluation picks each query's text this way)."""
        if isinstance(index, slice):
            texts = None if self.texts is None else self.texts[index]
            return Tokens(self.ids[index], self.mask[index], self.offsets[index], texts)
        rows = torch.as_tensor(index, dtype=torch.long).reshape(-1).tolist()
        texts = None if self.texts is None else [self.texts[i] for i in rows]
        index_rows = torch.as_tensor(rows, dtype=torch.long)
        return Tokens(
            self.ids[index_rows], self.mask[index_rows.to(self.mask.device)], [self.offsets[i] for i in rows], texts
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def token_span(self, row: int, start: int, end: int) -> list[int]:
        """Positions of the tokens of text ``row`` that overlap its characters [start, end)."""
        return [i for i, (a, b) in enumerate(self.offsets[row]) if b > a and a < end and b > start]


class Encoder(nn.Module):
    """Images/videos and texts to features.

    ``frames`` are (B, T, 3, H, W) float tensors already preprocessed (an image is T=1).
    ``encode_image``/``encode_text`` return pooled (B, D) features; ``encode_query`` fuses a
    reference with a text where the backbone has a fusion module (the BLIP-2 Q-Former).
    """

    embed_dim: int
    image_size: int
    name: str = "encoder"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> Tokens:
        raise NotImplementedError

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_query(self, frames: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no multimodal fusion")

    def lock_vision_tower(self) -> None:
        """Freeze the vision tower (``encoder.freeze_vision``; open_clip's ``lock_image_tower``)."""
        raise NotImplementedError(f"{type(self).__name__} has no vision tower to freeze")

    def no_weight_decay(self) -> set[str]:
        """Names (in ``named_parameters``) that weight decay must skip besides biases and norms
        (which every parameter of fewer than 2 dimensions is): embeddings, learned query tokens."""
        return {n for n, _ in self.named_parameters() if "embedding" in n or "query_tokens" in n}

    @property
    def has_fusion(self) -> bool:
        return type(self).encode_query is not Encoder.encode_query

    def fingerprint(self) -> str:
        """Hash of the architecture and weights: cached features from another model are refused."""
        h = hashlib.sha256(type(self).__name__.encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            # The first 16,384 values (64 KiB as fp32), converted alone: the same bytes as converting
            # the whole tensor and keeping 64 KiB, without the copy (fingerprints stay comparable).
            h.update(tensor.detach().flatten()[: 1 << 14].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


@runtime_checkable
class TokenFeatures(Protocol):
    """Token-level features of both towers (ConText-CIR's cross-attention from text tokens to
    patches): ``blip2`` and ``tiny`` (ViT tokens, Q-Former text tokens), ``openclip`` (the last
    block's tokens of each tower, through open_clip's ``forward_intermediates``)."""

    def text_tokens(self, tokens: Tokens) -> torch.Tensor:
        """(B, L, C_text): one feature per token, aligned with ``tokens.offsets``."""

    def image_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((B, P, C_vision) patch tokens, (B, D) the image feature ``encode_image`` gives), one pass."""


@runtime_checkable
class QFormerBackbone(Protocol):
    """What a BLIP-2-style encoder offers methods that work inside its Q-Former (qformer_fusion,
    IMAGINE, CSMCIR): methods check ``isinstance(encoder, QFormerBackbone)`` and call these,
    never ``encoder.model``'s internals. ``blip2`` and ``tiny`` implement it.
    """

    num_query_tokens: int

    def vision_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """The vision tower's tokens, frames pooled: (B, N, C)."""

    def image_query_outputs(self, frames: torch.Tensor | None, memory: torch.Tensor | None = None) -> torch.Tensor:
        """Q-Former query-token outputs over the vision tokens: (B, Q, width)."""

    def project_image(self, hidden: torch.Tensor) -> torch.Tensor:
        """Query-token outputs into the joint embedding space (BLIP-2's ``vision_projection``)."""

    def project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        """Text or fused outputs into the joint embedding space (BLIP-2's ``text_projection``)."""

    def text_hidden(self, tokens: Tokens) -> torch.Tensor:
        """The Q-Former in text-only mode: (B, L, width)."""

    def fusion_hidden(
        self,
        frames: torch.Tensor | None,
        tokens: Tokens | None,
        memory: torch.Tensor | None = None,
        return_attentions: bool = False,
    ):
        """Query tokens (+ text tokens when given) cross-attending to the frames' vision tokens."""

    def pool_fusion(self, hidden: torch.Tensor) -> torch.Tensor:
        """The composed feature from ``fusion_hidden``'s output."""

    def refine_with_text(self, query_outputs: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """[query outputs; text] through the Q-Former without the image (SPRC's second pass)."""

    def query_token_init(self) -> torch.Tensor:
        """The learned query tokens (Q, width), detached (IMAGINE starts its prototypes from them)."""
