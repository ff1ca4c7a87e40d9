"""Causal language models that read an image first: CIR-CoT's two back-ends.

Both take a sequence of token ids in which the reference image's place is held by placeholder
tokens, and return the last position's hidden state (and the LM loss on labelled positions), or
generate greedily from such a prompt. ``VisualPrefix`` is what fills the placeholders.

* ``decoder``: a small ``Qwen2ForCausalLM`` trained from scratch. The visual tokens are the
  composir encoder's Q-Former query outputs (BLIP-2's way of feeding an LLM; encoders without a
  Q-Former give their patch tokens), projected to the LM's width and spliced into the input
  embeddings at the ``<image>`` placeholders. Its tokenizer is word-level over the synthetic
  generator's vocabulary, or any ``tokenizer.json``: nothing is downloaded.
* ``qwen2_vl``: a ``Qwen2VLForConditionalGeneration`` with its own vision tower, M-RoPE and
  tokenizer: a real checkpoint (``lm_path``: a hub id in the local cache or a folder) or, with no
  path, a random model of the same class from ``lm_config`` (what the tests build). The
  reference frames, normalised by the composir encoder, are turned back into pixels and given to
  the model's own image processor (``Qwen2VLImageProcessor``); a video gives its middle frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from composir.encoders.base import QFormerBackbone, TokenFeatures
from composir.errors import ConfigError

SMALL_DECODER = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "max_position_embeddings": 512}  # fmt: skip
# A Qwen2-VL of the real class at toy size: text 64 wide, 2 layers; vision 1 block, 32 wide.
TINY_QWEN2VL: dict[str, dict[str, Any]] = {
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "max_position_embeddings": 1024,
                    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}},
    "vision_config": {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2},
}  # fmt: skip
QWEN_VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")


PAD, UNK = "<pad>", "<unk>"
BACKENDS = ("decoder", "qwen2_vl")


def word_level_tokenizer(path: str | None, specials: tuple[str, ...]):
    """A fast tokenizer with ``specials``: ``path`` (a tokenizer.json) or word-level over the
    synthetic generator's vocabulary (offline, and small enough for a from-scratch decoder)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if path is None:
        from composir.synth.vocabulary import vocabulary

        vocab = {token: i for i, token in enumerate((PAD, UNK, *specials, *vocabulary()))}
        core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        core.normalizer = normalizers.Lowercase()
        core.pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        try:
            core = Tokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises plain Exceptions for a missing or bad file
            raise ConfigError(f"cir_cot.tokenizer: cannot read {path!r} ({exc})") from exc
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK)
    tok.add_special_tokens({"extra_special_tokens": list(specials)})
    return tok


