"""Gallery captions changed at test time: how much of a caption-reading method's result the
captions carry (CSMCIR fuses each gallery item with its caption).

Modes (``Variant.gallery_captions``): ``as_given``; ``empty`` (every caption ""); ``shuffled`` (the
captions permuted across the gallery: fluent, but of another item); ``noise-P`` (each colour, shape,
size and background word replaced, with probability P, by another of its kind -- the perception
errors of a captioner).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections import Counter

import numpy as np

from composir.data.records import Benchmark
from composir.methods.claims import parse_gallery_captions
from composir.synth.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES

# Each word kind a synthetic caption names; multi-word names ("light blue") are matched whole.
ATTRIBUTE_KINDS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": SIZES,
    "background": BACKGROUNDS,
}
_KIND_OF = {word: kind for kind, words in ATTRIBUTE_KINDS.items() for word in words}
# "light blue" (a background) before "blue" (a colour): the longer name wins where both match.
_ATTRIBUTE = re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(_KIND_OF, key=len, reverse=True)) + r")\b")


def attributes(caption: str) -> list[str]:
    """The colour, shape, size and background words of a caption, in order."""
    return _ATTRIBUTE.findall(caption)


def attribute_accuracy(said: list[str], gold: list[str]) -> float:
    """Of the gold captions' attribute words, the share a written caption has too (counted as a
    multiset per caption: two "red"s need two), in %."""
    right = total = 0
    for s, g in zip(said, gold):
        want = Counter(attributes(g))
        right += sum((Counter(attributes(s)) & want).values())
        total += sum(want.values())
    return 100.0 * right / max(total, 1)


def parse_attribute_caption(caption: str) -> tuple[Counter, str]:
    """(multiset of object phrases without articles, background) of an attribute-level caption
    ("a small red circle and a large blue cross on a beige background")."""
    caption = caption.strip().lower()
    match = re.search(r"\bon an? (.+?) background\s*$", caption)
    background = match.group(1) if match else ""
    body = caption[: match.start()] if match else caption
    parts = [p.strip() for p in re.split(r",| and ", body) if p.strip()]
    return Counter(re.sub(r"^(a|an|the) ", "", p) for p in parts), background


def object_f1(predicted: Counter, gold: Counter) -> float:
    """F1 of two multisets of object phrases (1 when both are empty)."""
    overlap = sum((predicted & gold).values())
    if not predicted and not gold:
        return 1.0
    precision = overlap / max(1, sum(predicted.values()))
    recall = overlap / max(1, sum(gold.values()))
    return 0.0 if overlap == 0 else 2 * precision * recall / (precision + recall)


def conclusion_quality(said: list[str], gold: list[str]) -> dict[str, float]:
    """How well written conclusions describe their targets' attribute-level captions, in %: the
    share of the gold attribute words they name (``attribute_accuracy``), the mean F1 of the objects
    they name (each "size colour shape" phrase), and exact matches."""
    f1 = [object_f1(parse_attribute_caption(s)[0], parse_attribute_caption(g)[0]) for s, g in zip(said, gold)]
    exact = [s.strip().lower() == g.strip().lower() for s, g in zip(said, gold)]
    return {
        "conclusion attributes": attribute_accuracy(said, gold),
        "conclusion object F1": 100.0 * float(np.mean(f1)) if f1 else 0.0,
        "conclusion exact": 100.0 * float(np.mean(exact)) if exact else 0.0,
    }


def noisy_caption(caption: str, rate: float, rng: np.random.Generator) -> str:
    """``caption`` with each attribute word replaced, with probability ``rate``, by another word of
    its kind."""

    def swap(match: re.Match) -> str:
        word = match.group(1)
        if rng.random() >= rate:
            return word
        others = [w for w in ATTRIBUTE_KINDS[_KIND_OF[word]] if w != word]
        return others[rng.integers(len(others))]

    return _ATTRIBUTE.sub(swap, caption)


def perturb_gallery_captions(bench: Benchmark, mode: str, seed: int = 0) -> Benchmark:
    """A copy of ``bench`` whose gallery items carry captions changed by ``mode`` (the queries and
    their texts are untouched); ``bench`` itself when ``mode`` is ``as_given``."""
    kind, rate = parse_gallery_captions(mode)
    if kind == "as_given":
        return bench
    rng = np.random.default_rng(seed)
    captions = [item.caption or "" for item in bench.gallery]
    if kind == "empty":
        changed = [""] * len(captions)
    elif kind == "shuffled":
        changed = [captions[i] for i in _derangement(len(captions), rng)]
    else:
        changed = [noisy_caption(c, rate, rng) for c in captions]
    out = copy.copy(bench)
    out.gallery = [dataclasses.replace(item, caption=c) for item, c in zip(bench.gallery, changed)]
    return out


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) that moves every index (so no item keeps its own caption)."""
    if n < 2:
        return np.arange(n)
    order = rng.permutation(n)
    moved = np.empty(n, dtype=int)
    moved[order] = np.roll(order, -1)  # one cycle through all n: each index goes to the next in order
    return moved
