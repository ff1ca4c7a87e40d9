"""Target captions cached per image id (``composir caption`` writes them; CSMCIR's target side reads them).

The cache is JSON Lines, one record per image, appended as captions are made::

    {"id": "dev-123-0-img0", "stages": {"objects": "...", "attributes": "...", "scene": "...",
     "final": "..."}, "model": "qwen2-vl-7b"}
    {"id": "dev-9-1-img1", "error": "HTTP 500 after 3 tries"}

The multi-level chain of thought (CSMCIR's MCoT) asks a multimodal LLM in stages -- objects,
then their attributes, then the scene and relations, then one final discriminative caption -- and
keeps every stage. A record with ``error`` marks an image that failed (re-running the captioner
tries it again). The last record of an id wins. Training and evaluation read this file, never the
LLM: ``load_benchmark(..., captions=path)`` / ``data.target_captions`` attach the chosen stage to
every gallery item (``GalleryItem.caption``) and to each query's ``extra["target_caption"]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from composir.data.records import Benchmark
from composir.errors import AnnotationError

STAGES = ("objects", "attributes", "scene", "final")


def read_records(path: str | Path, check, what: str) -> dict[str, dict[str, Any]]:
    """The last record of every id in a JSON-lines cache (``what`` names it in errors). A cut-off
    last line (a killed writer) is ignored; any other malformed line is an error naming the file
    and line; ``check(record)`` returns what is wrong with a record that is not an error record."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, f"{what} not found")
    records: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: the writer died mid-record
                break
            raise AnnotationError(path, f"line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise AnnotationError(path, f'line {number}: a record must be an object with a string "id"')
        problem = None if "error" in record else check(record)
        if problem:
            raise AnnotationError(path, f"line {number}: {problem}")
        records[record["id"]] = record
    return records


def _caption_problem(record: dict[str, Any]) -> str | None:
    stages = record.get("stages")
    if not (isinstance(stages, dict) and isinstance(stages.get("final"), str)):
        return '"stages" must be an object with a string "final"'
    return None


def read_caption_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """The last record of every id in the caption cache (see ``read_records``)."""
    return read_records(path, _caption_problem, "caption cache")


def read_captions(path: str | Path, stage: str = "final") -> dict[str, str]:
    """Image id -> the caption of ``stage`` (ids whose last record is an error are left out)."""
    if stage not in STAGES:
        raise AnnotationError(Path(path), f"unknown caption stage {stage!r}; expected one of {STAGES}")
    out = {}
    for image_id, record in read_caption_records(path).items():
        text = (record.get("stages") or {}).get(stage)
        if "error" not in record and isinstance(text, str):
            out[image_id] = text
    return out


def attach_captions(bench: Benchmark, captions: dict[str, str]) -> int:
    """Give gallery items and queries' targets their caption; returns how many gallery items have none."""
    for item in [*bench.gallery, *bench.media.values()]:
        item.caption = captions.get(item.id, item.caption)
    for q in bench.queries:
        target = q.target_ids[0] if q.target_ids else None
        if target in captions:
            q.extra["target_caption"] = captions[target]
    return sum(item.caption is None for item in bench.gallery)