def checkpoint_tokenizer(path: str, specials: tuple[str, ...]):
    """The tokenizer saved with a checkpoint (``lm_path``), with ``specials`` added."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(_missing(path, exc)) from exc
    tok.add_special_tokens({"extra_special_tokens": list(specials)}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _missing(path: str, exc: Exception) -> str:
    return (
        f"cir_cot.lm_path: nothing loadable at {path!r} ({str(exc).splitlines()[0]}); give a local folder "
        f"written by save_pretrained, or a hub id already in the cache (`hf download {path}` on a "
        "machine with network, then copy ~/.cache/huggingface here)"
    )


def build_causal_lm(
    backend: str,
    encoder,
    specials: tuple[str, ...],
    tokenizer: str | None = None,
    lm_path: str | None = None,
    lm_config: dict[str, Any] | None = None,
    freeze_vision: bool = True,
) -> CausalLM:
    """The back-end by name, with its tokenizer (``specials`` added)."""
    lm_config = lm_config or {}
    if backend == "decoder":
        return ScratchDecoder(
            encoder, word_level_tokenizer(tokenizer, (ScratchDecoder.image_token, *specials)), lm_config
        )
    if backend == "qwen2_vl":
        if lm_path is not None:
            tok = checkpoint_tokenizer(lm_path, specials)
        else:
            tok = word_level_tokenizer(tokenizer, (*QWEN_VISION_TOKENS, *specials))
        return Qwen2VLDecoder(encoder, tok, lm_path, lm_config, freeze_vision)
    raise ConfigError(f"cir_cot.backend must be one of {list(BACKENDS)}, got {backend!r}")


@dataclass
class VisualPrefix:
    """What fills one prompt's image placeholders, for a batch: ``embeds`` (B, P, width) spliced
    into the input embeddings (``decoder``), or ``pixels`` (B, N, D) with their ``grid`` (B, 3)
    for a model with its own vision tower (``qwen2_vl``). ``length``: placeholders per item."""

    length: int
    embeds: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    grid: torch.Tensor | None = None

    def __getitem__(self, index) -> VisualPrefix:
        pick = {k: getattr(self, k)[index] for k in ("embeds", "pixels", "grid") if getattr(self, k) is not None}
        return replace(self, **pick)

    def __len__(self) -> int:
        return len(self.embeds if self.embeds is not None else self.grid)


class CausalLM(nn.Module):
    """The interface CIR-CoT uses; ``tokenizer`` carries the chain's special tokens."""

    image_token: str
    tokenizer: Any

    @property
    def width(self) -> int:
        raise NotImplementedError

    def prefix(self, frames: torch.Tensor) -> VisualPrefix:
        raise NotImplementedError

    def image_slots(self, length: int) -> list[int]:
        """The prompt's tokens standing for one image of ``length`` visual positions."""
        return [self.tokenizer.convert_tokens_to_ids(self.image_token)] * length

    def hidden(self, ids, mask, prefix: VisualPrefix, labels=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(last position's final hidden state (B, width), LM loss on ``labels`` != -100 or None)."""
        raise NotImplementedError

    def logits(self, ids, mask, prefix: VisualPrefix) -> torch.Tensor:
        """Next-token logits at every position (B, L, vocabulary)."""
        raise NotImplementedError

    def generate(
        self, ids, mask, prefix: VisualPrefix, max_new_tokens: int, eos_id: int, rules: GenerationRules | None = None
    ) -> list[list[int]]:
        """The new tokens only, greedy (under ``rules``: logits processors, no repeated n-grams)."""
        raise NotImplementedError


@dataclass
class GenerationRules:
    """Constraints on greedy decoding, as transformers' ``generate`` takes them."""

    processors: list[Any]  # transformers LogitsProcessor instances
    no_repeat_ngram_size: int = 0

    def kwargs(self) -> dict[str, Any]:
        from transformers import LogitsProcessorList

        out: dict[str, Any] = {"logits_processor": LogitsProcessorList(self.processors)}
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return out


class ScratchDecoder(CausalLM):
    image_token = "<image>"

    def __init__(self, encoder, tokenizer, lm_config: dict[str, Any]):
        super().__init__()
        from transformers import Qwen2Config, Qwen2ForCausalLM

        if not isinstance(encoder, (QFormerBackbone, TokenFeatures)):
            raise ConfigError(
                f"cir_cot's decoder back-end needs visual tokens from the encoder; {encoder.name!r} has none"
            )
        self.encoder, self.tokenizer = encoder, tokenizer
        fixed = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": True}
        self.lm = Qwen2ForCausalLM(Qwen2Config(**{**fixed, **SMALL_DECODER, **lm_config}))
        with torch.no_grad():
            size = encoder.image_size  # type: ignore[union-attr]  # checked: it has visual tokens
            visual_width = self._visual_tokens(torch.zeros(1, 1, 3, size, size)).shape[-1]
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_width), nn.Linear(visual_width, self.width))

    @property
    def width(self) -> int:
        return self.lm.config.hidden_size

    def _visual_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, QFormerBackbone):
            return self.encoder.image_query_outputs(frames)
        return self.encoder.image_tokens(frames)[0]

    def prefix(self, frames: torch.Tensor) -> VisualPrefix:
        embeds = self.visual_proj(self._visual_tokens(frames))
        return VisualPrefix(embeds.shape[1], embeds=embeds)

    def embed(self, ids: torch.Tensor, prefix: VisualPrefix) -> torch.Tensor:
        """Token embeddings with the visual prefix spliced in at the ``<image>`` placeholders."""
        x = self.lm.get_input_embeddings()(ids)
        slots = (ids == self.tokenizer.convert_tokens_to_ids(self.image_token)).unsqueeze(-1)
        return x.masked_scatter(slots, prefix.embeds.to(x.dtype))

    def hidden(self, ids, mask, prefix: VisualPrefix, labels=None):
        positions = (mask.cumsum(1) - 1).clamp_min(0)  # left padding: each row counts from its start
        out = self.lm(inputs_embeds=self.embed(ids, prefix), attention_mask=mask, position_ids=positions,
                      labels=labels, output_hidden_states=True)  # fmt: skip
        return out.hidden_states[-1][:, -1], out.loss

    def logits(self, ids, mask, prefix: VisualPrefix) -> torch.Tensor:
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return self.lm(inputs_embeds=self.embed(ids, prefix), attention_mask=mask, position_ids=positions).logits

    def generate(
        self, ids, mask, prefix: VisualPrefix, max_new_tokens: int, eos_id: int, rules: GenerationRules | None = None
    ) -> list[list[int]]:
        constraints = rules.kwargs() if rules else {}
        with warnings.catch_warnings():  # n-grams counted over the new tokens only is what is meant
            warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")
            new = self.lm.generate(inputs_embeds=self.embed(ids, prefix), attention_mask=mask, do_sample=False,
                                   max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                                   pad_token_id=self.tokenizer.pad_token_id, **constraints)  # fmt: skip
        return new.tolist()  # generating from embeddings returns the new tokens only


