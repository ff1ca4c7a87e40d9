"""open_clip backbones: any model name with a ``pretrained`` tag (from the user's cache; works
offline with ``HF_HUB_OFFLINE=1`` once cached) or a local checkpoint path.

``config``: ``model`` (the open_clip name, default ``RN50x4`` as CLIP4Cir), and optionally
``model_config`` (an architecture dict registered under that name: tests build small random
models this way).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from composir.encoders import preprocessing as prep
from composir.encoders.base import Encoder, Tokens
from composir.encoders.registry import register_encoder
from composir.errors import WeightsNotFound
from composir.utils.hub import OPENCLIP_DEFAULT_MODEL


class OpenClipEncoder(Encoder):
    name = "openclip"

    def __init__(
        self,
        model,
        preprocess,
        tokenizer,
        model_name: str,
        target_pad: float | None = None,
        caption_words: int | None = None,
    ):
        super().__init__()
        # The peers' preprocessing switches (encoders/preprocessing.py): CLIP4Cir pads to 1.25.
        self.target_pad = target_pad
        self.caption_words = caption_words
        self.model = model
        self._preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.embed_dim = int(
            model.text_projection.shape[1]
            if hasattr(model, "text_projection") and isinstance(model.text_projection, torch.Tensor)
            else model.visual.output_dim
        )
        size = model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)

    def lock_vision_tower(self) -> None:
        self.model.visual.requires_grad_(False)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if self.target_pad is not None:
            image = prep.target_pad(image, self.target_pad)
        return self._preprocess(image)

    def tokenize(self, texts: list[str]) -> Tokens:
        texts = list(texts)
        if self.caption_words is not None:
            texts = [prep.pre_caption(t, self.caption_words) for t in texts]
        ids = self.tokenizer(texts)
        offsets = [_align(self.tokenizer, text, row) for text, row in zip(texts, ids.tolist())]
        return Tokens(ids, (ids != 0).long(), offsets, texts)

    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        feats = self.model.encode_image(frames.flatten(0, 1))
        return feats.view(b, t, -1).mean(1)  # videos: mean of frame features

    def encode_text(self, tokens: Tokens) -> torch.Tensor:
        return self.model.encode_text(tokens.ids)

    def text_tokens(self, tokens: Tokens) -> torch.Tensor:  # TokenFeatures
        out = self.model.forward_intermediates(text=tokens.ids, text_indices=1, normalize_intermediates=True)
        return out["text_intermediates"][-1]

    def image_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # TokenFeatures
        """The last block's patch tokens (final norm applied) and the image feature, in one pass;
        videos: both averaged over frames."""
        b, t = frames.shape[:2]
        out = self.model.forward_intermediates(
            image=frames.flatten(0, 1), image_indices=1, normalize=False, normalize_intermediates=True,
            image_output_fmt="NLC",
        )  # fmt: skip
        patches = out["image_intermediates"][-1]
        return patches.view(b, t, *patches.shape[1:]).mean(1), out["image_features"].view(b, t, -1).mean(1)


def _align(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Character spans of open_clip BPE tokens in ``text``: each token's decoded piece is found in
    the lower-cased text from where the previous one ended (open_clip cleans and lower-cases text
    before BPE; a piece it cannot find, e.g. after ftfy changed a character, gets (0, 0))."""
    decoder = getattr(tokenizer, "decoder", None)
    if decoder is None:  # a tokenizer without a BPE table (hub tokenizers): no spans
        return [(0, 0)] * len(ids)
    special = {tokenizer.sot_token_id, tokenizer.eot_token_id, 0} if hasattr(tokenizer, "sot_token_id") else {0}
    lowered = text.lower()
    spans, cursor = [], 0
    for token in ids:
        piece = decoder.get(token, "") if token not in special else ""
        piece = piece.replace("</w>", "")
        if hasattr(tokenizer, "byte_decoder"):
            piece = bytearray(tokenizer.byte_decoder.get(c, 0) for c in piece).decode("utf-8", errors="ignore")
        start = lowered.find(piece, cursor) if piece else -1
        if start < 0:
            spans.append((0, 0))
            continue
        spans.append((start, start + len(piece)))
        cursor = start + len(piece)
    return spans


