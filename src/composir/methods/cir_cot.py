"""CIR-CoT: a multimodal language model writes caption -> reasoning -> conclusion, then a ``<ret>``
token's last hidden state is the query embedding.

Sequence (left-padded): ``<image>`` x P (the reference's visual tokens, projected, spliced in at
these placeholders) + the modification text + ``<caption>`` c + ``<reason>`` r + ``<conclusion>`` o
+ ``<ret>``. Training is teacher-forced on the annotated chain (``extra["cot"]``: the synthetic
benchmark's own, or ``composir annotate-cot`` output): the contrastive loss between the ``<ret>``
embedding and the target's, plus ``lm_weight`` x the next-token loss on the chain and ``<ret>``
(prompt and visual-prefix positions are ignored). At inference (``mode``):

* ``reason``: the model writes the chain greedily (``transformers``' ``generate``, at most
  ``max_chain_tokens``, stopping at ``<ret>``; ``<ret>`` is appended when the limit cuts it off),
  then one forward pass over prompt + chain + ``<ret>`` gives the embedding. The chain is the
  explanation (``encode_query_explained``: search JSON, the web page).
* ``direct``: ``<ret>`` right after the prompt (no chain; for speed).
* ``zero_shot``: the generated conclusion embedded by the encoder's text tower against the
  encoder's image features of the targets.

Choices where the paper summary is silent (docs/methods.md):

* Back-end ``decoder``: the visual prefix is the encoder's Q-Former query outputs (BLIP-2's way of
  feeding an LLM; encoders without a Q-Former give their patch tokens), projected to a small
  ``Qwen2ForCausalLM`` trained from scratch (``lm_config``). Its tokenizer is word-level
  (``tokenizers``' ``WordLevel``) over every word the synthetic generator writes
  (``synth/vocabulary.py``), or any ``tokenizer.json`` given as ``tokenizer``: nothing is downloaded.
* Targets: ``target_side = lm`` embeds them by the same model's image path (visual prefix +
  ``<ret>``, the same projection), ``encoder`` by the shared image encoder.
* Chain ablations (``chain``): ``full``, ``no_reason``, ``no_caption``, ``none`` (trained to put
  ``<ret>`` right after the prompt: the paper's no-CoT baseline).
* Generated chains are cached per (reference pixels, text, mode) while the model is in eval mode
  (cleared when it trains again), so repeated queries never generate twice; targets never generate.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from composir.encoders.base import QFormerBackbone, TokenFeatures, Tokens
from composir.errors import ConfigError
from composir.methods.base import MethodConfig, RetrievalMethod
from composir.methods.claims import Claim, Gain, LosesGain, Shrinks, Variant, register_claim
from composir.methods.registry import register_method

IMAGE, CAPTION, REASON, CONCLUSION, RET = "<image>", "<caption>", "<reason>", "<conclusion>", "<ret>"
PAD, UNK = "<pad>", "<unk>"
SPECIALS = (PAD, UNK, IMAGE, CAPTION, REASON, CONCLUSION, RET)
SECTIONS = {"full": (CAPTION, REASON, CONCLUSION), "no_reason": (CAPTION, CONCLUSION),
            "no_caption": (REASON, CONCLUSION), "none": ()}  # fmt: skip
SECTION_KEYS = {CAPTION: "caption", REASON: "reasoning", CONCLUSION: "conclusion"}
MODES = ("reason", "direct", "zero_shot")
SMALL_LM = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "max_position_embeddings": 512}  # fmt: skip


@dataclass
class CIRCoTConfig(MethodConfig):
    chain: str = "full"  # full | no_reason | no_caption | none
    mode: str = "reason"  # reason | direct | zero_shot (inference)
    lm_weight: float = 1.0
    target_side: str = "lm"  # lm | encoder
    lm_config: dict[str, Any] = field(default_factory=dict)  # Qwen2Config fields over SMALL_LM
    tokenizer: str | None = None  # a tokenizer.json; None: word-level over the synthetic vocabulary
    max_text_tokens: int = 32
    max_section_tokens: int = 48
    max_chain_tokens: int = 128
    chain_cache_size: int = 20_000

    def validate(self) -> None:
        if self.chain not in SECTIONS:
            raise ConfigError(f"cir_cot.chain must be one of {sorted(SECTIONS)}, got {self.chain!r}")
        if self.mode not in MODES:
            raise ConfigError(f"cir_cot.mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.target_side not in ("lm", "encoder"):
            raise ConfigError(f"cir_cot.target_side must be lm or encoder, got {self.target_side!r}")
        if self.lm_weight < 0:
            raise ConfigError(f"cir_cot.lm_weight must not be negative, got {self.lm_weight}")
        if min(self.max_text_tokens, self.max_section_tokens, self.max_chain_tokens) < 1:
            raise ConfigError("cir_cot.max_text_tokens, .max_section_tokens and .max_chain_tokens must be >= 1")
        if self.mode == "reason" and self.chain == "none":
            raise ConfigError("cir_cot.mode=reason needs a chain to generate (chain=none is trained for mode=direct)")


def build_tokenizer(path: str | None):
    """A fast tokenizer with the chain's special tokens: ``path`` (a tokenizer.json) or word-level
    over the synthetic generator's vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if path is None:
        from composir.synth.vocabulary import vocabulary

        vocab = {token: i for i, token in enumerate((*SPECIALS, *vocabulary()))}
        core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        core.normalizer = normalizers.Lowercase()
        core.pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        try:
            core = Tokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises plain Exceptions for a missing or bad file
            raise ConfigError(f"cir_cot.tokenizer: cannot read {path!r} ({exc})") from exc
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK)
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIALS if t not in (PAD, UNK)]})
    return tok


