"""FashionIQ reader (captions/cap.<category>.<split>.json + image_splits/split.<category>.<split>.json).

Protocol as commonly implemented (CLIP4Cir, SPRC, IMAGINE): per category, the gallery is that
category's image split; the reference is *not* removed from the ranking; the two relative
captions are joined deterministically at evaluation ("<first, stripped of '.?, ', capitalised>
and <second, stripped>"); training usually joins them in random order (both kept in
``extra["captions"]``). Images are expected at ``images/<asin>.png`` (the usual download layout).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from composir.data._json import expect_type, field, read_json, str_list
from composir.data.records import PROTOCOLS, Benchmark, GalleryItem, Triplet
from composir.data.registry import BenchmarkSpec, register_benchmark
from composir.errors import AnnotationError

CATEGORIES = ("dress", "shirt", "toptee")


def join_captions(first: str, second: str) -> str:
    return f"{first.strip('.?, ').capitalize()} and {second.strip('.?, ')}"


def _image_path(root: Path, asin: str) -> Path:
    return root / "images" / f"{asin}.png"


def load_fashioniq(root: str | Path, split: str, category: str) -> Benchmark:
    root = Path(root)
    if category not in CATEGORIES:
        raise ValueError(f"unknown FashionIQ category {category!r}; expected one of {CATEGORIES}")
    captions = root / "captions" / f"cap.{category}.{split}.json"
    image_split = root / "image_splits" / f"split.{category}.{split}.json"
    has_targets = split != "test"
    data = expect_type(captions, read_json(captions), list, "captions file")
    asins = expect_type(image_split, read_json(image_split), list, "image split")
    media: dict[str, GalleryItem] = {}
    gallery: list[GalleryItem] = []
    for i, asin in enumerate(asins):
        if not isinstance(asin, str):
            raise AnnotationError(image_split, f"asin must be a string, got {type(asin).__name__}", entry=i)
        item = GalleryItem(id=asin, path=_image_path(root, asin), extra={"category": category})
        if asin not in media:
            media[asin] = item
            gallery.append(item)
    queries: list[Triplet] = []
    for i, entry in enumerate(data):
        candidate = field(captions, entry, i, "candidate", str)
        target = field(captions, entry, i, "target", str, optional=not has_targets)
        caps = str_list(captions, entry, i, "captions")
        if len(caps) != 2:
            raise AnnotationError(captions, f"expected 2 captions, got {len(caps)}", entry=i, field="captions")
        media.setdefault(candidate, GalleryItem(id=candidate, path=_image_path(root, candidate)))
        if target is not None:
            media.setdefault(target, GalleryItem(id=target, path=_image_path(root, target)))
        queries.append(
            Triplet(
                query_id=f"{category}-{i}",
                reference_id=candidate,
                text=join_captions(caps[0], caps[1]),
                target_ids=[target] if target is not None else [],
                extra={"captions": list(caps), "category": category},
                # Training joins the two captions in random order (the usual protocol).
                train_texts=[join_captions(caps[0], caps[1]), join_captions(caps[1], caps[0])],
            )
        )
    return Benchmark(
        name=f"fashioniq-{category}",
        split=split,
        root=root,
        queries=queries,
        gallery=gallery,
        exclude_reference=False,
        protocol=PROTOCOLS["fashioniq"],
        has_targets=has_targets,
        media=media,
    )


for _category in CATEGORIES:
    register_benchmark(
        BenchmarkSpec(
            f"fashioniq-{_category}",
            PROTOCOLS["fashioniq"],
            partial(load_fashioniq, category=_category),
            f"FashionIQ {_category}",
        )
    )
register_benchmark(
    BenchmarkSpec(
        "fashioniq",
        PROTOCOLS["fashioniq"],
        None,
        "FashionIQ: its three categories and their means (the papers' protocol)",
        parts=tuple(f"fashioniq-{c}" for c in CATEGORIES),
    )
)
