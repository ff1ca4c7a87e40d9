"""``composir annotate-cot``: a reasoning chain per training triplet for CIR-CoT (caption of the
reference -> reasoning about what the modification changes -> conclusion describing the target).

CIR-CoT's authors annotate FashionIQ and CIRR in three stages with a multimodal LLM; here any
OpenAI-compatible chat endpoint does it, through the same client, concurrency, reachability check
and resumable JSONL cache as ``composir caption`` (``annotate/client.py``). One conversation per triplet:
the reference image and the request are shown first (caption, then reasoning: what must change,
what stays), then the target image (conclusion: the target described so that it could be found,
grounded in the true target as the paper's annotations are). Records go to ``data/chains.py``'s
format, keyed by query id; ``data.chains`` points training at the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from composir.annotate.client import CaptionCache, CaptionerConfig, annotate, converse, describe, picture
from composir.data.chains import read_chain_records
from composir.data.records import Benchmark, Triplet

PROMPTS = {
    "caption": "This is the reference image. Describe it in one sentence: the main objects and their attributes.",
    "reasoning": (
        'A user wants an image like the reference but changed as follows: "{text}". Reason in two or three '
        "sentences: which attributes or objects must change, which must stay the same."
    ),
    "conclusion": (
        "This is the image the user was looking for. Describe it in one sentence, at most 30 words, so that "
        "it could be found among similar images. Answer with the description only."
    ),
}


def chain_for(client, cfg: CaptionerConfig, query: Triplet, bench: Benchmark) -> dict[str, str]:
    """The three sections, asked in one conversation (each answer is the context of the next)."""
    reference = picture(bench.media_item(query.reference_id), cfg.max_side)
    target = picture(bench.media_item(query.target_ids[0]), cfg.max_side)
    turns = {
        "caption": [reference, {"type": "text", "text": PROMPTS["caption"]}],
        "reasoning": [{"type": "text", "text": PROMPTS["reasoning"].format(text=query.text)}],
        "conclusion": [target, {"type": "text", "text": PROMPTS["conclusion"]}],
    }
    return converse(client, cfg, turns)


def annotate_queries(
    bench: Benchmark, out: str | Path, cfg: CaptionerConfig, progress: bool = True, client=None
) -> dict[str, Any]:
    """A chain for every query of ``bench`` with a target and none in the cache ``out`` yet."""
    cache = CaptionCache(out, reader=read_chain_records)
    queries = [q for q in bench.queries if q.target_ids]
    todo = [q for q in queries if not cache.done(q.query_id)]

    def one(client, cfg: CaptionerConfig, query: Triplet) -> dict[str, Any]:
        try:
            return {"id": query.query_id, "cot": chain_for(client, cfg, query, bench), "model": cfg.model}
        except Exception as exc:  # one unreadable image or bad answer is recorded and skipped
            return {"id": query.query_id, "error": describe(exc)}

    try:
        counts = annotate(todo, cache, one, cfg, "chains", progress, client)
    finally:
        cache.close()
    return {"queries": len(queries), "already": len(queries) - len(todo), **counts}
