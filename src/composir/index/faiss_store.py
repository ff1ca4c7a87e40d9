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

Kinds: ``flat`` (exact), ``ivfsq8`` (8-bit codes), ``ivfpq`` (``pq_m``-byte codes; ``refine`` x k
candidates re-ranked by their exact vectors, kept on disk in the metadata, not in memory), and
``auto`` (the default for a new index): ``plan.plan_index`` picks one of the three from the
collection's size and a memory budget and *measures* recall@10 against exact search on the
collection's own vectors, raising nprobe/refine until the target (0.95) is met; the plan, its
measured recall and query time go into info.json. An auto index is encoded into flat generations
(resumable as ever), then planned once at the end, and planned again whenever the collection has
doubled or halved since. IVF kinds keep every exact vector (float16) in the metadata, for
re-ranking and for re-planning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from composir.data.media import media_type_of
from composir.data.records import GalleryItem
from composir.errors import ComposirError, MediaError
from composir.index.plan import (
    PLAN_KEYS,
    IndexPlan,
    default_memory_budget,
    first_choice,
    ivf_min_vectors,
    new_faiss,
    plan_index,
    rerank,
)
from composir.index.store import Encode, IndexSettings, register_store
from composir.utils.io import atomic_open, atomic_write_json, is_utf8
from composir.utils.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class FileEntry:
    key: str  # path relative to the media root, '/'-separated
    path: Path
    media_type: str
    size: int
    mtime: float


def inside(root: Path, path: Path) -> Path | None:
    """``path`` with every symlink resolved, if that is a regular file inside ``root`` (itself
    resolved); else None. The one rule for what may be indexed, read and served."""
    try:
        real = Path(os.path.realpath(path))
        if not stat.S_ISREG(real.stat().st_mode):
            return None
    except OSError:
        return None
    real_root = Path(os.path.realpath(root))
    return real if real.is_relative_to(real_root) else None


def scan_media(root: Path) -> tuple[list[FileEntry], list[dict]]:
    """Every image/video under ``root`` sorted by key, and the files skipped with the reason.

    Hidden files and folders are left out. A symlink is followed only when it resolves to a
    regular file inside ``root`` (an alias within the collection); a dangling one, or one that
    leads outside ``root``, is skipped and reported. Symlinked folders are not descended into.
    """
    out, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            kind = media_type_of(name)
            if kind is None or name.startswith("."):
                continue
            path = Path(dirpath) / name
            key = path.relative_to(root).as_posix()
            if not is_utf8(key):  # the metadata, the ids in answers and URLs are text
                shown = os.fsencode(key).decode("utf-8", "backslashreplace")
                skipped.append({"file": shown, "error": "file name is not valid UTF-8; rename the file to index it"})
                continue
            if path.is_symlink() and inside(root, path) is None:
                reason = "dangling symlink" if not path.exists() else "symlink to a file outside the media folder"
                skipped.append({"file": key, "error": reason})
                continue
            try:
                st = path.stat()
            except OSError as exc:
                skipped.append({"file": key, "error": f"cannot be read ({exc.strerror or exc})"})
                continue
            out.append(FileEntry(key, path, kind, st.st_size, st.st_mtime))
    return out, skipped


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL, path TEXT NOT NULL, "
    "media_type TEXT NOT NULL, size INTEGER NOT NULL, mtime REAL NOT NULL, vector BLOB)"
)


def _vector_blob(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype=np.float16).tobytes()


