"""ConText-CIR: concept-aware fusion of text tokens and reference patches, with a concept-consistency
loss over noun phrases (each phrase must attend the same way inside the sentence as alone); every
part a switch (``ConTextCIRConfig``). Design notes: docs/methods.md.

``direction: image_to_text`` (the default) is the authors' way round (mvrl/ConText-CIR
``src/Models.py``): the reference's patches query the text tokens (their padding too, as the authors'
code does; ``text_padding: masked`` leaves it out), so inside each patch's softmax the sentence's
other words compete with a noun phrase -- the "contextual
interference" the loss removes. A concept's map is each patch's attention on the phrase's tokens,
averaged over those tokens, the layers and the heads; the margin applies to these raw maps; the
text-conditioned patches are pooled by one learned query and projected into the query embedding.
``text_to_image`` (text tokens query patches, maps max-scaled, the image feature plus the attended
text) is composir's first reading, kept as an ablation: there a phrase's map cannot depend on the
other words, which is what the competition test shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from composir.data.noun_phrases import DEFAULT_MODEL, NounPhrases
from composir.encoders.base import TokenFeatures, Tokens
from composir.errors import ConfigError
from composir.methods.base import MethodConfig, RetrievalMethod, media_frames
from composir.methods.batch import TripletCollator
from composir.methods.claims import Claim, Gain, LosesGain, Retrieves, Shrinks, SubTask, Variant, register_claim
from composir.methods.registry import register_method
from composir.utils.typed import bounded

DIRECTIONS = ("image_to_text", "text_to_image")
TEXT_PADDING = ("masked", "attended")


@dataclass
class ConTextCIRConfig(MethodConfig):
    layers: int = bounded(4, 1, 64)
    heads: int = bounded(4, 1, 256)
    cc_weight: float = bounded(0.08, 0)
    margin: float = bounded(0.05, 0)
    max_concepts: int = bounded(10, 0, 1000)
    reference_negative: bool = True
    concept_model: str = DEFAULT_MODEL  # an installed spaCy pipeline
    concept_cache: str | None = None  # a JSON file of extracted spans (read, and written after training)
    direction: str = "image_to_text"  # image_to_text (the authors') | text_to_image (the first reading)
    # image_to_text: each layer's attended text replaces the patch features, as the authors' layers do
    # (false), or is added to them in a pre-norm residual block with an MLP (true).
    patch_residual: bool = False
    # image_to_text: whether patches attend to the text's padding positions too, as the authors'
    # code does (``attended``: padding states are contextual and differ by position, slots through
    # which the reference reaches the query), or only to its words (``masked``).
    text_padding: str = "attended"

    def validate(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"context_cir.direction must be one of {list(DIRECTIONS)}, got {self.direction!r}")
        if self.text_padding not in TEXT_PADDING:
            choices = list(TEXT_PADDING)
            raise ConfigError(f"context_cir.text_padding must be one of {choices}, got {self.text_padding!r}")
        if not self.concept_model.strip():
            raise ConfigError("context_cir.concept_model must name an installed spaCy pipeline")
        if self.layers < 1 or self.heads < 1 or self.max_concepts < 0:
            raise ConfigError("context_cir.layers and .heads must be >= 1, .max_concepts >= 0")
        if self.cc_weight < 0 or self.margin < 0:
            raise ConfigError("context_cir.cc_weight and .margin must not be negative")


def concept_consistency(
    in_context: torch.Tensor, alone: torch.Tensor, margin: float, max_scaled: bool = True
) -> torch.Tensor:
    """Mean over concepts and patches of ReLU(|A_context - A_alone| - margin) for maps (C, P):
    raw (the authors'), or each scaled to a maximum of 1 (``max_scaled``). Zero for no concepts."""
    if len(in_context) == 0:
        return in_context.sum() * 0.0
    if max_scaled:
        in_context = in_context / in_context.amax(-1, keepdim=True).clamp_min(1e-8)
        alone = alone / alone.amax(-1, keepdim=True).clamp_min(1e-8)
    return F.relu((in_context - alone).abs() - margin).mean()


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention of text tokens to patches, then an MLP; returns the attention map."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.norm_kv(patches)
        attended, weights = self.attention(self.norm_q(x), kv, kv, need_weights=True, average_attn_weights=True)
        x = x + attended
        return x + self.mlp(self.norm_mlp(x)), weights  # weights: (B, L, P)


class ConceptFusion(nn.Module):
    def __init__(self, text_width: int, vision_width: int, width: int, layers: int, heads: int, out_dim: int):
        super().__init__()
        self.text_in = nn.Linear(text_width, width)
        self.patch_in = nn.Linear(vision_width, width)
        self.blocks = nn.ModuleList(CrossAttentionBlock(width, heads) for _ in range(layers))
        self.out = nn.Linear(width, out_dim)

    def forward(self, text: torch.Tensor, mask: torch.Tensor, patches: torch.Tensor):
        """(pooled (B, out_dim), attention (B, L, P) averaged over layers)."""
        x, p = self.text_in(text), self.patch_in(patches)
        maps = []
        for block in self.blocks:
            x, weights = block(x, p)
            maps.append(weights)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.out(pooled), torch.stack(maps).mean(0)


class PatchesQueryText(nn.Module):
    """One layer of the authors' direction: patches attend to the text tokens (their padding too
    unless masked, ``text_padding``). Returns the new patch features and the attention (B, P, L),
    averaged over heads."""

    def __init__(self, width: int, heads: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        if residual:
            self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, patches: torch.Tensor, text: torch.Tensor, padding: torch.Tensor | None):
        query, kv = (self.norm_q(patches), self.norm_kv(text)) if self.residual else (patches, text)
        attended, weights = self.attention(query, kv, kv, key_padding_mask=padding, need_weights=True)
        if not self.residual:
            return attended, weights  # the authors' layers: the attended text replaces the patches
        x = patches + attended
        return x + self.mlp(self.norm_mlp(x)), weights


class TextConditionedPatches(nn.Module):
    """The authors' fusion: patches query text through ``layers`` layers, then one learned query
    attends over the text-conditioned patches and its output, projected, is the query embedding."""

    def __init__(self, text_width: int, vision_width: int, width: int, cfg: ConTextCIRConfig, out_dim: int):
        super().__init__()
        self.text_in = nn.Linear(text_width, width)
        self.patch_in = nn.Linear(vision_width, width)
        self.blocks = nn.ModuleList(PatchesQueryText(width, cfg.heads, cfg.patch_residual) for _ in range(cfg.layers))
        self.pool_query = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.pool = nn.MultiheadAttention(width, cfg.heads, batch_first=True)
        self.out = nn.Linear(width, out_dim)
        self.attend_padding = cfg.text_padding == "attended"

    def forward(self, text: torch.Tensor, mask: torch.Tensor, patches: torch.Tensor):
        """(pooled (B, out_dim), attention (B, L, P) averaged over layers and heads). Entry (l, p) is
        patch p's attention on token l -- laid out per token like ``ConceptFusion``'s, so a phrase's
        map is read the same way in both directions."""
        x, t = self.patch_in(patches), self.text_in(text)
        padding = None if self.attend_padding else ~mask.bool()
        maps = []
        for block in self.blocks:
            x, weights = block(x, t, padding)
            maps.append(weights)
        pooled, _ = self.pool(self.pool_query.expand(len(x), -1, -1), x, x, need_weights=False)
        return self.out(pooled.squeeze(1)), torch.stack(maps).mean(0).transpose(1, 2)


class ConceptCollator(TripletCollator):
    """Adds ``concepts``: per text, its noun phrases' (start, end) spans (at most ``max_concepts``),
    and ``concept_tokens`` / ``concept_row``: every concept's phrase tokenized alone and the row of
    the text it came from."""

    def __init__(self, tokenize, phrases: NounPhrases, max_concepts: int):
        super().__init__(tokenize)
        self.phrases, self.max_concepts = phrases, max_concepts

    def extend(self, batch: dict[str, Any], items: list[dict[str, Any]]) -> None:
        spans = [s[: self.max_concepts] for s in self.phrases(batch["text"])]
        batch["concepts"] = spans
        texts = [batch["text"][row][a:b] for row, row_spans in enumerate(spans) for a, b in row_spans]
        batch["concept_row"] = torch.tensor([row for row, row_spans in enumerate(spans) for _ in row_spans])
        batch["concept_tokens"] = self.tokenize(texts) if texts else None


@register_method("context_cir")
class ConTextCIR(RetrievalMethod):
    config_class = ConTextCIRConfig
    backbone = TokenFeatures
    backbone_text = "token-level text and image features"

    def __init__(self, encoder, config: ConTextCIRConfig | None = None):
        super().__init__(encoder, config)
        cfg: ConTextCIRConfig = self.config
        with torch.no_grad():  # the towers' token widths, from one tiny pass
            text_width = encoder.text_tokens(encoder.tokenize(["a"])).shape[-1]
            size = encoder.image_size
            vision_width = encoder.image_tokens(torch.zeros(1, 1, 3, size, size))[0].shape[-1]
        if text_width % cfg.heads:
            raise ConfigError(f"context_cir.heads: {cfg.heads} must divide the text width {text_width}")
        self.fusion: nn.Module
        if cfg.direction == "image_to_text":
            self.fusion = TextConditionedPatches(text_width, vision_width, text_width, cfg, encoder.embed_dim)
        else:
            self.fusion = ConceptFusion(text_width, vision_width, text_width, cfg.layers, cfg.heads, encoder.embed_dim)
        self.phrases = NounPhrases(cfg.concept_model, cfg.concept_cache)

    @property
    def ddp_find_unused_parameters(self) -> bool:
        # Text is read token by token: the encoder's pooled-text projection serves no loss.
        return True

    def collator(self) -> TripletCollator:
        return ConceptCollator(self.encoder.tokenize, self.phrases, self.config.max_concepts)

    # ------------------------------------------------------------------------------ features
    def compose(self, patches: torch.Tensor, image: torch.Tensor, tokens: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
        """(query (B, D) normalised, attention maps (B, L, P), per token) from the reference's patches
        and image feature and the text. image_to_text: the pooled text-conditioned patches; text_to_image:
        the attended text, pooled and projected, added to the image feature."""
        pooled, attention = self.fusion(self.encoder.text_tokens(tokens), tokens.mask, patches)
        if self.config.direction == "image_to_text":
            return F.normalize(pooled, dim=-1), attention
        return F.normalize(image + pooled, dim=-1), attention

    def encode_query(self, frames: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        patches, image = self.encoder.image_tokens(frames)
        return self.compose(patches, image, tokens)[0]

    def encode_queries(self, frames: torch.Tensor, tokens: Tokens, reference_index: torch.Tensor) -> torch.Tensor:
        patches, image = self.encoder.image_tokens(frames)  # one vision pass per distinct reference
        return self.compose(patches[reference_index], image[reference_index], tokens)[0]

    def encode_target(self, frames: torch.Tensor, tokens=None) -> torch.Tensor:
        return F.normalize(self.encoder.image_tokens(frames)[1], dim=-1)

    # ------------------------------------------------------------------------------ training
    def concept_maps(self, batch: dict[str, Any], memory: torch.Tensor, attention: torch.Tensor):
        """(in-context maps (C, P), alone maps (C, P)) of the batch's concepts."""
        tokens: Tokens = batch["tokens"]
        context, kept = [], []
        for c, (row, (start, end)) in enumerate(zip(batch["concept_row"].tolist(), _flat(batch["concepts"]))):
            positions = tokens.token_span(row, start, end)
            if positions:  # a phrase cut off by the text length limit has no tokens
                context.append(attention[row, positions].mean(0))
                kept.append(c)
        if not kept:
            return attention.new_zeros(0, attention.shape[-1]), attention.new_zeros(0, attention.shape[-1])
        alone_tokens: Tokens = batch["concept_tokens"][kept].to(memory.device)
        rows = batch["concept_row"][kept].to(memory.device)
        _, alone_attention = self.fusion(self.encoder.text_tokens(alone_tokens), alone_tokens.mask, memory[rows])
        alone = []
        for i in range(len(kept)):
            phrase_end = max(b for _, b in alone_tokens.offsets[i]) or 1
            positions = alone_tokens.token_span(i, 0, phrase_end) or [0]
            alone.append(alone_attention[i, positions].mean(0))
        return torch.stack(context), torch.stack(alone)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg: ConTextCIRConfig = self.config
        memory, image = self.encoder.image_tokens(batch["reference"])
        query, attention = self.compose(memory, image, batch["tokens"])
        target = self.encode_target(batch["target"])
        negatives, mask = None, None
        if cfg.reference_negative:
            negatives = F.normalize(image, dim=-1)
            same = [[r == t for r in batch["reference_id"]] for t in batch["target_id"]]
            mask = torch.tensor(same, dtype=torch.bool, device=query.device)
        out = {"contrastive": self.contrastive(query, target, negatives, mask)}
        if cfg.cc_weight > 0 and "concepts" in batch:
            context, alone = self.concept_maps(batch, memory, attention)
            max_scaled = cfg.direction == "text_to_image"  # the authors' margin is on the raw maps
            out["concept"] = cfg.cc_weight * concept_consistency(context, alone, cfg.margin, max_scaled)
        return out

    def after_epoch(self, epoch: int) -> None:
        self.phrases.save()  # spans extracted so far, for the next run

    @torch.no_grad()
    def validation_metrics(self, bench: Any, num_frames: int) -> dict[str, float]:
        """``concept map shift``: how far the sentence moves each noun phrase's attention from the
        phrase's attention alone, on up to 64 queries -- the total-variation distance between the two
        maps, each made a distribution over patches, in % (0: the sentence changes nothing, so the
        concept loss has nothing to fix)."""
        queries = bench.queries[:64]
        if not queries:
            return {}
        frames = media_frames(self, [bench.media_item(q.reference_id).path for q in queries], num_frames)
        items = [
            {"index": i, "reference": frames[i].cpu(), "target": frames[i].cpu(), "text": q.text,
             "query_id": q.query_id, "reference_id": q.reference_id, "target_id": q.reference_id, "extra": q.extra}
            for i, q in enumerate(queries)
        ]  # fmt: skip
        batch = self.collator()(items)
        memory, image = self.encoder.image_tokens(frames)
        _, attention = self.compose(memory, image, batch["tokens"].to(frames.device))
        context, alone = self.concept_maps(batch, memory, attention)
        if not len(context):
            return {}
        p = context / context.sum(-1, keepdim=True).clamp_min(1e-8)
        q = alone / alone.sum(-1, keepdim=True).clamp_min(1e-8)
        return {"concept map shift": float(50.0 * (p - q).abs().sum(-1).mean())}


def _flat(spans: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    return [s for row in spans for s in row]


# ------------------------------------------------------------------------------ the claim
_BOARD = {"layers": 2, "heads": 4}
register_claim(
    Claim(
        paper="ConText-CIR",
        statement=(
            "Making each noun phrase attend to the image the same way inside the sentence as alone "
            "improves retrieval, most on texts with several concepts."
        ),
        baseline=Variant("context_cir", {**_BOARD, "cc_weight": 0.0}),
        variants={
            "ConText-CIR": Variant("context_cir", _BOARD),
            "no reference negative": Variant("context_cir", {**_BOARD, "reference_negative": False}),
            # composir's first reading (text tokens query patches), where other words cannot compete.
            "text to image": Variant("context_cir", {**_BOARD, "direction": "text_to_image"}),
        },
        # The loss fixes a phrase attending differently inside its sentence than alone: without the
        # loss that difference must be there, else there is nothing for it to fix.
        # And the fusion must retrieve: at R@1 ~1 on multi a +1 gain is 3 of 300 queries, and a
        # fusion that has not learned to compose says nothing about what helps it compose.
        preconditions=(SubTask("baseline", "concept map shift", 5.0), Retrieves("R@1", ("multi",), 5.0)),
        # The fusion layers and pooling query start from scratch and the reference reaches the query
        # only through where its patches attend: at the board's 600 steps the baseline stays under
        # R@1 5 on multi (1.2); at 4x it reaches 6.7 (seed 0, docs/benchmarks.md).
        steps_factor=4.0,
        checks=(
            Gain("ConText-CIR", ("multi",), "R@1", 1.0),
            Shrinks("ConText-CIR", ("multi",), ("explicit",), "R@1"),
            LosesGain("no reference negative", "ConText-CIR", ("explicit", "multi", "implicit"), "R@1", keep=1.0),
        ),
        note=(
            "Baseline: the same fusion without the concept loss (cc_weight 0), as the paper's ablation. "
            "`multi` texts carry 2-3 edits, `explicit` one; 2 cross-attention layers at the board's size, "
            "fine-tuned 4 times the board's steps (its fusion starts from scratch)."
        ),
    )
)
