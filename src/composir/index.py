"""A persisted gallery index of a folder of images and videos: FAISS vectors + SQLite metadata.

Layout of an index folder::

    CURRENT              name of the live generation folder (replaced atomically)
    gen-000007/
      vectors.faiss      IndexIDMap2 over inner-product flat (default) or IVF-PQ vectors
      meta.sqlite        items(id, key, path, media_type, size, mtime, vector); key = path relative to
                         the media root; vector = the exact float16 embedding (IVF-PQ only: re-ranking)
      info.json          model run, encoder fingerprint, dimension, index kind, media root, counts
    report.json          files skipped by the last run, with the reason

Every write builds a new generation and flips ``CURRENT``, so a reader (or a crash) never sees a
half-written index. Indexing is incremental: files whose (size, mtime) did not change are kept,
changed files are re-encoded, deleted files are removed. A long run commits a generation every
``commit_every`` files, so an interrupted run, re-run, continues from its last commit; a new
generation's metadata is the previous one's copied and changed, not rewritten.

IVF-PQ answers from 32-byte codes, which lose neighbours (recall@10 ~0.4-0.7, docs/benchmarks.md);
with ``refine`` (default 10) it fetches ``refine * k`` candidates and re-ranks them by their exact
vectors, kept on disk in the metadata, not in memory.
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


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, path TEXT NOT NULL, "
    "media_type TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL, vector BLOB)"
)


def _vector_blob(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype=np.float16).tobytes()


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
        """(scores, ids) of the ``k`` best items per query, best first; ids of -1 pad short rows."""
        if self.vectors is None or self.vectors.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        refine = int(self.info.get("refine") or 0) if self.info.get("kind") == "ivfpq" else 0
        k = min(k, self.vectors.ntotal)
        scores, ids = self.vectors.search(queries, min(k * max(refine, 1), self.vectors.ntotal))
        if refine > 1:
            scores, ids = self._rerank(queries, scores, ids, k)
        return scores, ids

    @classmethod
    def from_vectors(
        cls,
        root: str | Path,
        keys: list[str],
        vectors: np.ndarray,
        info: dict,
        kind: str = "flat",
        nlist: int = 256,
        pq_m: int = 32,
        refine: int = 10,
        files: list[FileEntry] | None = None,
        faiss_index=None,
    ) -> GalleryIndex:
        """An index at ``root`` of embeddings computed elsewhere (ids 0..n-1 in ``keys`` order),
        replacing what was there. ``files``: each key's file (path, media type, size, mtime), else
        the key is the path; ``faiss_index``: one already built over ``vectors`` in that order."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(keys) != len(vectors) or len(set(keys)) != len(keys):
            raise ComposirError(f"from_vectors: {len(keys)} keys (distinct ones needed) for {len(vectors)} vectors")
        if faiss_index is None:
            faiss_index = _new_faiss(vectors.shape[1], kind, vectors if kind == "ivfpq" else None, nlist, pq_m)
            faiss_index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        if files is None:
            files = [FileEntry(k, Path(k), media_type_of(k) or "image", 0, 0.0) for k in keys]
        rows = {
            key: (i, str(f.path), f.media_type, f.size, f.mtime, _vector_blob(vectors[i]) if kind == "ivfpq" else None)
            for i, (key, f) in enumerate(zip(keys, files))
        }
        info = {**info, "kind": kind, "refine": refine if kind == "ivfpq" else 0, "next_id": len(keys)}
        info["dim"] = int(vectors.shape[1])
        if hasattr(faiss_index, "nprobe"):
            info["nprobe"] = faiss_index.nprobe
        index = cls(root)
        index._commit(faiss_index, info, rows, fresh=True)
        return index

    def _rerank(self, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int):
        """Exact inner products for the IVF-PQ candidates (their stored vectors), best ``k`` kept."""
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        exact: dict[int, np.ndarray] = {}
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit, with room
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for i, blob in self.db.execute(f"SELECT id, vector FROM items WHERE id IN ({marks})", chunk):
                if blob is not None:
                    exact[int(i)] = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
        zero = np.zeros(queries.shape[1], dtype=np.float32)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, cand, approx) in enumerate(zip(queries, ids, scores)):
            keep = cand >= 0
            cand, approx = cand[keep], approx[keep]
            # An item without a stored vector (an index written before re-ranking) keeps its PQ score.
            have = np.array([int(c) in exact for c in cand], dtype=bool)
            mat = np.stack([exact.get(int(c), zero) for c in cand]) if len(cand) else np.zeros((0, len(query)))
            rescored = np.where(have, mat @ query, approx).astype(np.float32)
            order = np.argsort(-rescored, kind="stable")[:k]
            out_scores[row, : len(order)] = rescored[order]
            out_ids[row, : len(order)] = cand[order]
        return out_scores, out_ids

    # ---------------------------------------------------------------------------- writing
    def _commit(
        self,
        vectors,
        info: dict,
        added: dict[str, tuple] | None = None,
        removed: list[str] | None = None,
        fresh: bool = False,
    ) -> None:
        """Write the next generation: ``vectors``, and the metadata of the current one (none if
        ``fresh``) less the ``removed`` keys plus ``added`` rows: key -> (id, path, media type, size,
        mtime, vector blob or None)."""
        import faiss

        self.root.mkdir(parents=True, exist_ok=True)
        number = int(self.generation.name.split("-")[1]) + 1 if self.exists else 1
        tmp = self.root / f".gen-{number:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        faiss.write_index(vectors, str(tmp / "vectors.faiss"))
        if self.exists and not fresh:
            shutil.copyfile(self.generation / "meta.sqlite", tmp / "meta.sqlite")
        db = sqlite3.connect(str(tmp / "meta.sqlite"))
        db.execute(_SCHEMA)
        if "vector" not in {row[1] for row in db.execute("PRAGMA table_info(items)")}:
            db.execute("ALTER TABLE items ADD COLUMN vector BLOB")  # an index from before re-ranking
        db.executemany("DELETE FROM items WHERE key = ?", [(k,) for k in removed or []])
        db.executemany(
            "INSERT INTO items (id, key, path, media_type, size, mtime, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(v[0], k, *v[1:]) for k, v in (added or {}).items()],
        )
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
        kind: str | None = None,
        batch_size: int = 64,
        commit_every: int = 2048,
        nlist: int = 256,
        pq_m: int = 32,
        progress: bool = True,
        keep: Callable[[str], bool] | None = None,
        refine: int | None = None,
    ) -> dict:
        """Add new/changed files, drop deleted ones; returns a report. ``keep(key)`` selects a shard's files.

        ``kind`` (flat | ivfpq) and ``refine`` default to the index's own, else flat and 10.
        """
        media_root = Path(media_root).resolve()
        if not media_root.is_dir():
            raise ComposirError(f"{media_root}: media folder not found")
        built = self.info.get("kind") if self.exists else None
        if kind is not None and built is not None and kind != built:
            raise ComposirError(f"{self.root}: the index is {built}, not {kind}; build a {kind} index in a new folder")
        kind = kind or built or "flat"
        refine = refine if refine is not None else int(self.info.get("refine", 10) if self.exists else 10)
        if self.exists and self.info.get("fingerprint") != model_info.get("fingerprint"):
            raise ComposirError(
                f"{self.root}: index was built with another model (fingerprint {self.info.get('fingerprint')}); "
                "use a new index folder for this model"
            )
        files = [f for f in scan_media(media_root) if keep is None or keep(f.key)]
        known: dict[str, tuple[int, int, float]] = self.items()  # key -> (faiss id, size, mtime)
        current = {f.key for f in files}
        deleted = [k for k in known if k not in current]
        todo = [f for f in files if f.key not in known or known[f.key][1:] != (f.size, f.mtime)]
        changed = [f.key for f in todo if f.key in known]
        removed = deleted + changed  # applied to the metadata by the next commit
        vectors = self.vectors
        if vectors is not None and removed:
            vectors.remove_ids(np.array([known[k][0] for k in removed], dtype=np.int64))
        # Ids are never reused: a removed item's id stays unknown rather than meaning another file.
        next_id = max((v[0] for v in known.values()), default=-1) + 1
        next_id = max(next_id, int(self.info.get("next_id", 0)))
        skipped: list[dict] = []
        info = {"media_root": str(media_root), "kind": kind, "refine": refine if kind == "ivfpq" else 0, **model_info}
        pending_vectors, pending_rows = [], {}
        bar = tqdm(total=len(todo), desc="indexing", unit="file", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            feats, errors = encode([GalleryItem(f.key, f.path, f.media_type) for f in chunk])
            bad = dict(errors)
            good = [f for f in chunk if f.key not in bad]
            skipped += [{"file": k, "error": e} for k, e in errors]
            for f, vec in zip(good, feats):
                blob = _vector_blob(vec) if kind == "ivfpq" else None  # flat keeps exact vectors itself
                pending_rows[f.key] = (next_id, str(f.path), f.media_type, f.size, f.mtime, blob)
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
                self._commit(vectors, {**info, "dim": int(mat.shape[1]), "next_id": next_id}, pending_rows, removed)
                pending_vectors, pending_rows, removed = [], {}, []
                vectors = self.vectors
        bar.close()
        if vectors is not None and removed:  # only removals (or every changed file failed to encode)
            self._commit(vectors, {**self.info, **info, "next_id": next_id}, removed=removed)
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


def merge_parts(
    parts: list[Path], out: str | Path, kind: str = "flat", nlist: int = 256, pq_m: int = 32, refine: int = 10
) -> dict:
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
        for old_id, key, path, media_type, size, mtime in index.db.execute(
            "SELECT id, key, path, media_type, size, mtime FROM items ORDER BY key"
        ):
            rows[key] = FileEntry(key, Path(path), media_type, size, mtime)
            vectors.append(index.vectors.reconstruct(int(old_id)))
    if info is None:
        raise ComposirError("no shard has any item")
    info = {**info, "shards": len(parts)}
    GalleryIndex.from_vectors(
        out,
        list(rows),
        np.stack(vectors),
        info,
        kind,
        nlist,
        pq_m,
        refine,
        files=list(rows.values()),
    )
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
