"""A persisted gallery index of a folder of images and videos: FAISS vectors + SQLite metadata.

Layout of an index folder::

    CURRENT              name of the live generation folder (replaced atomically)
    gen-000007/
      vectors.faiss      IndexIDMap2 over inner-product flat (default) or IVF-PQ vectors
      meta.sqlite        items(id, key, path, media_type, size, mtime); key = path relative to the media root
      info.json          model run, encoder fingerprint, dimension, index kind, media root, counts
    report.json          files skipped by the last run, with the reason

Every write builds a new generation and flips ``CURRENT``, so a reader (or a crash) never sees a
half-written index. Indexing is incremental: files whose (size, mtime) did not change are kept,
changed files are re-encoded, deleted files are removed. A long run commits a generation every
``commit_every`` files, so an interrupted run, re-run, continues from its last commit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from composir.data.media import load_media, media_type_of
from composir.data.records import GalleryItem
from composir.errors import ComposirError, MediaError
from composir.utils.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class FileEntry:
    key: str  # path relative to the media root, '/'-separated
    path: Path
    media_type: str
    size: int
    mtime: float


def scan_media(root: Path) -> list[FileEntry]:
    """Every image/video under ``root`` (hidden files and folders skipped), sorted by key."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            kind = media_type_of(name)
            if kind is None or name.startswith("."):
                continue
            path = Path(dirpath) / name
            st = path.stat()
            out.append(FileEntry(path.relative_to(root).as_posix(), path, kind, st.st_size, st.st_mtime))
    return out


