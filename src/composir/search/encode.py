"""Model-side helpers of indexing and searching: a trained method as the index's ``encode``
callable (target embeddings), and a query reference's frames."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from composir.data.media import DecodeLimits, load_media
from composir.data.records import GalleryItem
from composir.index.tokens import TokenStore
from composir.methods.scoring import shortlist_vector


def model_encoder(
    method,
    num_frames: int,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    tokens: TokenStore | None = None,
    captions: dict[str, str] | None = None,
):
    """An ``encode`` callable for ``GalleryIndex.update`` from a trained method (target embeddings).

    A method embedding targets as tokens (a token scoring) gives the store their normalised mean
    (``shortlist_vector``) and, with ``tokens``, keeps the tokens themselves for re-ranking. For a
    method that reads a caption per target, ``captions`` gives each item its own (by its key, the
    path relative to the media folder, else its file stem)."""
    from composir.eval.evaluate import encode_media

    def encode(items: list[GalleryItem]):
        if captions is not None and method.target_text:
            items = [replace(item, caption=captions.get(item.id, captions.get(Path(item.id).stem))) for item in items]
        res = encode_media(
            items,
            method.encode_target,
            method.encoder.preprocess,
            num_frames,
            batch_size,
            0,
            device,
            desc="encoding",
            progress=False,  # the index shows its own bar, per file
            tokenize=method.encoder.tokenize if method.target_text else None,
            frame_scores=method.target_frame_scores,
        )
        feats = res.features
        if feats.dim() == 3 and tokens is not None and len(feats):
            tokens.put([items[i].id for i in res.ok_index], feats.numpy())
        return shortlist_vector(feats).numpy() if len(feats) else feats.numpy(), res.failures

    return encode


def load_query_frames(
    method, path: str | Path, num_frames: int, max_pixels: int | None = None, limits: DecodeLimits | None = None
) -> torch.Tensor:
    frames = load_media(path, num_frames, max_pixels=max_pixels, limits=limits, sampling=method.reference_sampling)
    return torch.stack([method.encoder.preprocess(f) for f in frames]).unsqueeze(0)
