"""CIRCO reader (annotations/{val,test}.json, as published).

Ids are COCO 2017 unlabeled image ids as strings. Each val query has 1-14 ground truths
(``gt_img_ids``, of which ``target_img_id`` is the first, used for Recall@K). The gallery is
the whole COCO 2017 unlabeled set (~123k images): read from
``COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`` when present, else from the
files in ``COCO2017_unlabeled/unlabeled2017/``; with neither, the gallery holds only the images
the annotations name and ``info["gallery_complete"]`` is False (fine for reading and metric
tests, not for reporting numbers). As in the official evaluation, the reference image is
removed from its own ranking.
"""

from __future__ import annotations

import re
from pathlib import Path

from composir.data._json import expect_type, field, read_json
from composir.data.records import PROTOCOLS, Benchmark, GalleryItem, Triplet
from composir.data.registry import BenchmarkSpec, register_benchmark
from composir.data.submission import write_circo_submission
from composir.errors import AnnotationError

COCO_DIR = "COCO2017_unlabeled"
_ASCII_DIGITS = re.compile(r"[0-9]+")


def _image_path(root: Path, image_id: str) -> Path:
    return root / COCO_DIR / "unlabeled2017" / f"{int(image_id):012d}.jpg"


def _int_list(path: Path, entry: dict, index: int, name: str) -> list[int]:
    values = field(path, entry, index, name, list)
    for j, v in enumerate(values):
        if not isinstance(v, int) or isinstance(v, bool):
            raise AnnotationError(path, f"item {j} must be an integer image id", entry=index, field=name)
    return values


def _full_gallery(root: Path) -> list[str] | None:
    info = root / COCO_DIR / "annotations" / "image_info_unlabeled2017.json"
    if info.is_file():
        data = expect_type(info, read_json(info), dict)
        images = field(info, data, "<root>", "images", list)
        # Each id once: a ranking (and a submission) must not list an image twice.
        return list(dict.fromkeys(str(field(info, img, i, "id", int)) for i, img in enumerate(images)))
    folder = root / COCO_DIR / "unlabeled2017"
    if folder.is_dir():
        # ASCII digits only ("²³.jpg" is no COCO id); "000000000123.jpg" and "123.jpg" are one id.
        ids = {int(p.stem) for p in folder.glob("*.jpg") if _ASCII_DIGITS.fullmatch(p.stem)}
        return [str(i) for i in sorted(ids)]
    return None


def load_circo(root: str | Path, split: str) -> Benchmark:
    root = Path(root)
    path = root / "annotations" / f"{split}.json"
    has_targets = split != "test"
    data = expect_type(path, read_json(path), list, "annotations")
    queries: list[Triplet] = []
    named: list[str] = []
    for i, entry in enumerate(data):
        qid = field(path, entry, i, "id", int)
        ref = str(field(path, entry, i, "reference_img_id", int))
        caption = field(path, entry, i, "relative_caption", str)
        concept = field(path, entry, i, "shared_concept", str, optional=True)
        targets: list[str] = []
        extra: dict = {"shared_concept": concept}
        if has_targets:
            gts = _int_list(path, entry, i, "gt_img_ids")
            target = field(path, entry, i, "target_img_id", int)
            if not gts:
                raise AnnotationError(path, "no ground truth", entry=i, field="gt_img_ids")
            targets = [str(t) for t in gts]  # as given: AP divides by min(k, len(gt_img_ids))
            extra["target_img_id"] = str(target)
            extra["semantic_aspects"] = entry.get("semantic_aspects", [])
        named.extend([ref, *targets])
        queries.append(Triplet(query_id=str(qid), reference_id=ref, text=caption, target_ids=targets, extra=extra))
    ids = _full_gallery(root)
    complete = ids is not None
    if ids is None:
        ids = list(dict.fromkeys(named))
    media = {i: GalleryItem(id=i, path=_image_path(root, i)) for i in ids}
    for mid in named:
        media.setdefault(mid, GalleryItem(id=mid, path=_image_path(root, mid)))
    return Benchmark(
        name="circo",
        split=split,
        root=root,
        queries=queries,
        gallery=[media[i] for i in ids],
        exclude_reference=True,
        protocol=PROTOCOLS["circo"],
        has_targets=has_targets,
        media=media,
        info={"gallery_complete": complete},
    )


def _submit(folder: Path, split: str, bench: Benchmark, result) -> list[Path]:
    path = Path(folder) / f"circo_{split}_submission.json"
    return [write_circo_submission(path, result.query_ids, result.ranked_ids)]


register_benchmark(
    BenchmarkSpec(
        "circo", PROTOCOLS["circo"], load_circo, "CIRCO (COCO images, several targets, mAP@K)", submission=_submit
    )
)