class Qwen2VLDecoder(CausalLM):
    image_token = "<|image_pad|>"

    def __init__(self, encoder, tokenizer, path: str | None, lm_config: dict[str, Any], freeze_vision: bool):
        super().__init__()
        from transformers import Qwen2VLImageProcessor

        self.tokenizer = tokenizer
        self.lm = self._load(path, lm_config)
        self.processor = Qwen2VLImageProcessor()
        spec = encoder.cache_spec() if hasattr(encoder, "cache_spec") else {}
        self.register_buffer("mean", torch.tensor(spec.get("mean", (0.0, 0.0, 0.0))).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.get("std", (1.0, 1.0, 1.0))).view(3, 1, 1), persistent=False)
        if freeze_vision:
            self.lm.model.visual.requires_grad_(False)

    def _load(self, path: str | None, lm_config: dict[str, Any]):
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        tok = self.tokenizer
        if path is None:
            ids = {f"{k}_token_id": tok.convert_tokens_to_ids(t)
                   for k, t in zip(("vision_start", "image", "vision_end", "video"), QWEN_VISION_TOKENS)}  # fmt: skip
            text = {**TINY_QWEN2VL["text_config"], **lm_config.get("text_config", {})}
            text |= {
                "vocab_size": len(tok),
                "pad_token_id": tok.pad_token_id,
                "bos_token_id": None,
                "eos_token_id": None,
            }
            vision = {**TINY_QWEN2VL["vision_config"], **lm_config.get("vision_config", {})}
            vision["hidden_size"] = text["hidden_size"]  # the merger's output is the LM's input width
            return Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
        try:
            model = Qwen2VLForConditionalGeneration.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(_missing(path, exc)) from exc
        if len(tok) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tok))  # room for the chain's special tokens
        return model

    @property
    def width(self) -> int:
        return self.lm.config.get_text_config().hidden_size

    def image_slots(self, length: int) -> list[int]:
        start, pad, end = (self.tokenizer.convert_tokens_to_ids(t) for t in QWEN_VISION_TOKENS[:3])
        return [start, *[pad] * length, end]

    @torch.no_grad()
    def prefix(self, frames: torch.Tensor) -> VisualPrefix:
        frame = frames[:, frames.shape[1] // 2]  # one image per item: a video gives its middle frame
        pixels = (frame * self.std.to(frame) + self.mean.to(frame)).clamp(0, 1).float().cpu()
        out = self.processor(images=list(pixels), do_rescale=False, return_tensors="pt")
        grid = out["image_grid_thw"].to(frames.device)
        patches = out["pixel_values"].view(len(frames), -1, out["pixel_values"].shape[-1]).to(frames.device)
        merge = self.lm.config.vision_config.spatial_merge_size
        return VisualPrefix(int(grid[0].prod()) // merge**2, pixels=patches, grid=grid)

    def _inputs(self, ids, mask, prefix: VisualPrefix) -> dict[str, Any]:
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)  # M-RoPE: type 1 marks image positions
        return {"input_ids": ids, "attention_mask": mask, "image_grid_thw": prefix.grid,
                "pixel_values": prefix.pixels.flatten(0, 1).to(self.lm.dtype),
                "mm_token_type_ids": (ids == image_id).int()}  # fmt: skip

    def hidden(self, ids, mask, prefix: VisualPrefix, labels=None):
        out = self.lm(**self._inputs(ids, mask, prefix), labels=labels, output_hidden_states=True)
        return out.hidden_states[-1][:, -1], out.loss

    def logits(self, ids, mask, prefix: VisualPrefix) -> torch.Tensor:
        return self.lm(**self._inputs(ids, mask, prefix)).logits

    def generate(
        self, ids, mask, prefix: VisualPrefix, max_new_tokens: int, eos_id: int, rules: GenerationRules | None = None
    ) -> list[list[int]]:
        out = self.lm.generate(**self._inputs(ids, mask, prefix), do_sample=False, max_new_tokens=max_new_tokens,
                               eos_token_id=eos_id, pad_token_id=self.tokenizer.pad_token_id,
                               **(rules.kwargs() if rules else {}))  # fmt: skip
        return out[:, ids.shape[1] :].tolist()  # generating from ids returns prompt + new tokens