def _explicit_faiss(settings: IndexSettings, kind: str, dim: int, train: np.ndarray | None):
    """An empty index of an explicitly named kind, its IVF quantizer trained on ``train``."""
    if kind != "flat":
        needed = ivf_min_vectors(settings.nlist)
        if train is None or len(train) < needed:
            have = 0 if train is None else len(train)
            raise ComposirError(
                f"IVF-PQ with nlist={settings.nlist} needs at least {needed} vectors to train its quantizer, "
                f"got {have}; use the flat index for a collection this small"
            )
    plan = IndexPlan(kind, nlist=settings.nlist, pq_m=settings.pq_m, nprobe=max(1, settings.nlist // 16))
    return new_faiss(plan, dim, train)


@dataclass(frozen=True)
class _Batches:
    size: int  # files encoded at a time
    commit_every: int  # vectors between committed generations
    first_commit: int  # a new IVF index's first commit: its quantizer's training set
    progress: bool


class IndexDamagedError(ComposirError):
    """An index folder whose files cannot be read back; the message says what and how to rebuild."""

    def __init__(self, root: Path, what: str):
        super().__init__(
            f"{root}: the index is damaged ({what}); rebuild it with "
            f"`composir index --run RUN --media MEDIA --out {root} --rebuild` (or index into a new folder)"
        )


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads set for one search and restored after it: FAISS and torch share one
    libgomp, so a lasting change would also change torch's thread count for the whole process."""
    if not threads:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _holds_faiss(root: Path) -> bool:
    return (root / "CURRENT").is_file()


@register_store("faiss", _holds_faiss, "FAISS vectors + SQLite metadata in atomically switched generation folders")
class GalleryIndex:
    """Open (or create) an index folder; ``update`` brings it in line with a media folder."""

    def __init__(self, root: str | Path, load: bool = True):
        self.root = Path(root)
        self.info: dict = {}
        self.vectors: Any = None  # a faiss.Index
        self.exact: np.ndarray | None = None  # memory-mapped float16 exact vectors (IVF kinds), rows by id
        self.exact_ids: np.ndarray | None = None
        self.db: sqlite3.Connection | None = None
        self.current_name: str | None = None
        pointer = self.root / "CURRENT"
        if load and pointer.is_file():
            name = pointer.read_text().strip()
            if not name.startswith("gen-") or "/" in name or not (self.root / name).is_dir():
                raise IndexDamagedError(self.root, f"CURRENT names {name!r}, which is not a generation folder here")
            self._load(self.root / name)

    @property
    def exists(self) -> bool:
        return self.vectors is not None

    def current_generation(self) -> str | None:
        """The name ``CURRENT`` holds now (another process may have written a newer generation)."""
        try:
            return (self.root / "CURRENT").read_text().strip()
        except OSError:
            return None

    def _load(self, gen: Path) -> None:
        import faiss

        try:
            info = json.loads((gen / "info.json").read_text())
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise IndexDamagedError(self.root, f"{gen.name}/info.json cannot be read: {exc}") from exc
        try:
            vectors = faiss.read_index(str(gen / "vectors.faiss"))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            raise IndexDamagedError(self.root, f"{gen.name}/vectors.faiss cannot be read: {first}") from exc
        if not (gen / "meta.sqlite").is_file():
            raise IndexDamagedError(self.root, f"{gen.name}/meta.sqlite is missing")
        db = sqlite3.connect(f"file:{gen / 'meta.sqlite'}?mode=ro", uri=True, check_same_thread=False)
        try:
            rows = db.execute("SELECT count(*) FROM items").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            db.close()
            raise IndexDamagedError(self.root, f"{gen.name}/meta.sqlite cannot be read: {exc}") from exc
        if rows != vectors.ntotal:
            db.close()
            raise IndexDamagedError(self.root, f"{gen.name}: {vectors.ntotal} vectors but {rows} metadata rows")
        if info.get("nprobe") and hasattr(vectors, "nprobe"):
            vectors.nprobe = info["nprobe"]
        if self.db is not None:
            self.db.close()
        self.info, self.vectors, self.db, self.generation = info, vectors, db, gen
        self.exact, self.exact_ids = _open_exact(gen)
        self.current_name = gen.name

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
        with faiss_threads(self.info.get("threads")):
            scores, ids = self.vectors.search(queries, min(k * max(refine, 1), self.vectors.ntotal))
        if refine > 1:
            scores, ids = rerank(queries, ids, scores, k, self._exact_of)
        return scores, ids

    @classmethod
    def from_vectors(
        cls,
        root: str | Path,
        keys: list[str],
        vectors: np.ndarray,
        info: dict,
        settings: IndexSettings | None = None,
        *,
        files: list[FileEntry] | None = None,
        faiss_index=None,
        **knobs,
    ) -> GalleryIndex:
        """An index at ``root`` of embeddings computed elsewhere (ids 0..n-1 in ``keys`` order),
        replacing what was there. ``settings`` (or its fields as keywords: ``kind="auto"``, ...):
        the layout, flat unless named; ``files``: each key's file (path, media type, size,
        mtime), else the key is the path; ``faiss_index``: one already built over ``vectors`` in
        that order."""
        settings = IndexSettings.of(settings, **knobs)
        kind, refine = settings.kind or "flat", 10 if settings.refine is None else settings.refine
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(keys) != len(vectors) or len(set(keys)) != len(keys):
            raise ComposirError(f"from_vectors: {len(keys)} keys (distinct ones needed) for {len(vectors)} vectors")
        plan_info: dict = {}
        if faiss_index is None and kind == "auto":
            budget = settings.max_memory or default_memory_budget()
            plan, faiss_index = plan_index(vectors, budget, settings.target_recall)
            kind, refine = plan.kind, plan.refine
            plan_info = {**plan.info(), "auto": True, "tuned_count": len(keys)}
        elif faiss_index is None:
            faiss_index = _explicit_faiss(settings, kind, vectors.shape[1], vectors if kind != "flat" else None)
            faiss_index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        if files is None:
            files = [FileEntry(k, Path(k), media_type_of(k) or "image", 0, 0.0) for k in keys]
        exact = kind != "flat"  # IVF kinds keep the exact vectors for re-ranking and re-planning
        rows = {
            key: (i, str(f.path), f.media_type, f.size, f.mtime, _vector_blob(vectors[i]) if exact else None)
            for i, (key, f) in enumerate(zip(keys, files))
        }
        info = {**info, **plan_info, "kind": kind, "refine": refine if kind == "ivfpq" else 0, "next_id": len(keys)}
        info["dim"] = int(vectors.shape[1])
        if hasattr(faiss_index, "nprobe"):
            info["nprobe"] = faiss_index.nprobe
        try:
            index, damaged = cls(root), False
        except IndexDamagedError:  # replaced whole anyway
            index, damaged = cls(root, load=False), True
        with index.writing(rebuild=damaged):
            index._commit(faiss_index, info, rows, fresh=True)
        return index

    def exact_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of every item: the flat index's own, or the metadata's float16 copies."""
        import faiss

        if self.vectors is None or self.vectors.ntotal == 0:
            return np.zeros(0, np.int64), np.zeros((0, int(self.info.get("dim", 0))), np.float32)
        if self.info.get("kind") == "flat":
            ids = faiss.vector_to_array(self.vectors.id_map).astype(np.int64)
            return ids, self.vectors.index.reconstruct_n(0, self.vectors.ntotal)
        id_list, rows = [], []
        for i, blob in self.db.execute("SELECT id, vector FROM items ORDER BY id"):
            if blob is None:  # an index from before exact vectors were kept: decode its codes
                self.vectors.make_direct_map()
                rows.append(self.vectors.reconstruct(int(i)))
            else:
                rows.append(np.frombuffer(blob, dtype=np.float16).astype(np.float32))
            id_list.append(int(i))
        return np.array(id_list, dtype=np.int64), np.stack(rows)

    def replan(self, max_memory: int | None = None, target_recall: float = 0.95) -> IndexPlan:
        """Choose and tune the index afresh for the vectors it holds now (``plan``), and
        commit it as a new generation. Call inside ``writing()``."""
        ids, vectors = self.exact_vectors()
        if len(ids) < 2:
            plan = IndexPlan("flat", reason="fewer than 2 items")
            index = new_faiss(IndexPlan("flat"), vectors.shape[1])
            index.add_with_ids(vectors, ids)
        else:
            plan, index = plan_index(vectors, max_memory or default_memory_budget(), target_recall, ids=ids)
        blobs = None
        if plan.kind != "flat" and self.info.get("kind") == "flat":  # the exact vectors move to the metadata
            blobs = [(_vector_blob(v), int(i)) for i, v in zip(ids, vectors)]
        info = {**self.info, **plan.info(), "auto": True, "tuned_count": len(ids)}
        info["refine"] = plan.refine if plan.kind == "ivfpq" else 0
        self._commit(index, info, set_vectors=blobs)
        return plan

    def _exact_of(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(exact vectors, which have one) of candidate ids: memory-mapped, else from SQLite. An item
        without a stored vector (an index written before re-ranking) keeps its approximate score."""
        wanted = sorted({int(i) for i in candidates})
        exact = self._mapped_vectors(wanted) if self.exact is not None else self._stored_vectors(wanted)
        zero = np.zeros(int(self.info.get("dim") or self.vectors.d), dtype=np.float32)
        have = np.array([int(c) in exact for c in candidates], dtype=bool)
        if not len(candidates):
            return np.zeros((0, len(zero)), dtype=np.float32), have
        return np.stack([exact.get(int(c), zero) for c in candidates]), have

    def _mapped_vectors(self, wanted: list[int]) -> dict[int, np.ndarray]:
        if not wanted or not len(self.exact_ids):
            return {}
        at = np.searchsorted(self.exact_ids, wanted)
        at = np.clip(at, 0, max(len(self.exact_ids) - 1, 0))
        found = self.exact_ids[at] == np.asarray(wanted, dtype=np.int64)
        rows = np.asarray(self.exact[np.sort(at[found])], dtype=np.float32)  # sorted: sequential page reads
        order = {int(self.exact_ids[a]): r for r, a in enumerate(np.sort(at[found]))}
        return {i: rows[order[i]] for i in order}

    def _stored_vectors(self, wanted: list[int]) -> dict[int, np.ndarray]:
        exact: dict[int, np.ndarray] = {}
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit, with room
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for i, blob in self.db.execute(f"SELECT id, vector FROM items WHERE id IN ({marks})", chunk):
                if blob is not None:
                    exact[int(i)] = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
        return exact

    # ---------------------------------------------------------------------------- writing
    def _commit(
        self,
        vectors,
        info: dict,
        added: dict[str, tuple] | None = None,
        removed: list[str] | None = None,
        fresh: bool = False,
        set_vectors: list[tuple[bytes, int]] | None = None,
        final: bool = True,
    ) -> None:
        """Write the next generation: ``vectors``, and the metadata of the current one (none if
        ``fresh``) less the ``removed`` keys plus ``added`` rows: key -> (id, path, media type, size,
        mtime, vector blob or None); ``set_vectors``: (blob, id) exact vectors to store. A ``final``
        commit of an IVF index also writes the exact vectors as memory-mappable arrays (re-ranking
        reads them without a SQLite round trip; intermediate commits of a long run skip it)."""
        import faiss

        self.root.mkdir(parents=True, exist_ok=True)
        number = int(self.generation.name.split("-")[1]) + 1 if self.exists else 1
        tmp = self.root / f".gen-{number:06d}.tmp"
        gen_dir = self.root / f"gen-{number:06d}"
        for leftover in (tmp, gen_dir):  # of a run killed before it switched CURRENT: garbage
            shutil.rmtree(leftover, ignore_errors=True)
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
        db.executemany("UPDATE items SET vector = ? WHERE id = ?", set_vectors or [])
        db.commit()
        if final and info.get("kind", "flat") != "flat":
            _write_exact(db, tmp, int(vectors.d))
        db.close()
        info = {**info, "count": int(vectors.ntotal), "written_at": time.time()}
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
        os.replace(tmp, gen_dir)
        with atomic_open(self.root / "CURRENT", "w") as handle:
            handle.write(gen_dir.name + "\n")
        old = self.generation if self.exists else None
        if self.db is not None:
            self.db.close()
        self._load(gen_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def writing(self, rebuild: bool = False) -> Iterator[None]:
        """Hold the folder's writer lock (one writer at a time; readers never wait) and clear what a
        killed writer left: temp folders and files, generations ``CURRENT`` does not name.
        ``rebuild``: also drop the live generation, so a damaged index can be written afresh."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ComposirError(f"{self.root}: another process is writing this index; wait for it") from None
            # What this object loaded before the lock may be stale: another writer may have
            # committed since. Work from what CURRENT names now, never from a deleted generation.
            if rebuild:
                self._drop_current()
            else:
                self._reload_if_changed()
            self._remove_leftovers()
            yield

    def _reload_if_changed(self) -> None:
        live = self.current_generation()
        if live == self.current_name:
            return
        if live is None or not live.startswith("gen-") or "/" in live or not (self.root / live).is_dir():
            return  # nothing valid to load: a rebuild, or the leftover clean-up, deals with it
        self._load(self.root / live)

    def _drop_current(self) -> None:
        if self.db is not None:
            self.db.close()
        self.info, self.vectors, self.db, self.current_name = {}, None, None, None
        (self.root / "CURRENT").unlink(missing_ok=True)

    def _remove_leftovers(self) -> None:
        live = self.current_generation() if self.exists else None
        for entry in self.root.iterdir():
            name = entry.name
            stale_gen = name.startswith("gen-") and name != live
            temp = name.startswith((".gen-", ".CURRENT.", ".report.json.")) and name.endswith(".tmp")
            if stale_gen or temp:
                log.info("removing %s (left by an interrupted run)", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def update(
        self,
        media_root: str | Path,
        encode: Encode,
        model_info: dict,
        settings: IndexSettings | None = None,
        *,
        batch_size: int = 64,
        commit_every: int = 2048,
        progress: bool = True,
        keep: Callable[[str], bool] | None = None,
        rebuild: bool = False,
        **knobs,
    ) -> dict:
        """Add new/changed files, drop deleted ones; returns a report. ``keep(key)`` selects a shard's files.

        ``settings`` (or its fields as keywords): ``kind`` (flat | ivfsq8 | ivfpq | auto) and
        ``refine`` default to the index's own, else auto and 10. An auto index is re-planned
        (within ``max_memory``, to ``target_recall``) after a first build and whenever the
        collection has doubled or halved since it was last planned.
        """
        settings = IndexSettings.of(settings, **knobs)
        media_root = Path(media_root).resolve()
        if not media_root.is_dir():
            raise ComposirError(f"{media_root}: media folder not found")
        with self.writing(rebuild):
            kind, refine, auto = self._check_settings(settings, model_info)
            files, skipped = scan_media(media_root)
            files = [f for f in files if keep is None or keep(f.key)]
            skipped = [s for s in skipped if keep is None or keep(s["file"])]
            known = self.items()  # key -> (faiss id, size, mtime)
            todo, deleted = plan_changes(files, known)
            if not self.exists and not todo:
                raise ComposirError(f"{media_root}: no images or videos found")
            first_batch = commit_every
            if kind != "flat" and not self.exists:
                needed = ivf_min_vectors(settings.nlist)
                if len(todo) < needed:  # before any encoding: the quantizer could never be trained
                    raise ComposirError(
                        f"{media_root}: {len(todo)} files, but {kind} with nlist={settings.nlist} needs at least "
                        f"{needed} to train its quantizer; use --kind auto or flat for a collection this small "
                        "(or a smaller --nlist)"
                    )
                first_batch = max(commit_every, needed)
            planned = {k: v for k, v in self.info.items() if k in PLAN_KEYS} if self.exists else {}
            info = {**planned, "media_root": str(media_root), "kind": kind, "refine": refine if kind == "ivfpq" else 0}
            info.update(model_info, auto=auto)
            budget = (settings.max_memory or default_memory_budget()) if auto else None
            expected = len(known) - len(deleted) + sum(1 for f in todo if f.key not in known)
            batches = _Batches(batch_size, commit_every, first_batch, progress)
            failed = self._encode_and_commit(
                todo, known, deleted, encode, info, settings, batches,
                (budget, expected) if auto and kind == "flat" else None,
            )  # fmt: skip
            if auto and budget is not None and self._replan_due(budget):
                self.replan(budget, settings.target_recall)
        return write_report(self.root, todo, known, deleted, failed, skipped, len(self))

    def _replan_due(self, budget: int) -> bool:
        """Never planned, doubled or halved since, or the written rule now picks another kind."""
        tuned, n = self.info.get("tuned_count"), len(self)
        if n == 0:
            return False
        if not tuned or n >= 2 * tuned or n * 2 <= tuned:
            return True
        return first_choice(n, int(self.info["dim"]), budget).kind != self.info.get("kind")

    def _check_settings(self, settings: IndexSettings, model_info: dict) -> tuple[str, int, bool]:
        """(the kind to encode into, refine, whether the index plans itself)."""
        built = self.info.get("kind") if self.exists else None
        kind, refine = settings.kind, settings.refine
        if kind not in (None, "auto") and built is not None and kind != built:
            raise ComposirError(f"{self.root}: the index is {built}, not {kind}; build a {kind} index in a new folder")
        if kind == "auto" or (kind is None and built is None):
            auto, kind = True, built or "flat"  # encoded flat, then planned
        else:
            auto, kind = bool(self.info.get("auto")) and kind is None, kind or built
        refine = refine if refine is not None else int(self.info.get("refine", 10) if self.exists else 10)
        if self.exists and self.info.get("fingerprint") != model_info.get("fingerprint"):
            raise ComposirError(
                f"{self.root}: index was built with another model (fingerprint {self.info.get('fingerprint')}); "
                "use a new index folder for this model"
            )
        assert kind is not None
        return kind, refine, auto

    def _encode_and_commit(
        self,
        todo: list[FileEntry],
        known: dict[str, tuple[int, int, float]],
        deleted: list[str],
        encode,
        info: dict,
        settings: IndexSettings,
        batches: _Batches,
        flat_plan: tuple[int, int] | None = None,
    ) -> list[tuple[str, str]]:
        """Encode ``todo`` in batches, committing a generation every ``commit_every`` vectors (the
        first commit of a new IVF-PQ index waits for ``first_batch``, its training set); returns
        the files that failed to encode. ``known``: the index's items before this update.
        ``flat_plan``: (memory budget, expected count) of a flat auto index: where the written rule
        keeps it flat, the plan (exact, nothing to tune) goes into the commits' info."""
        removed = deleted + [f.key for f in todo if f.key in known]  # applied by the next commit
        vectors = self.vectors
        if vectors is not None and removed:
            vectors.remove_ids(np.array([known[k][0] for k in removed], dtype=np.int64))
        # Ids are never reused: a removed item's id stays unknown rather than meaning another file.
        next_id = max(max((v[0] for v in known.values()), default=-1) + 1, int(self.info.get("next_id", 0)))
        kind = info["kind"]
        failed: list[tuple[str, str]] = []
        pending_vectors, pending_rows = [], {}
        bar = progress_bar(total=len(todo), desc="indexing", unit="file", disable=not batches.progress)
        for start in range(0, len(todo), batches.size):
            chunk = todo[start : start + batches.size]
            feats, errors = encode([GalleryItem(f.key, f.path, f.media_type) for f in chunk])
            bad = dict(errors)
            failed += errors
            for f, vec in zip([f for f in chunk if f.key not in bad], feats):
                blob = _vector_blob(vec) if kind != "flat" else None  # flat keeps exact vectors itself
                pending_rows[f.key] = (next_id, str(f.path), f.media_type, f.size, f.mtime, blob)
                pending_vectors.append((next_id, vec))
                next_id += 1
            bar.update(len(chunk))
            done = start + len(chunk) >= len(todo)
            threshold = batches.commit_every if vectors is not None else batches.first_commit
            if pending_vectors and (len(pending_vectors) >= threshold or done):
                mat = np.stack([v for _, v in pending_vectors]).astype(np.float32)
                ids = np.array([i for i, _ in pending_vectors], dtype=np.int64)
                if vectors is None:
                    # IVF-PQ trains its quantizer on the first committed batch.
                    vectors = _explicit_faiss(settings, kind, mat.shape[1], mat if kind != "flat" else None)
                    if kind != "flat":
                        info["nprobe"] = vectors.nprobe
                vectors.add_with_ids(mat, ids)
                if flat_plan is not None:
                    info.update(_flat_plan_info(*flat_plan, int(mat.shape[1]), int(vectors.ntotal)))
                self._commit(vectors, {**info, "dim": int(mat.shape[1]), "next_id": next_id}, pending_rows, removed,
                             final=done)  # fmt: skip
                pending_vectors, pending_rows, removed = [], {}, []
                vectors = self.vectors
        bar.close()
        if vectors is not None and removed:  # only removals (or every changed file failed to encode)
            self._commit(vectors, {**self.info, **info, "next_id": next_id}, removed=removed)
        return failed


def plan_changes(files: list[FileEntry], known: dict[str, tuple]) -> tuple[list[FileEntry], list[str]]:
    """(files to encode: new or changed (size, mtime); keys to remove: gone from the media folder)."""
    current = {f.key for f in files}
    deleted = [k for k in known if k not in current]
    todo = [f for f in files if f.key not in known or tuple(known[f.key][1:]) != (f.size, f.mtime)]
    return todo, deleted


def write_report(
    root: Path,
    todo: list[FileEntry],
    known: dict[str, tuple],
    deleted: list[str],
    failed: list[tuple[str, str]],
    skipped: list[dict],
    total: int,
    write: bool = True,
) -> dict:
    """The update's report (also ``root/report.json``): added, updated, removed, skipped, total."""
    skipped = skipped + [{"file": k, "error": e} for k, e in failed]
    failed_keys = {k for k, _ in failed}
    changed = {f.key for f in todo if f.key in known}
    report = {
        "added": sum(1 for f in todo if f.key not in known and f.key not in failed_keys),
        "updated": len(changed - failed_keys),
        # A changed file that no longer decodes leaves the index, like a deleted one.
        "removed": len(deleted) + len(changed & failed_keys),
        "skipped": skipped,
        "total": total,
    }
    if write:
        atomic_write_json(root / "report.json", report, indent=1)
    return report


def _write_exact(db: sqlite3.Connection, folder: Path, dim: int) -> None:
    """``exact.npy`` (float16, one row per item in id order) and ``exact_ids.npy`` from the metadata."""
    rows = db.execute("SELECT id, vector FROM items WHERE vector IS NOT NULL ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float16).reshape(len(rows), dim)
    np.save(folder / "exact_ids.npy", ids)
    np.save(folder / "exact.npy", mat)


def _open_exact(gen: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The generation's memory-mapped exact vectors, or (None, None): re-ranking then reads SQLite."""
    try:
        ids = np.load(gen / "exact_ids.npy")
        mat = np.load(gen / "exact.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None, None
    return (mat, ids) if len(mat) == len(ids) else (None, None)


def _flat_plan_info(budget: int, expected: int, dim: int, count: int) -> dict:
    """The plan's info for a collection the written rule keeps flat once all ``expected`` items are
    in (exact: recall 1), stated for the ``count`` it holds now; else nothing."""
    if first_choice(expected, dim, budget).kind != "flat":
        return {}
    plan = first_choice(count, dim, budget)
    return {**plan.info(), "recall_at_10": 1.0, "tuned_count": count}


def shard_of(key: str, num_shards: int) -> int:
    """A file's shard: stable across runs and machines (crc32 of its relative path)."""
    return zlib.crc32(key.encode()) % num_shards


def merge_parts(parts: list[Path], out: str | Path, settings: IndexSettings | None = None) -> dict:
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
    settings = IndexSettings.of(settings, kind=(settings.kind if settings else None) or "auto")
    GalleryIndex.from_vectors(out, list(rows), np.stack(vectors), info, settings, files=list(rows.values()))
    return {"total": len(rows), "shards": len(parts)}


__all__ = [
    "GalleryIndex",
    "IndexDamagedError",
    "MediaError",
    "inside",
    "scan_media",
]
