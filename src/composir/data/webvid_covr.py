"""WebVid-CoVR reader (the published CSV annotations).

Columns: ``pth1`` (reference video id, ``<folder>/<video>``), ``pth2`` (target video id),
``edit`` (modification text), ``txt1``/``txt2`` (captions of the two videos), ``scores``
(a list literal of per-frame scores, may be empty: the similarity of each of the target's 15
sampled frames to the edit text, which CoVR turns into frame weights; a gallery item keeps the
first row's as ``extra["frame_scores"]``). The CSV is found as ``<root>/<split>.csv``
or, in CoVR's layout, ``<root>/annotation/webvid-covr/webvid*-covr_<split>.csv``. Videos are
``<video_root>/<id>.mp4`` (default ``<root>/videos``). The test gallery is the set of target
videos (one row per target in the published test set); R@{1,5,10,50} and their mean.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

from composir.data.records import PROTOCOLS, Benchmark, GalleryItem, Triplet
from composir.data.registry import BenchmarkSpec, register_benchmark
from composir.errors import AnnotationError

REQUIRED_COLUMNS = ("pth1", "pth2", "edit")


def find_csv(root: Path, split: str) -> Path:
    direct = root / f"{split}.csv"
    if direct.is_file():
        return direct
    matches = sorted((root / "annotation" / "webvid-covr").glob(f"webvid*-covr_{split}.csv"))
    if not matches:
        raise AnnotationError(
            root,
            f"no annotation CSV for split {split!r} (looked for {split}.csv and "
            f"annotation/webvid-covr/webvid*-covr_{split}.csv)",
        )
    return matches[-1]


def _parse_scores(path: Path, row_index: int, raw: str | None) -> list[float]:
    if raw is None or not raw.strip():
        return []
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        raise AnnotationError(path, f"not a list literal: {raw!r:.60}", entry=row_index, field="scores") from exc
    if isinstance(value, (int, float)):
        return [float(value)]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
        raise AnnotationError(path, f"expected a list of numbers, got {raw!r:.60}", entry=row_index, field="scores")
    return [float(v) for v in value]


def load_webvid_covr(root: str | Path, split: str, video_root: str | Path | None = None) -> Benchmark:
    root = Path(root)
    path = find_csv(root, split)
    videos = Path(video_root) if video_root is not None else root / "videos"
    media: dict[str, GalleryItem] = {}
    gallery_ids: dict[str, None] = {}  # ordered set: first-seen order of target videos
    queries: list[Triplet] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise AnnotationError(path, f"missing column(s) {missing}; header is {reader.fieldnames}")
            for i, row in enumerate(reader):
                # Row numbers in messages count the header as line 1, as a spreadsheet shows them.
                line = i + 2
                values = {}
                for col in REQUIRED_COLUMNS:
                    value = row.get(col)
                    if value is None or not value.strip():
                        raise AnnotationError(path, "empty value", entry=f"line {line}", field=col)
                    values[col] = value.strip()
                ref, target = values["pth1"], values["pth2"]
                for vid in (ref, target):
                    media.setdefault(vid, GalleryItem(id=vid, path=videos / f"{vid}.mp4", media_type="video"))
                gallery_ids.setdefault(target)
                scores = _parse_scores(path, line, row.get("scores"))
                if scores:  # the target's frame weights when it is embedded (first row naming it)
                    media[target].extra.setdefault("frame_scores", scores)
                queries.append(
                    Triplet(
                        query_id=str(i),
                        reference_id=ref,
                        text=values["edit"],
                        target_ids=[target],
                        extra={
                            "reference_caption": row.get("txt1", ""),
                            "target_caption": row.get("txt2", ""),
                            "scores": scores,
                        },
                    )
                )
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise AnnotationError(path, f"malformed CSV: {exc}") from exc
    return Benchmark(
        name="webvid-covr",
        split=split,
        root=root,
        queries=queries,
        gallery=[media[g] for g in gallery_ids],
        exclude_reference=True,
        protocol=PROTOCOLS["webvid-covr"],
        has_targets=True,
        media=media,
    )


register_benchmark(
    BenchmarkSpec("webvid-covr", PROTOCOLS["webvid-covr"], load_webvid_covr, "WebVid-CoVR (composed video retrieval)")
)
