"""Records shared by every benchmark reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Triplet:
    """One composed-retrieval query: reference + modification text -> target(s)."""

    query_id: str
    reference_id: str
    text: str
    target_ids: list[str]
    subset_ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GalleryItem:
    """One searchable image or video. ``path`` may not exist when only annotations are present."""

    id: str
    path: Path | None
    media_type: str = "image"  # "image" or "video"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Benchmark:
    name: str
    split: str
    root: Path
    queries: list[Triplet]
    gallery: list[GalleryItem]
    # How the official protocol ranks: drop the reference from its own ranking (CIRR, synthetic)
    # or not (FashionIQ), and which metrics it reports.
    exclude_reference: bool = True
    protocol: str = "recall"
    has_targets: bool = True
    # Every image a query refers to (reference or target), with its path, whether or not it is
    # in the gallery: the reference of a FashionIQ query may be outside the category's gallery.
    media: dict[str, GalleryItem] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def media_item(self, media_id: str) -> GalleryItem:
        item = self.media.get(media_id)
        if item is None:
            raise KeyError(f"{self.name}/{self.split}: no media entry for id {media_id!r}")
        return item

    def __repr__(self) -> str:
        return (
            f"Benchmark(name={self.name!r}, split={self.split!r}, queries={len(self.queries)}, "
            f"gallery={len(self.gallery)})"
        )
