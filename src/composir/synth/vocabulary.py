"""Every word the synthetic generator writes: modification texts, captions at each level, reasoning
chains -- for a word-level tokenizer that needs no download (CIR-CoT's small language model).

The words are collected by running the generator's planners (no rendering) over fixed seeds, so the
list follows the generator wherever its templates change; words are lowercased and split the way
``tokenizers``' ``Whitespace`` pre-tokenizer splits them (runs of word characters, runs of
punctuation).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from composir.synth import schemas as schema_bench
from composir.synth.generate import PLANNERS, _reasoning
from composir.synth.scenes import caption_levels

WORD = re.compile(r"\w+|[^\w\s]+")


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _plan_texts(plan) -> list[str]:
    texts = [level for scene in plan.members for level in caption_levels(scene, False).values()]
    for t in plan.triplets:
        texts += [t["text"], _reasoning(t["concrete"], t.get("concept"))]
    return texts


@lru_cache(maxsize=1)
def vocabulary(samples: int = 400) -> tuple[str, ...]:
    """Sorted distinct words of ``samples`` plans per family and per schema job (seeds 0..)."""
    words: set[str] = set()
    for seed in range(samples):
        rng = np.random.default_rng([seed, 7919])
        for planner in PLANNERS.values():
            for text in _plan_texts(planner(rng, False)):
                words.update(words_of(text))
    schemas = schema_bench.make_schemas(0)
    for seed in range(samples // 4):
        rng = np.random.default_rng([seed, 104729])
        schema = schemas[seed % len(schemas)]
        for members, triplet in (
            schema_bench.plan_implicit(rng, False, schemas, schema, gate=seed % 2 == 1),
            schema_bench.plan_appearance(rng, False, schemas, schema),
        ):
            words.update(w for text in [triplet["text"], *_schema_texts(members, triplet)] for w in words_of(text))
    return tuple(sorted(words))


def _schema_texts(members, triplet) -> list[str]:
    texts = [level for scene in members for level in caption_levels(scene, False).values()]
    return [*texts, _reasoning(triplet["concrete"], triplet.get("concept"))]
