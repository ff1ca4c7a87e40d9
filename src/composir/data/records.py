"""Records shared by every benchmark reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Triplet:
    """One composed-retrieval query: reference + modification text -> target(s).

    ``train_texts``: the texts training draws from, uniformly per sample, where the benchmark's
    protocol trains on several phrasings of one query (FashionIQ: its two captions joined in
    either order); None trains on ``text``.
    """

    query_id: str
    reference_id: str
    text: str
    target_ids: list[str]
    subset_ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    train_texts: list[str] | None = None


@dataclass(frozen=True)
class Protocol:
    """What a benchmark's official evaluation reports, as data (``eval.evaluate.score`` reads it)."""

    name: str
    recall_ks: tuple[int, ...] = (1, 5, 10, 50)
    subset_ks: tuple[int, ...] = ()  # CIRR's Recall_subset@K over img_set members
    map_ks: tuple[int, ...] = ()  # CIRCO's mAP@K, before the recalls
    recall_on_first_target: bool = False  # CIRCO: Recall@K counts target_img_id only
    mean_recall: bool = False  # WebVid-CoVR: the mean of the recalls
    cirr_averages: bool = False  # both published CIRR averages, named apart

    def metric_names(self) -> list[str]:
        names = [f"mAP@{k}" for k in self.map_ks] + [f"R@{k}" for k in self.recall_ks]
        names += [f"Rsubset@{k}" for k in self.subset_ks]
        if self.cirr_averages:
            names += ["Avg(R@5,Rsubset@1)", "Mean(all7)"]
        if self.mean_recall:
            names.append("Mean")
        return names


_CIRR: dict[str, Any] = dict(subset_ks=(1, 2, 3), cirr_averages=True)
PROTOCOLS: dict[str, Protocol] = {
    "cirr": Protocol("cirr", **_CIRR),
    "synthetic": Protocol("synthetic", **_CIRR),
    "fashioniq": Protocol("fashioniq"),
    "circo": Protocol("circo", recall_ks=(5, 10, 25, 50), map_ks=(5, 10, 25, 50), recall_on_first_target=True),
    "webvid-covr": Protocol("webvid-covr", mean_recall=True),
}


@dataclass
class GalleryItem:
    """One searchable image or video. ``path`` may not exist when only annotations are present.

    ``caption``: a text describing the item, for methods whose target embedding reads one
    (CSMCIR's captioned targets); None where there is none.
    """

    id: str
    path: Path | None
    media_type: str = "image"  # "image" or "video"
    extra: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None


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
    protocol: Protocol = PROTOCOLS["webvid-covr"]
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
