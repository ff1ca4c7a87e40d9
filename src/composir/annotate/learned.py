"""Captions from a trained captioning run (CIR-CoT's caption stage) instead of a served LLM.

The run's decoder writes one caption per image into the same caption cache ``composir caption``
fills from an LLM (its ``final`` stage; resumed, one writer at a time), so training, evaluation and
``composir index --captions`` read it alike. A captioner trained on a benchmark's training split
carries perception errors into the gallery's captions, as an MLLM's captions would.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from composir.annotate.client import CaptionCache
from composir.data.media import load_media
from composir.data.records import GalleryItem
from composir.errors import ComposirError
from composir.utils.progress import progress_bar


def load_captioner(run: str | Path, device: str = "cpu"):
    """The latest weights of a captioning run (its retrieval metrics do not choose a 'best')."""
    from composir.runs import load_run

    method, _ = load_run(run, which="latest", device=device)
    if not hasattr(method, "caption_images"):
        raise ComposirError(
            f"--captioner {run}: its method ({method.name}) writes no captions; "
            "train cir_cot with method.config.stage=caption"
        )
    return method.eval()


def caption_with_run(
    items: Iterable[GalleryItem],
    out: str | Path,
    method,
    name: str,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Caption every item not yet in the cache ``out`` with ``method`` (recorded as the model
    ``name``); counts as ``caption_items`` gives them (an image that cannot be read is recorded as
    failed and skipped)."""
    cache = CaptionCache(out)
    counts: dict[str, Any] = {"captioned": 0, "failed": 0}
    try:
        items = list({i.id: i for i in items}.values())
        todo = [i for i in items if not cache.done(i.id)]
        bar = progress_bar(total=len(todo), desc="captions", unit="image", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk, frames = [], []
            for item in todo[start : start + batch_size]:
                try:
                    frames.append(torch.stack([method.encoder.preprocess(f) for f in load_media(item.path, 1)]))
                    chunk.append(item)
                except Exception as exc:  # one unreadable image is recorded and skipped
                    cache.append({"id": item.id, "error": f"{type(exc).__name__}: {exc}"})
                    counts["failed"] += 1
                    counts.setdefault("first_error", f"{item.id}: {exc}")
            if chunk:
                for item, text in zip(chunk, method.caption_images(torch.stack(frames))):
                    cache.append({"id": item.id, "stages": {"final": text}, "model": name})
                counts["captioned"] += len(chunk)
            bar.update(min(batch_size, len(todo) - start))
        bar.close()
    finally:
        cache.close()
    return {"images": len(items), "already": len(items) - len(todo), **counts}
