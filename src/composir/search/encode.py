"""Model-side helpers of indexing and searching: a trained method as the index's ``encode``
callable (target embeddings), and a query reference's frames."""

from __future__ import annotations

from pathlib import Path

import torch

from composir.data.media import DecodeLimits, load_media
from composir.data.records import GalleryItem


def model_encoder(method, num_frames: int, device: str | torch.device = "cpu", batch_size: int = 64):
    """An ``encode`` callable for ``GalleryIndex.update`` from a trained method (target embeddings)."""
    from composir.eval.evaluate import encode_media

    def encode(items: list[GalleryItem]):
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
        )
        feats = res.features.numpy()
        errors = res.failures
        return feats, errors

    return encode


def load_query_frames(
    method, path: str | Path, num_frames: int, max_pixels: int | None = None, limits: DecodeLimits | None = None
) -> torch.Tensor:
    frames = load_media(path, num_frames, max_pixels=max_pixels, limits=limits)
    return torch.stack([method.encoder.preprocess(f) for f in frames]).unsqueeze(0)
