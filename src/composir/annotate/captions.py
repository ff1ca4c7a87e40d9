"""Multi-level chain-of-thought captions of a benchmark's target images (CSMCIR).

For every gallery and target image of a split, a multimodal LLM behind any OpenAI-compatible
chat-completions endpoint (vLLM, Ollama, llama.cpp's server, a hosted API) is asked in one
conversation, stage by stage: the objects, then their attributes, then the scene and relations,
then one final discriminative caption. Every stage is kept, one JSON line per image, in the cache
that training and evaluation read (``data.target_captions``, data/captions.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from composir.annotate.client import CaptionCache, CaptionerConfig, annotate, converse, describe, picture
from composir.data.captions import STAGES
from composir.data.records import GalleryItem

PROMPTS = {
    "objects": "List the objects you see in this image, one short noun phrase each, separated by semicolons.",
    "attributes": (
        "For each of those objects, give its visible attributes (colour, size, material, pattern, shape), "
        "one line per object."
    ),
    "scene": "Describe the scene: the background, where the objects are and how they relate to each other.",
    "final": (
        "Now write one caption, at most 30 words, that describes this image so precisely that it could be "
        "told apart from similar images. Answer with the caption only."
    ),
}


def caption_stages(client, cfg: CaptionerConfig, item: GalleryItem) -> dict[str, str]:
    """One conversation: the image with the first question, then each stage's question."""
    turns = {stage: [{"type": "text", "text": PROMPTS[stage]}] for stage in STAGES}
    turns[STAGES[0]].insert(0, picture(item, cfg.max_side))
    return converse(client, cfg, turns)


def _caption_one(client, cfg: CaptionerConfig, item: GalleryItem) -> dict[str, Any]:
    try:
        return {"id": item.id, "stages": caption_stages(client, cfg, item), "model": cfg.model}
    except Exception as exc:  # one bad image or answer is recorded and skipped
        return {"id": item.id, "error": describe(exc)}


def caption_items(
    items: Iterable[GalleryItem], out: str | Path, cfg: CaptionerConfig, progress: bool = True, client=None
) -> dict[str, Any]:
    """Caption every item not yet in the cache ``out``; returns counts (done before, captioned, failed)."""
    cache = CaptionCache(out)
    try:
        items = list({i.id: i for i in items}.values())
        todo = [i for i in items if not cache.done(i.id)]
        counts = annotate(todo, cache, _caption_one, cfg, "captions", progress, client)
    finally:
        cache.close()
    return {
        "images": len(items),
        "already": len(items) - len(todo),
        "captioned": counts["done"],
        "failed": counts["failed"],
        **({"first_error": counts["first_error"]} if "first_error" in counts else {}),
    }


def target_items(bench) -> list[GalleryItem]:
    """A split's gallery and every query target (a target may be outside the gallery)."""
    items = {item.id: item for item in bench.gallery}
    for q in bench.queries:
        for t in q.target_ids:
            if t not in items and t in bench.media:
                items[t] = bench.media[t]
    return list(items.values())