def _new_faiss(dim: int, kind: str, train_vectors: np.ndarray | None, nlist: int, pq_m: int):
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "ivfpq":
        needed = max(nlist * 4, 256)  # 256: one 8-bit product-quantizer codebook
        if train_vectors is None or len(train_vectors) < needed:
            have = 0 if train_vectors is None else len(train_vectors)
            raise ComposirError(
                f"IVF-PQ with nlist={nlist} needs at least {needed} vectors to train its quantizer, got {have}; "
                "use the flat index for a collection this small"
            )
        if dim % pq_m:
            raise ComposirError(f"IVF-PQ: --pq-m {pq_m} must divide the embedding dimension {dim}")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(train_vectors)
        index.nprobe = max(1, nlist // 16)
        return index  # IVF indexes take explicit ids themselves
    raise ComposirError(f"unknown index kind {kind!r}; use flat or ivfpq")


class GalleryIndex:
    """Open (or create) an index folder; ``update`` brings it in line with a media folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.info: dict = {}
        self.vectors = None
        self.db: sqlite3.Connection | None = None
        current = self.root / "CURRENT"
        if current.is_file():
            self._load(self.root / current.read_text().strip())

    @property
    def exists(self) -> bool:
        return self.vectors is not None

    def _load(self, gen: Path) -> None:
        import faiss

        self.info = json.loads((gen / "info.json").read_text())
        self.vectors = faiss.read_index(str(gen / "vectors.faiss"))
        if self.info.get("nprobe") and hasattr(self.vectors, "nprobe"):
            self.vectors.nprobe = self.info["nprobe"]
        self.db = sqlite3.connect(str(gen / "meta.sqlite"), check_same_thread=False)
        self.generation = gen

    def __len__(self) -> int:
        return 0 if self.vectors is None else int(self.vectors.ntotal)

    def items(self) -> dict[str, tuple[int, int, float]]:
        """key -> (faiss id, size, mtime)."""
        if self.db is None:
            return {}
        return {k: (i, s, m) for i, k, s, m in self.db.execute("SELECT id, key, size, mtime FROM items")}

    def lookup(self, ids: list[int]) -> dict[int, tuple[str, str, str]]:
        """faiss id -> (key, absolute path, media type)."""
        if not ids or self.db is None:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(f"SELECT id, key, path, media_type FROM items WHERE id IN ({marks})", ids)
        return {i: (k, p, t) for i, k, p, t in rows}

    def key_to_id(self, key: str) -> int | None:
        if self.db is None:
            return None
        row = self.db.execute("SELECT id FROM items WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.vectors is None or self.vectors.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self.vectors.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.vectors.ntotal))
        return scores, ids

    # ---------------------------------------------------------------------------- writing
    def _commit(self, vectors, rows: dict[str, tuple], info: dict) -> None:
        import faiss

        self.root.mkdir(parents=True, exist_ok=True)
        number = int(self.generation.name.split("-")[1]) + 1 if self.exists else 1
        tmp = self.root / f".gen-{number:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        faiss.write_index(vectors, str(tmp / "vectors.faiss"))
        db = sqlite3.connect(str(tmp / "meta.sqlite"))
        db.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, path TEXT NOT NULL, "
            "media_type TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL)"
        )
        db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", [(v[0], k, *v[1:]) for k, v in rows.items()])
        db.commit()
        db.close()
        info = {**info, "count": int(vectors.ntotal), "written_at": time.time()}
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
        final = self.root / f"gen-{number:06d}"
        os.replace(tmp, final)
        with atomic_open(self.root / "CURRENT", "w") as handle:
            handle.write(final.name + "\n")
        old = self.generation if self.exists else None
        if self.db is not None:
            self.db.close()
        self._load(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def update(
        self,
        media_root: str | Path,
        encode,  # callable: list[GalleryItem] -> (np.ndarray features (n, d), list[(key, error)])
        model_info: dict,
        kind: str = "flat",
        batch_size: int = 64,
        commit_every: int = 2048,
        nlist: int = 256,
        pq_m: int = 32,
        progress: bool = True,
        keep: Callable[[str], bool] | None = None,
    ) -> dict:
        """Add new/changed files, drop deleted ones; returns a report. ``keep(key)`` selects a shard's files."""
        media_root = Path(media_root).resolve()
        if not media_root.is_dir():
            raise ComposirError(f"{media_root}: media folder not found")
        if self.exists and self.info.get("fingerprint") != model_info.get("fingerprint"):
            raise ComposirError(
                f"{self.root}: index was built with another model (fingerprint {self.info.get('fingerprint')}); "
                "use a new index folder for this model"
            )
        files = [f for f in scan_media(media_root) if keep is None or keep(f.key)]
        rows = {}
        if self.db is not None:
            rows = {k: (i, p, t, s, m) for i, k, p, t, s, m in self.db.execute("SELECT * FROM items")}
        known = {k: (v[0], v[3], v[4]) for k, v in rows.items()}  # key -> (faiss id, size, mtime)
        current = {f.key for f in files}
        deleted = [k for k in known if k not in current]
        todo = [f for f in files if f.key not in known or known[f.key][1:] != (f.size, f.mtime)]
        changed = [f.key for f in todo if f.key in known]
        vectors = self.vectors
        if vectors is not None and (deleted or changed):
            drop = np.array([known[k][0] for k in deleted + changed], dtype=np.int64)
            vectors.remove_ids(drop)
            for k in deleted + changed:
                rows.pop(k, None)
        next_id = (max((v[0] for v in rows.values()), default=-1) + 1) if rows else 0
        skipped: list[dict] = []
        info = {"media_root": str(media_root), "kind": kind, **model_info}
        pending_vectors, pending_rows = [], {}
        bar = tqdm(total=len(todo), desc="indexing", unit="file", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            feats, errors = encode([GalleryItem(f.key, f.path, f.media_type) for f in chunk])
            bad = dict(errors)
            good = [f for f in chunk if f.key not in bad]
            skipped += [{"file": k, "error": e} for k, e in errors]
            for f, vec in zip(good, feats):
                pending_rows[f.key] = (next_id, str(f.path), f.media_type, f.size, f.mtime)
                pending_vectors.append((next_id, vec))
                next_id += 1
            bar.update(len(chunk))
            done = start + len(chunk) >= len(todo)
            if len(pending_vectors) >= commit_every or (done and pending_vectors):
                mat = np.stack([v for _, v in pending_vectors]).astype(np.float32)
                ids = np.array([i for i, _ in pending_vectors], dtype=np.int64)
                if vectors is None:
                    # IVF-PQ trains its quantizer on the first committed batch (commit_every vectors).
                    vectors = _new_faiss(mat.shape[1], kind, mat if kind == "ivfpq" else None, nlist, pq_m)
                    if kind == "ivfpq":
                        info["nprobe"] = vectors.nprobe
                vectors.add_with_ids(mat, ids)
                rows.update(pending_rows)
                pending_vectors, pending_rows = [], {}
                self._commit(vectors, rows, {**info, "dim": int(mat.shape[1])})
                vectors = self.vectors
        bar.close()
        if vectors is not None and (deleted or changed) and not todo:
            self._commit(vectors, rows, {**self.info, **info})
        if vectors is None and not self.exists and not todo:
            raise ComposirError(f"{media_root}: no images or videos found")
        report = {
            "added": len(todo) - len(changed) - len(skipped),
            "updated": len(changed),
            "removed": len(deleted),
            "skipped": skipped,
            "total": len(self),
        }
        atomic_write_json(self.root / "report.json", report, indent=1)
        return report


def shard_of(key: str, num_shards: int) -> int:
    """A file's shard: stable across runs and machines (crc32 of its relative path)."""
    return zlib.crc32(key.encode()) % num_shards


def merge_parts(parts: list[Path], out: str | Path, kind: str = "flat", nlist: int = 256, pq_m: int = 32) -> dict:
    """Merge shard indexes (flat, built by ``composir index`` under torchrun) into one index at ``out``.

    Vectors are read back exactly from the flat parts, renumbered, and written as one flat or
    IVF-PQ index (the quantizer trains on the merged vectors); the parts stay for the next
    incremental run.
    """
    vectors, rows, info = [], {}, None
    for part in parts:
        index = GalleryIndex(part)
        if not index.exists:
            continue
        if info is not None and index.info.get("fingerprint") != info.get("fingerprint"):
            raise ComposirError(f"{part}: shard built with another model than the others")
        info = info or dict(index.info)
        for old_id, key, path, media_type, size, mtime in index.db.execute("SELECT * FROM items ORDER BY key"):
            rows[key] = (len(rows), path, media_type, size, mtime)
            vectors.append(index.vectors.reconstruct(int(old_id)))
    if info is None:
        raise ComposirError("no shard has any item")
    mat = np.stack(vectors).astype(np.float32)
    merged = _new_faiss(mat.shape[1], kind, mat if kind == "ivfpq" else None, nlist, pq_m)
    merged.add_with_ids(mat, np.arange(len(mat), dtype=np.int64))
    target = GalleryIndex(out)
    info = {**info, "kind": kind, "shards": len(parts)}
    if kind == "ivfpq":
        info["nprobe"] = merged.nprobe
    target._commit(merged, rows, info)
    return {"total": len(rows), "shards": len(parts)}


def model_encoder(method, num_frames: int, device: str | torch.device = "cpu", batch_size: int = 64):
    """An ``encode`` callable for ``GalleryIndex.update`` from a trained method (target embeddings)."""
    from composir.eval.evaluate import encode_media

    def encode(items: list[GalleryItem]):
        res = encode_media(
            items, method.encode_target, method.encoder.preprocess, num_frames, batch_size, 0, device, desc="encoding"
        )
        feats = res.features.numpy()
        errors = res.failures
        return feats, errors

    return encode


def load_query_frames(method, path: str | Path, num_frames: int) -> torch.Tensor:
    frames = load_media(path, num_frames)
    return torch.stack([method.encoder.preprocess(f) for f in frames]).unsqueeze(0)


__all__ = ["GalleryIndex", "MediaError", "load_query_frames", "model_encoder", "scan_media"]
