"""CIRR reader (captions/cap.rc2.<split>.json + image_splits/split.rc2.<split>.json, as published).

Query ids are the ``pairid`` as a string; the gallery of a split is the keys of its image split
file; ``subset_ids`` are the 6 ``img_set.members`` (the Recall_subset protocol removes the
reference from them at scoring time). ``test1`` has no targets.
"""

from __future__ import annotations

from pathlib import Path

from composir.data._json import expect_type, field, read_json, str_list
from composir.data.media import media_type_of
from composir.data.records import PROTOCOLS, Benchmark, GalleryItem, Triplet
from composir.data.registry import BenchmarkSpec, register_benchmark
from composir.data.submission import write_cirr_submission
from composir.errors import AnnotationError

SPLIT_ALIASES = {"test": "test1", "dev": "val"}


def image_root(root: Path) -> Path:
    # The CIRR download unpacks raw images into img_raw/; the split files' paths are relative to it.
    return root / "img_raw" if (root / "img_raw").is_dir() else root


def read_image_split(path: Path, media_root: Path) -> dict[str, GalleryItem]:
    data = expect_type(path, read_json(path), dict, "image split")
    items: dict[str, GalleryItem] = {}
    for name, rel in data.items():
        if not isinstance(rel, str):
            raise AnnotationError(path, f"path must be a string, got {type(rel).__name__}", entry=name)
        media_type = media_type_of(rel) or "image"
        items[name] = GalleryItem(id=name, path=media_root / rel, media_type=media_type)
    return items


def parse_queries(path: Path, *, require_targets: bool) -> list[Triplet]:
    data = expect_type(path, read_json(path), list, "captions file")
    queries: list[Triplet] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        pairid = field(path, entry, i, "pairid", (int, str))
        qid = str(pairid)
        if qid in seen:
            raise AnnotationError(path, f"duplicate pairid {qid}", entry=i, field="pairid")
        seen.add(qid)
        reference = field(path, entry, i, "reference", str)
        caption = field(path, entry, i, "caption", str)
        target = field(path, entry, i, "target_hard", str, optional=not require_targets)
        img_set = field(path, entry, i, "img_set", dict, optional=True)
        members = str_list(path, img_set, i, "members") if img_set is not None else None
        extra = {k: v for k, v in entry.items() if k not in {"pairid", "reference", "caption", "target_hard"}}
        queries.append(
            Triplet(
                query_id=qid,
                reference_id=reference,
                text=caption,
                target_ids=[target] if target is not None else [],
                subset_ids=list(members) if members is not None else None,
                extra=extra,
            )
        )
    return queries


def load_cirr_layout(root: Path, split: str, *, name: str) -> Benchmark:
    if name == "cirr":
        split = SPLIT_ALIASES.get(split, split)
    captions = root / "captions" / f"cap.rc2.{split}.json"
    image_split = root / "image_splits" / f"split.rc2.{split}.json"
    has_targets = not split.startswith("test")
    queries = parse_queries(captions, require_targets=has_targets)
    media = read_image_split(image_split, image_root(root))
    for q in queries:
        for mid in [q.reference_id, *q.target_ids]:
            if mid not in media:
                # CIRR's own files are consistent; a mismatch means a wrong split file was paired.
                raise AnnotationError(captions, f"image {mid!r} is not in {image_split.name}", entry=q.query_id)
    return Benchmark(
        name=name,
        split=split,
        root=root,
        queries=queries,
        gallery=list(media.values()),
        exclude_reference=True,
        protocol=PROTOCOLS["cirr"],
        has_targets=has_targets,
        media=media,
    )


def load_cirr(root: str | Path, split: str) -> Benchmark:
    return load_cirr_layout(Path(root), split, name="cirr")


def _submit(folder: Path, split: str, bench: Benchmark, result) -> list[Path]:
    return list(write_cirr_submission(folder, result.query_ids, result.ranked_ids, result.subset_ranked_ids,
                                      [q.reference_id for q in bench.queries]))  # fmt: skip


register_benchmark(
    BenchmarkSpec(
        "cirr", PROTOCOLS["cirr"], load_cirr, "CIRR (real images, Recall@K and Recall_subset@K)", submission=_submit
    )
)
