"""Feature cache for frozen vision towers: encode every image/video of a split once.

When the vision backbone is frozen (the usual BLIP-2 set-up) its output never changes, so
training and evaluation can read it from disk instead of decoding and re-encoding pixels. A
cache folder holds:

- ``features.f16``  one fp16 row per media item, memory-mapped: the vision tower's tokens,
  (T, N, C) per video with ``per_frame`` or frame-pooled (N, C);
- ``done.u8``       one byte per row: 0 = to do, 1 = written, 2 = unreadable (so an interrupted
  run resumes where it stopped);
- ``meta.json``     ids, shape, and the *fingerprint* of the vision tower and preprocessing that
  produced the rows: a cache from other weights is refused, never silently reused;
- ``failures.json`` the unreadable media and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from composir.data.media_dataset import MediaDataset, collate_media
from composir.data.records import GalleryItem
from composir.errors import ComposirError
from composir.utils.io import atomic_write_json
from composir.utils.progress import progress_bar
from composir.utils.workers import loader_workers

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
TODO, DONE, FAILED = 0, 1, 2


class StaleCacheError(ComposirError):
    """The cache was written by another vision tower, preprocessing or frame setting."""


def vision_fingerprint(encoder, num_frames: int, per_frame: bool) -> str:
    """Hash of the vision tower's weights and of everything that shapes its input."""
    if not hasattr(encoder, "vision_tower"):
        raise ComposirError(f"encoder {encoder.name!r} has no cacheable vision tower (blip2 and tiny have one)")
    tower = encoder.vision_tower()
    h = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({**encoder.cache_spec(), "frames": num_frames, "per_frame": per_frame}).encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def frame_tokens(encoder, frames: torch.Tensor, per_frame: bool) -> torch.Tensor:
    """(B, T, N, C) per-frame tokens, or (B, N, C) averaged over frames."""
    tokens = encoder.frame_tokens(frames)
    return tokens if per_frame else tokens.mean(1)


@dataclass
class FeatureCache:
    root: Path
    ids: list[str]
    shape: tuple[int, ...]
    fingerprint: str
    per_frame: bool
    num_frames: int

    @classmethod
    def open(cls, root: str | Path, expected_fingerprint: str | None = None) -> FeatureCache:
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise ComposirError(f"{root}: not a feature cache (no meta.json)")
        meta = json.loads(meta_path.read_text())
        cache = cls(root, meta["ids"], tuple(meta["shape"]), meta["fingerprint"], meta["per_frame"], meta["num_frames"])
        if expected_fingerprint is not None and expected_fingerprint != cache.fingerprint:
            raise StaleCacheError(
                f"{root}: feature cache was written by a different vision tower or preprocessing "
                f"(cache fingerprint {cache.fingerprint}, model {expected_fingerprint}); re-run `composir cache` "
                "for this model or point data.feature_cache elsewhere"
            )
        return cache

    @property
    def row_of(self) -> dict[str, int]:
        if not hasattr(self, "_row_of"):
            self._row_of = {i: r for r, i in enumerate(self.ids)}
        return self._row_of

    def _memmap(self, mode: str = "r") -> np.memmap:
        shape = (len(self.ids), *self.shape)
        return np.memmap(self.root / "features.f16", dtype=np.float16, mode=mode, shape=shape)  # type: ignore[call-overload]

    def status(self) -> np.ndarray:
        return np.fromfile(self.root / "done.u8", dtype=np.uint8)

    def get(self, media_id: str) -> torch.Tensor:
        row = self.row_of.get(media_id)
        if row is None:
            raise KeyError(f"{self.root}: media {media_id!r} is not in the cache")
        if not hasattr(self, "_features"):
            self._features = self._memmap()
            self._status = self.status()
        if self._status[row] != DONE:
            raise KeyError(f"{self.root}: media {media_id!r} has no features (unreadable or not encoded yet)")
        return torch.from_numpy(np.array(self._features[row], dtype=np.float32))


def build_cache(
    encoder,
    items: Sequence[GalleryItem],
    out: str | Path,
    num_frames: int = 1,
    per_frame: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> FeatureCache:
    """Encode ``items`` (deduplicated by id) into ``out``; resumes a partial cache of the same model."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unique = list({it.id: it for it in items}.values())
    ids = [it.id for it in unique]
    fingerprint = vision_fingerprint(encoder, num_frames, per_frame)
    encoder = encoder.to(device).eval()
    meta_path = out / "meta.json"
    if meta_path.is_file():
        cache = FeatureCache.open(out, expected_fingerprint=fingerprint)
        if cache.ids != ids:
            raise ComposirError(f"{out}: cache holds a different list of media; use a new folder")
    else:
        probe = torch.zeros(1, num_frames, 3, encoder.image_size, encoder.image_size, device=device)
        shape = tuple(frame_tokens(encoder, probe, per_frame).shape[1:])
        np.memmap(out / "features.f16", dtype=np.float16, mode="w+", shape=(len(ids), *shape)).flush()
        (out / "done.u8").write_bytes(bytes(len(ids)))
        atomic_write_json(
            meta_path,
            {
                "format_version": FORMAT_VERSION,
                "ids": ids,
                "shape": list(shape),
                "fingerprint": fingerprint,
                "per_frame": per_frame,
                "num_frames": num_frames,
            },
        )
        cache = FeatureCache.open(out)
    status = np.memmap(out / "done.u8", dtype=np.uint8, mode="r+")
    todo = np.flatnonzero(status == TODO).tolist()  # vectorised: caches hold millions of rows
    features = cache._memmap("r+")
    failures = json.loads((out / "failures.json").read_text()) if (out / "failures.json").is_file() else {}
    dataset = MediaDataset([unique[i] for i in todo], encoder.preprocess, num_frames)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_media, **loader_workers(num_workers))
    with progress_bar(
        total=len(ids), initial=len(ids) - len(todo), desc="caching", unit="item", disable=not progress
    ) as bar:
        for index, frames, bad in loader:
            for i, err in bad:
                row = todo[i]
                status[row] = FAILED
                failures[ids[row]] = err
                log.warning("skipped %s: %s", ids[row], err)
            if frames is not None:
                tokens = frame_tokens(encoder, frames.to(device), per_frame).float().cpu().numpy()
                rows = [todo[i] for i in index.tolist()]
                features[rows] = tokens.astype(np.float16)
                features.flush()  # rows reach the disk before they are marked done
                status[rows] = DONE
            status.flush()
            bar.update(len(index) + len(bad))
    atomic_write_json(out / "failures.json", failures, indent=1)
    return FeatureCache.open(out, expected_fingerprint=fingerprint)