def load_openclip(pretrained: str | None, config: dict[str, Any] | None = None) -> OpenClipEncoder:
    import open_clip

    config = dict(config or {})
    name = config.pop("model", OPENCLIP_DEFAULT_MODEL)
    model_config = config.pop("model_config", None)
    quick_gelu = quick_gelu_for(name, pretrained, config.pop("quick_gelu", None))
    pad, words = config.pop("target_pad", None), config.pop("caption_words", None)
    prep.check_policy(pad, "shorter_side", words, "openclip")
    if config:
        raise ValueError(f"openclip: unknown config key(s) {sorted(config)}")
    _check_tag(name, pretrained, model_config)
    with tempfile.TemporaryDirectory(prefix="composir-openclip-") as folder:
        if model_config is not None:
            # open_clip only takes architectures from config files; it reads them when registered.
            (Path(folder) / f"{name}.json").write_text(json.dumps(model_config))
            open_clip.add_model_config(folder)
        logging.disable(logging.ERROR)  # open_clip logs the failure itself; ours is the one line shown
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, force_quick_gelu=quick_gelu
            )
        except (AssertionError, KeyError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "loading state_dict" not in str(exc):
                raise _weights_not_found(name, pretrained, exc) from exc
            # A checkpoint of another architecture: open_clip asserts on widths, torch on shapes.
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()[:120]
            raise WeightsNotFound(
                f"openclip {name!r}: {pretrained!r} does not hold a {name} model ({detail}); "
                "name its architecture with --model (e.g. ViT-B-32, RN50x4)"
            ) from None
        except (OSError, ValueError) as exc:  # unknown tag, missing file, no network
            raise _weights_not_found(name, pretrained, exc) from exc
        finally:
            logging.disable(logging.NOTSET)
    return OpenClipEncoder(model.float(), preprocess, open_clip.get_tokenizer(name), name, pad, words)


def _weights_not_found(name: str, pretrained: str | None, exc: BaseException) -> WeightsNotFound:
    import open_clip

    cause = " ".join(str(exc).split())
    cause = cause if len(cause) <= 200 else cause[:200].rsplit(" ", 1)[0] + " ..."  # whole words
    repo = str((open_clip.get_pretrained_cfg(name, pretrained or "") or {}).get("hf_hub", "")).strip("/")
    fetch = (
        f"`hf download {repo}` on a machine with network, then copy the cache"
        if repo
        else "fetched once on a machine with network"
    )
    return WeightsNotFound(
        f"openclip {name!r}: weights {pretrained!r} could not be loaded ({cause}). Give --pretrained a local "
        f"checkpoint file, or a tag open_clip knows for {name} "
        f"({', '.join(open_clip.list_pretrained_tags_by_model(name)[:4]) or 'none'}) that is already in "
        f"~/.cache/huggingface ({fetch}; HF_HUB_OFFLINE=1 then uses it)"
    )


def quick_gelu_for(name: str, pretrained: str | None, explicit: bool | None = None) -> bool:
    """Whether the weights were trained with QuickGELU: OpenAI's CLIP models were, and open_clip's
    pretrained table says so per tag (``quick_gelu``); open_clip 3 builds nn.GELU regardless of the
    tag and only warns, so the activation is forced here. A checkpoint file says nothing about it:
    ``quick_gelu: true`` in the encoder config for OpenAI-trained files (CLIP4Cir's, say)."""
    import open_clip

    if explicit is not None:
        return bool(explicit)
    if name.endswith("-quickgelu"):
        return True
    if pretrained and not Path(pretrained).exists():  # a tag
        return bool((open_clip.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu"))
    return False


def _check_tag(name: str, pretrained: str | None, model_config: dict | None) -> None:
    """A pretrained tag must be one open_clip has for this architecture (checked before anything is
    built or fetched); a file path is left to the loader."""
    import open_clip

    if pretrained is None or model_config is not None or Path(pretrained).exists():
        return
    if name not in open_clip.list_models():
        raise WeightsNotFound(f"openclip: unknown architecture {name!r}; e.g. {', '.join(open_clip.list_models()[:6])}")
    tags = open_clip.list_pretrained_tags_by_model(name)
    known = f"{', '.join(tags[:8]) or 'none'}{', ...' if len(tags) > 8 else ''}"
    if "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise WeightsNotFound(
            f"openclip {name!r}: the checkpoint file {pretrained} does not exist (or give a pretrained tag: {known})"
        )
    if pretrained not in tags:
        raise WeightsNotFound(
            f"openclip {name!r}: {pretrained!r} is not a pretrained tag of this architecture; its tags: {known} "
            "(another architecture: --model)"
        )


# A two-layer ViT and text tower at 32 px (open_clip's own classes, random weights).
_EXAMPLE_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _example(workdir: Path) -> Encoder:
    return load_openclip(None, {"model": "composir-example-vit", "model_config": _EXAMPLE_CONFIG})


@register_encoder("openclip", example=_example)
def build_openclip(pretrained: str | None = None, config: dict[str, Any] | None = None) -> Encoder:
    """An open_clip model: a pretrained tag or a checkpoint file."""
    return load_openclip(pretrained, config)
