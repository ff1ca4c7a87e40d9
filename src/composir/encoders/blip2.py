"""BLIP-2 feature extractor (``transformers``' ``Blip2ForImageTextRetrieval``): ViT + Q-Former with
its learned query tokens and ITC projections, as used by CoVR-2, SPRC and IMAGINE.

- ``encode_image``: Q-Former query outputs over the ViT tokens -> ``vision_projection`` ->
  mean over the query tokens (B, D). ``image_query_features`` keeps the (B, Q, D) tokens.
- ``encode_text``: the Q-Former in text-only mode, first token -> ``text_projection``.
- ``encode_query``: the multimodal fusion of CoVR-2/SPRC: query tokens and text tokens go
  through the Q-Former together, cross-attending to the reference's ViT tokens; the query-token
  outputs -> ``text_projection`` -> mean (IMAGINE's average pooling; ``fusion_pool="cls"``
  takes the first text token of that same pass instead). SPRC's query is another computation (a
  second, image-free pass: ``refine_with_text``; the ``qformer_fusion`` method's ``query_pool: sprc``).
- Videos (T > 1): the ViT runs per frame; the frame tokens are averaged (``video_pooling="mean"``,
  CoVR's frame averaging) or concatenated (``"concat"``) before the Q-Former cross-attends to them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from composir.encoders import preprocessing as prep
from composir.encoders.base import Encoder, Tokens
from composir.encoders.registry import register_encoder
from composir.errors import ConfigError, WeightsNotFound

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CHECKPOINT = "Salesforce/blip2-itm-vit-g"


@dataclass
class Blip2Options:
    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    max_text_length: int = 64
    video_pooling: str = "mean"  # "mean" or "concat" of frame tokens
    fusion_pool: str = "mean"  # "mean" of query tokens or "cls" (first text token)
    gradient_checkpointing: bool = False
    # The peers' preprocessing (encoders/preprocessing.py): LAVIS/CoVR resize to a square; SPRC
    # pads to ratio 1.25 and crops; texts through BLIP's pre_caption (CoVR 30 words, SPRC 50).
    target_pad: float | None = None
    resize: str = "square"
    caption_words: int | None = None
    # The epsilon of the LayerNorm after the ViT. LAVIS's ``ln_vision`` is a plain nn.LayerNorm
    # (1e-5); transformers' ``post_layernorm`` takes the vision config's layer_norm_eps (1e-6), which
    # moves its output by ~1e-4. Weights from LAVIS-trained peers (CoVR-2, SPRC) compute with 1e-5;
    # None keeps the loaded model's.
    ln_vision_eps: float | None = None

    def __post_init__(self) -> None:
        prep.check_policy(self.target_pad, self.resize, self.caption_words, "blip2")
        if self.ln_vision_eps is not None and not 0 < self.ln_vision_eps < 1:
            raise ConfigError(f"blip2 ln_vision_eps must be in (0, 1), got {self.ln_vision_eps!r}")


class Blip2Encoder(Encoder):
    name = "blip2"

    def __init__(self, model, tokenizer, options: Blip2Options | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.options = opts = options or Blip2Options()
        self.image_size = opts.image_size
        self.embed_dim = model.config.image_text_hidden_size
        self.num_query_tokens = model.config.num_query_tokens
        self.qformer_width = model.config.qformer_config.hidden_size
        self.pad_token_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)
        # True while inputs are cached vision-tower tokens (composir.cache) instead of pixels.
        self.cached_vision = False
        self.register_buffer("mean", torch.tensor(opts.mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(opts.std).view(3, 1, 1), persistent=False)
        # composir never runs BLIP-2's image-text matching head: frozen, so that every trainable
        # parameter gets a gradient (DDP then needs no search for unused ones).
        model.itm_head.requires_grad_(False)
        if opts.ln_vision_eps is not None:
            model.vision_model.post_layernorm.eps = opts.ln_vision_eps
        if opts.gradient_checkpointing:
            # transformers 5 renamed it; older releases only have the first name.
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()

    def lock_vision_tower(self) -> None:
        self.model.vision_model.requires_grad_(False)

    # ---------------------------------------------------------------------------- inputs
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if self.options.target_pad is not None:
            image = prep.target_pad(image, self.options.target_pad)
        image = prep.resize(image, self.image_size, self.options.resize).convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std

    def tokenize(self, texts: list[str]) -> Tokens:
        texts = list(texts)
        if self.options.caption_words is not None:
            texts = [prep.pre_caption(t, self.options.caption_words) for t in texts]
        if hasattr(self.tokenizer, "with_offsets"):  # the tiny encoder's word-hash tokenizer
            ids, offsets = self.tokenizer.with_offsets(texts)
        else:
            fast = bool(getattr(self.tokenizer, "is_fast", False))
            out = self.tokenizer(
                texts,
                padding="max_length",
                truncation=True,
                max_length=self.options.max_text_length,
                return_tensors="pt",
                return_offsets_mapping=fast,
            )
            ids = out["input_ids"]
            # A slow tokenizer has no offsets: no token can be placed in its text.
            offsets = out["offset_mapping"].tolist() if fast else [[(0, 0)] * ids.shape[1] for _ in texts]
            offsets = [[tuple(span) for span in row] for row in offsets]
        mask = (ids != self.pad_token_id).long()
        mask[:, 0] = 1  # the first token ([CLS]) always attends
        return Tokens(ids, mask, offsets, texts)

    # ---------------------------------------------------------------------------- feature cache
    def vision_tower(self) -> torch.nn.Module:
        """The module a feature cache stands in for (``composir cache``), fingerprinted with ``cache_spec``."""
        return self.model.vision_model

    def cache_spec(self) -> dict[str, Any]:
        """Everything besides the tower's weights that shapes its output."""
        spec = {
            "image_size": self.image_size,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "target_pad": self.options.target_pad,
            "resize": self.options.resize,
        }
        if self.options.ln_vision_eps is not None:  # only when set: caches made before it keep their fingerprint
            spec["ln_vision_eps"] = self.options.ln_vision_eps
        return spec

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """The tower's tokens for each frame: (B, T, N, C)."""
        b, t = frames.shape[:2]
        tokens = self.model.vision_model(pixel_values=frames.flatten(0, 1)).last_hidden_state
        return tokens.view(b, t, *tokens.shape[1:])

    # ---------------------------------------------------------------------------- towers
    def vision_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """ViT tokens, frames pooled: (B, N, C) for ``mean``, (B, T*N, C) for ``concat``."""
        if self.cached_vision:
            if frames.dim() == 3:  # frame-pooled cache rows: (B, N, C)
                return frames
            tokens = frames  # per-frame cache rows: (B, T, N, C)
        else:
            b, t = frames.shape[:2]
            pixel = frames.flatten(0, 1).to(self.model.query_tokens.dtype)
            tokens = self.model.vision_model(pixel_values=pixel).last_hidden_state
            tokens = tokens.view(b, t, *tokens.shape[1:])
        if tokens.shape[1] == 1:
            return tokens[:, 0]
        if self.options.video_pooling == "concat":
            return tokens.flatten(1, 2)
        return tokens.mean(1)

    def image_query_outputs(self, frames: torch.Tensor | None, memory: torch.Tensor | None = None) -> torch.Tensor:
        """Q-Former query-token outputs for images/videos: (B, Q, width)."""
        # ``memory``: the frames' vision tokens when the caller already has them (one ViT pass, not two).
        memory = self.vision_tokens(frames) if memory is None else memory
        queries = self.model.query_tokens.expand(memory.shape[0], -1, -1)
        out = self.model.qformer(
            query_embeds=queries,
            encoder_hidden_states=memory.to(queries.dtype),
            encoder_attention_mask=torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device),
        )
        return out.last_hidden_state

    def project_image(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.vision_projection(hidden)

    def project_text(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.text_projection(hidden)

    def query_token_init(self) -> torch.Tensor:
        return self.model.query_tokens.detach()[0]

    def image_query_features(self, frames: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_query_outputs(frames))

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        return self.image_query_features(frames).mean(1)

    def text_hidden(self, tokens: Tokens) -> torch.Tensor:
        embeds = self.model.embeddings(input_ids=tokens.ids)
        out = self.model.qformer(query_embeds=embeds, query_length=0, attention_mask=tokens.mask)
        return out.last_hidden_state

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return self.model.text_projection(self.text_hidden(tokens)[:, 0])

    def text_tokens(self, tokens: Tokens) -> torch.Tensor:  # TokenFeatures
        return self.text_hidden(tokens)

    def image_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # TokenFeatures
        memory = self.vision_tokens(frames)
        return memory, self.project_image(self.image_query_outputs(None, memory)).mean(1)

    def fusion_hidden(
        self,
        frames: torch.Tensor | None,
        tokens: Tokens | None,
        memory: torch.Tensor | None = None,
        return_attentions: bool = False,
    ):
        """Joint query+text Q-Former outputs cross-attending to the reference: (B, Q + L, width);
        without ``tokens``, the query tokens alone: (B, Q, width) (an uncaptioned image).

        ``return_attentions``: also the cross-attention maps, one (B, heads, Q, N) tensor per
        cross-attention layer: how each query token attends to the reference's vision tokens.
        """
        # ``memory``: the frames' vision tokens when the caller already has them (one ViT pass, not two).
        memory = self.vision_tokens(frames) if memory is None else memory
        if tokens is None and not return_attentions:
            return self.image_query_outputs(None, memory)
        b = memory.shape[0]
        queries = self.model.query_tokens.expand(b, -1, -1)
        query_mask = torch.ones(b, queries.shape[1], dtype=torch.long, device=memory.device)
        if tokens is None:  # as image_query_outputs: the query tokens go in as they are
            embeds, mask = queries, query_mask
        else:
            embeds = self.model.embeddings(input_ids=tokens.ids, query_embeds=queries)
            mask = torch.cat([query_mask, tokens.mask], dim=1)
        with self._eager_attention(return_attentions):
            out = self.model.qformer(
                query_embeds=embeds,
                query_length=queries.shape[1],
                attention_mask=mask,
                encoder_hidden_states=memory.to(queries.dtype),
                encoder_attention_mask=torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device),
                output_attentions=return_attentions,
            )
        if return_attentions:
            return out.last_hidden_state, [a for a in out.cross_attentions if a is not None]
        return out.last_hidden_state

    @contextlib.contextmanager
    def _eager_attention(self, wanted: bool) -> Iterator[None]:
        """The Q-Former's plain attention while maps are asked for: fused kernels (SDPA) return
        none. Only for that call, so every other pass keeps the configured kernel."""
        config = self.model.qformer.config
        before = config._attn_implementation
        if wanted:
            config._attn_implementation = "eager"
        try:
            yield
        finally:
            config._attn_implementation = before

    def refine_with_text(self, query_outputs: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """SPRC's second pass: [``query_outputs``; the text] through the Q-Former without the image,
        every position through the text feed-forward (LAVIS's BERT without encoder states; here
        ``query_length=0``): (B, Q + L, width)."""
        embeds = self.model.embeddings(input_ids=tokens.ids, query_embeds=query_outputs)
        query_mask = torch.ones(query_outputs.shape[:2], dtype=tokens.mask.dtype, device=tokens.mask.device)
        mask = torch.cat([query_mask, tokens.mask], dim=1)
        return self.model.qformer(query_embeds=embeds, query_length=0, attention_mask=mask).last_hidden_state

    def encode_query(self, frames: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        return self.pool_fusion(self.fusion_hidden(frames, tokens))

    def pool_fusion(self, hidden: torch.Tensor) -> torch.Tensor:
        """The composed feature from ``fusion_hidden``'s output (query-token mean or first text token)."""
        q = self.num_query_tokens
        if self.options.fusion_pool == "cls":
            return self.model.text_projection(hidden[:, q])
        return self.model.text_projection(hidden[:, :q]).mean(1)

    # ---------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """A folder that ``build_encoder("blip2", pretrained=path)`` loads back."""
        import json

        path = Path(path)
        self.model.save_pretrained(path)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(path)
        (path / "composir_blip2.json").write_text(json.dumps(asdict(self.options)))


def load_blip2(pretrained: str | None, config: dict[str, Any] | None = None) -> Blip2Encoder:
    """Real weights from the hub cache or a local folder (``HF_HUB_OFFLINE=1`` works when cached).

    ``config`` may hold Blip2Options fields, and ``model_config``: a Blip2Config dict to build a
    randomly initialised model of that shape (tests; or training from scratch) with ``tokenizer``
    (a path) for its vocabulary.
    """
    import json

    from transformers import AutoTokenizer, Blip2Config, Blip2ForImageTextRetrieval

    config = dict(config or {})
    model_config = config.pop("model_config", None)
    tokenizer_path = config.pop("tokenizer", None)
    options_path = Path(pretrained) / "composir_blip2.json" if pretrained and Path(pretrained).is_dir() else None
    saved = json.loads(options_path.read_text()) if options_path and options_path.is_file() else {}
    options = Blip2Options(**{**saved, **config})
    if model_config is not None and pretrained is None:
        model = Blip2ForImageTextRetrieval(Blip2Config(**model_config))
    else:
        model = _from_pretrained(Blip2ForImageTextRetrieval, pretrained or DEFAULT_CHECKPOINT)
    tokenizer = _from_pretrained(AutoTokenizer, tokenizer_path or pretrained or DEFAULT_CHECKPOINT)
    loaded: Any = model.config
    if options.image_size != loaded.vision_config.image_size:
        options.image_size = loaded.vision_config.image_size
    # Texts never longer than the Q-Former's position table.
    options.max_text_length = min(options.max_text_length, loaded.qformer_config.max_position_embeddings)
    return Blip2Encoder(model.float(), tokenizer, options)


def _from_pretrained(cls, where: str):
    """``cls.from_pretrained(where)``, or one line naming what was looked for and how to provide it."""
    try:
        return cls.from_pretrained(where)
    except (OSError, ValueError) as exc:
        raise WeightsNotFound(
            f"blip2: {where!r} could not be loaded ({str(exc).splitlines()[0][:160]}). Give --pretrained a local "
            "folder written by save_pretrained, or a hub id already in ~/.cache/huggingface (`hf download "
            f"{where}` on a machine with network, then copy the cache; HF_HUB_OFFLINE=1 uses it)"
        ) from exc


def _example(workdir: Path) -> Encoder:
    """A random two-layer BLIP-2 and a word-level BERT tokenizer saved in the hub's own layout, loaded
    back as a user's checkpoint folder is."""
    from transformers import BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval

    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = Blip2Config(
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        qformer_config={
            **layers,
            "vocab_size": 64,
            "max_position_embeddings": 32,
            "encoder_hidden_size": 32,
            "cross_attention_frequency": 1,
            "use_qformer_text_input": True,
        },
        num_query_tokens=4,
        image_text_hidden_size=16,
    )
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "make", "it", "red", "blue", "a", "the", "cat"]
    vocab = workdir / "vocab.txt"
    vocab.write_text("\n".join(words + [f"w{i}" for i in range(64 - len(words))]) + "\n")
    hub = workdir / "blip2-example"
    Blip2ForImageTextRetrieval(config).save_pretrained(hub)
    BertTokenizerFast(str(vocab)).save_pretrained(hub)
    return load_blip2(str(hub))


@register_encoder("blip2", example=_example)
def build_blip2(pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    """BLIP-2 (transformers' Blip2ForImageTextRetrieval): a hub id or a local folder."""
    return load_blip2(pretrained, config)