@dataclass
class Chain:
    """A chain's sections as text (what the model wrote or was given)."""

    caption: str = ""
    reasoning: str = ""
    conclusion: str = ""

    def to_json(self) -> dict[str, str]:
        return {"caption": self.caption, "reasoning": self.reasoning, "conclusion": self.conclusion}


@register_method("cir_cot")
class CIRCoT(RetrievalMethod):
    config_class = CIRCoTConfig

    def __init__(self, encoder, config: CIRCoTConfig | None = None):
        super().__init__(encoder, config)
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg: CIRCoTConfig = self.config
        cfg.validate()
        if not isinstance(encoder, (QFormerBackbone, TokenFeatures)):
            raise ConfigError(f"cir_cot needs visual tokens from the encoder; {encoder.name!r} gives none")
        self.tokenizer = build_tokenizer(cfg.tokenizer)
        self.ids = {t: self.tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
        options = {**SMALL_LM, **cfg.lm_config}
        fixed = {"vocab_size": len(self.tokenizer), "pad_token_id": self.ids[PAD], "tie_word_embeddings": True}
        lm_cfg = Qwen2Config(**{**fixed, **options})
        self.lm = Qwen2ForCausalLM(lm_cfg)
        width = lm_cfg.hidden_size
        with torch.no_grad():
            size = encoder.image_size
            visual_width = self._visual_tokens(torch.zeros(1, 1, 3, size, size)).shape[-1]
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_width), nn.Linear(visual_width, width))
        self.ret_proj = nn.Linear(width, encoder.embed_dim)
        self._chains: OrderedDict[tuple, list[int]] = OrderedDict()

    @property
    def ddp_find_unused_parameters(self) -> bool:
        return True  # the encoder's text tower serves only zero_shot

    def train(self, mode: bool = True):
        if mode:
            self._chains.clear()  # chains written by weights that are about to change
        return super().train(mode)

    # ------------------------------------------------------------------------------ sequences
    def _visual_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        if isinstance(self.encoder, QFormerBackbone):
            return self.encoder.image_query_outputs(frames)
        return self.encoder.image_tokens(frames)[0]

    def visual_prefix(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, P, width): the reference's visual tokens in the language model's input space."""
        return self.visual_proj(self._visual_tokens(frames))

    def _words(self, text: str, limit: int) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][:limit]

    def prompt_ids(self, text: str, prefix_len: int) -> list[int]:
        return [self.ids[IMAGE]] * prefix_len + self._words(text, self.config.max_text_tokens)

    @property
    def opener(self) -> list[int]:
        """The chain's first section token: it ends the prompt (the text alone cannot say where it
        ends), given in training and generation alike, never predicted."""
        sections = SECTIONS[self.config.chain]
        return [self.ids[sections[0]]] if sections else []

    def chain_ids(self, chain: dict[str, str] | Chain | None) -> list[int]:
        """The configured sections of an annotated chain (``extra["cot"]``), each opened by its token."""
        if isinstance(chain, Chain):
            chain = chain.to_json()
        chain = chain or {}
        out: list[int] = []
        for token in SECTIONS[self.config.chain]:
            out += [
                self.ids[token],
                *self._words(str(chain.get(SECTION_KEYS[token], "")), self.config.max_section_tokens),
            ]
        return out

    def pad_left(self, rows: list[list[int]], labels: list[list[int]] | None = None):
        """(ids, attention mask, position ids[, labels]) with every row ending at the last column."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.ids[PAD], dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        lab = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, length - len(row) :] = torch.tensor(row)
            mask[i, length - len(row) :] = 1
            if labels is not None:
                lab[i, length - len(row) :] = torch.tensor(labels[i])
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return ids, mask, positions, lab

    def embed(self, ids: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the visual prefix spliced in at the ``<image>`` placeholders."""
        x = self.lm.get_input_embeddings()(ids)
        slots = (ids == self.ids[IMAGE]).unsqueeze(-1)
        return x.masked_scatter(slots, prefix.to(x.dtype))

    def _ret_embedding(self, rows: list[list[int]], prefix: torch.Tensor, labels=None):
        """(normalised <ret> embedding (B, D), LM loss or None) of sequences that end with ``<ret>``."""
        device = prefix.device
        ids, mask, positions, lab = (t.to(device) for t in self.pad_left(rows, labels))
        out = self.lm(
            inputs_embeds=self.embed(ids, prefix),
            attention_mask=mask,
            position_ids=positions,
            labels=lab if labels is not None else None,
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1][:, -1]
        return F.normalize(self.ret_proj(hidden), dim=-1), out.loss

    # ------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_chains(self, prefix: torch.Tensor, texts: list[str]) -> list[list[int]]:
        """Greedy chains (token ids from the opener on, without ``<ret>``) for each (visual prefix, text)."""
        rows = [self.prompt_ids(t, prefix.shape[1]) + self.opener for t in texts]
        ids, mask, _, _ = (t.to(prefix.device) for t in self.pad_left(rows))
        new = self.lm.generate(
            inputs_embeds=self.embed(ids, prefix),
            attention_mask=mask,
            max_new_tokens=self.config.max_chain_tokens,
            do_sample=False,
            eos_token_id=self.ids[RET],
            pad_token_id=self.ids[PAD],
        )
        chains = []
        for row in new.tolist():
            chain = list(self.opener)
            for token in row:
                if token in (self.ids[RET], self.ids[PAD]):
                    break
                chain.append(token)
            chains.append(chain)
        return chains

    def parse_chain(self, ids: list[int]) -> Chain:
        """Section texts of a generated chain (a section the model did not open stays empty)."""
        parts: dict[str, list[int]] = {}
        current = None
        for token in ids:
            name = next((SECTION_KEYS[s] for s in SECTION_KEYS if self.ids[s] == token), None)
            if name is not None:
                current = name
                parts.setdefault(name, [])
            elif current is not None:
                parts[current].append(token)
        return Chain(**{k: self.tokenizer.decode(v, skip_special_tokens=True) for k, v in parts.items()})

    def _cached_chains(self, frames: torch.Tensor, prefix: torch.Tensor, texts: list[str], index) -> list[list[int]]:
        """Chains for query i = (frames[index[i]], texts[i]), generating only those not seen before."""
        keys = [(_pixels_key(frames[r]), t, self.config.mode) for r, t in zip(index.tolist(), texts)]
        todo = [i for i, k in enumerate(keys) if k not in self._chains]
        if todo:
            fresh = self.generate_chains(prefix[index[todo]], [texts[i] for i in todo])
            for i, chain in zip(todo, fresh):
                self._chains[keys[i]] = chain
        out = []
        for k in keys:
            self._chains.move_to_end(k)
            out.append(self._chains[k])
        while len(self._chains) > self.config.chain_cache_size:
            self._chains.popitem(last=False)
        return out

    # ------------------------------------------------------------------------------ retrieval
    def _texts(self, tokens: Tokens) -> list[str]:
        if tokens.texts is None:
            raise ConfigError("cir_cot reads the texts themselves: tokenize them with the run's encoder")
        return tokens.texts

    def encode_queries_explained(
        self, frames: torch.Tensor, tokens: Tokens, index: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        cfg: CIRCoTConfig = self.config
        texts = self._texts(tokens)
        prefix = self.visual_prefix(frames)
        chains = [[] for _ in texts] if cfg.mode == "direct" else self._cached_chains(frames, prefix, texts, index)
        parsed = [self.parse_chain(c) for c in chains]
        explanations = [{"chain": p.to_json(), "mode": cfg.mode} for p in parsed]
        if cfg.mode == "zero_shot":
            conclusion = self.encoder.tokenize([p.conclusion for p in parsed]).to(frames.device)
            return F.normalize(self.encoder.encode_text(conclusion), dim=-1), explanations
        rows = [self.prompt_ids(t, prefix.shape[1]) + c + [self.ids[RET]] for t, c in zip(texts, chains)]
        return self._ret_embedding(rows, prefix[index])[0], explanations

    def encode_queries(self, frames: torch.Tensor, tokens: Tokens, reference_index: torch.Tensor) -> torch.Tensor:
        return self.encode_queries_explained(frames, tokens, reference_index)[0]

    def encode_query(self, frames: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        return self.encode_queries(frames, tokens, torch.arange(len(frames), device=frames.device))

    def encode_query_explained(self, frames: torch.Tensor, tokens: Tokens):
        return self.encode_queries_explained(frames, tokens, torch.arange(len(frames), device=frames.device))

    def encode_target(self, frames: torch.Tensor, tokens: Any = None) -> torch.Tensor:
        if self.config.target_side == "encoder" or self.config.mode == "zero_shot":
            return F.normalize(self.encoder.encode_image(frames), dim=-1)
        prefix = self.visual_prefix(frames)
        rows = [[self.ids[IMAGE]] * prefix.shape[1] + [self.ids[RET]]] * len(frames)
        return self._ret_embedding(rows, prefix)[0]

    # ------------------------------------------------------------------------------ training
    def training_rows(self, batch: dict[str, Any], prefix_len: int) -> tuple[list[list[int]], list[list[int]]]:
        """Teacher-forced sequences (prompt + annotated chain + ``<ret>``) and their LM labels: -100
        on the visual prefix, the text and the opener (given, not predicted), the tokens themselves after."""
        rows, labels = [], []
        for text, extra in zip(batch["text"], batch["extra"]):
            prompt = self.prompt_ids(text, prefix_len)
            chain = [*self.chain_ids((extra or {}).get("cot")), self.ids[RET]]
            given = len(prompt) + len(self.opener)
            rows.append(prompt + chain)
            labels.append([-100] * given + chain[len(self.opener) :])
        return rows, labels

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg: CIRCoTConfig = self.config
        prefix = self.visual_prefix(batch["reference"])
        rows, labels = self.training_rows(batch, prefix.shape[1])
        query, lm_loss = self._ret_embedding(rows, prefix, labels)
        out = {"contrastive": self.contrastive(query, self.encode_target(batch["target"]))}
        if cfg.lm_weight > 0:
            out["lm"] = cfg.lm_weight * lm_loss
        return out


def _pixels_key(frames: torch.Tensor) -> str:
    return hashlib.sha1(frames.detach().float().cpu().numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------ the claim
_BOARD: dict[str, Any] = {}
register_claim(
    Claim(
        paper="CIR-CoT",
        statement=(
            "Writing caption -> reasoning -> conclusion before the retrieval token beats retrieving "
            "directly, most on the hardest texts (multi-edit and implicit)."
        ),
        baseline=Variant("cir_cot", {**_BOARD, "chain": "none", "mode": "direct"}),
        variants={
            "CIR-CoT (reason)": Variant("cir_cot", _BOARD),
            "trained with the chain, direct at inference": Variant("cir_cot", {**_BOARD, "mode": "direct"}),
            "chain without reasoning": Variant("cir_cot", {**_BOARD, "chain": "no_reason"}),
            "chain without caption": Variant("cir_cot", {**_BOARD, "chain": "no_caption"}),
        },
        checks=(
            Gain("CIR-CoT (reason)", ("multi", "implicit"), "R@1", 1.0),
            Shrinks("CIR-CoT (reason)", ("multi", "implicit"), ("explicit",), "R@1"),
            LosesGain("chain without reasoning", "CIR-CoT (reason)", ("multi", "implicit"), "R@1"),
        ),
        note=(
            "Baseline: the same model trained without a chain (`<ret>` right after the prompt) and used "
            "directly, as the paper's no-CoT ablation."
        ),
    )
)
