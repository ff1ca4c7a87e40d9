"""The gallery index on Milvus: the same operations as ``GalleryIndex``, in a real vector engine.

``composir index --store milvus --uri URI`` keeps the vectors and their metadata (key, path,
media type, size, mtime) in a Milvus collection: ``URI`` is a local file for Milvus Lite (an
in-process engine, ``pip install milvus-lite``: what the tests use) or a server/cluster address
(``http://host:19530``) for collections that outgrow one machine. The index folder (``--out``)
then holds only ``milvus.json`` (where the collection is) and ``info.json`` (the model run, its
fingerprint, the media root), so ``composir search --index FOLDER`` and ``composir serve`` open
either store the same way (``open_index``).

Operations as ``GalleryIndex``: incremental by (size, mtime) -- unchanged files are not
re-encoded, a changed file's old row is deleted and a new one inserted, a deleted file's row is
removed; inserts are flushed every ``commit_every`` files, so an interrupted run, re-run, goes on
from its last flush; a bad file is reported and skipped. An item's id is a 63-bit hash of
(key, size, mtime): ranks indexing their shards into one collection under ``torchrun`` never
collide and need no shared counter, and an id is never reused for another file version. Milvus is
live: a search sees a flush as soon as it lands, so there are no generations to switch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np

from composir.data.records import GalleryItem
from composir.errors import ComposirError
from composir.index.store import Encode, IndexSettings, register_store
from composir.utils.io import atomic_write_json
from composir.utils.progress import progress_bar

POINTER = "milvus.json"
_LITE_SUFFIX = ".db"
_TEXT = 4096  # longest key/path stored


def item_id(key: str, size: int, mtime: float) -> int:
    digest = hashlib.blake2b(f"{key}\0{size}\0{mtime!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # non-negative 63-bit


def _literal(text: str) -> str:
    """A Milvus filter string literal (double-quoted, backslash-escaped like JSON)."""
    return json.dumps(text, ensure_ascii=False)  # Milvus parses \" and \\ but not \u escapes


def _holds_milvus(root: Path) -> bool:
    return (root / POINTER).is_file()


def absolute_uri(uri: str) -> str:
    """A Milvus Lite file named relative to where the command ran, made absolute (a later search from
    another folder must find the same file, not create an empty one); server URIs unchanged."""
    return str(Path(uri).resolve()) if uri.endswith(_LITE_SUFFIX) and "://" not in uri else uri


@register_store(
    "milvus",
    _holds_milvus,
    "a Milvus collection (Milvus Lite file or a server/cluster URI)",
    example=lambda folder, workdir: MilvusIndex(folder, uri=str(workdir / "milvus.db")),
)
class MilvusIndex:
    """``GalleryIndex``'s interface (``update``, ``search``, ``lookup``, ``key_to_id``, ``items``,
    ``info``) over a Milvus collection."""

    current_name = "milvus"  # a live engine: nothing to switch to (``Searcher.refresh``)
    superseded: list[int]  # ids of older duplicate rows found by ``items``

    def __init__(self, root: str | Path, uri: str | None = None, collection: str | None = None):
        self.root = Path(root)
        pointer = self.root / POINTER
        saved = json.loads(pointer.read_text()) if pointer.is_file() else {}
        if (
            uri is not None
            and saved
            and (saved["uri"], saved["collection"]) != (uri, collection or saved["collection"])
        ):
            raise ComposirError(
                f"{self.root}: this index lives in {saved['uri']} ({saved['collection']}), not {uri}; "
                "use a new --out folder for another store"
            )
        uri = absolute_uri(uri) if uri is not None else None
        self.uri = uri or saved.get("uri")
        if self.uri is None:
            raise ComposirError(f"{self.root}: no Milvus index here ({POINTER} missing) and no --uri given")
        self.collection = collection or saved.get("collection") or _collection_name(self.root)
        check_collection_name(self.collection)  # before connecting: Milvus' own refusal is a traceback
        self.client = _connect(self.uri)
        if self.client.has_collection(self.collection):
            # A collection another process wrote is "released" in this one (Milvus Lite, or a
            # server after a restart) and refuses queries until loaded; loading a loaded one is a no-op.
            self.client.load_collection(self.collection)
        info_path = self.root / "info.json"
        self.info: dict = json.loads(info_path.read_text()) if info_path.is_file() else {}
        self._saved = bool(saved)
        self.superseded = []

    # ------------------------------------------------------------------------------ reading
    @property
    def exists(self) -> bool:
        return bool(self.info.get("dim")) and self.client.has_collection(self.collection)

    def current_generation(self) -> str:
        return self.current_name

    def __len__(self) -> int:
        if not self.client.has_collection(self.collection):
            return 0
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def items(self) -> dict[str, tuple[int, int, float]]:
        """key -> (id, size, mtime)."""
        if not self.client.has_collection(self.collection):
            return {}
        out: dict[str, tuple[int, int, float]] = {}
        self.superseded = []
        it = self.client.query_iterator(self.collection, batch_size=4096, filter="",
                                        output_fields=["key", "size", "mtime"])  # fmt: skip
        try:
            while batch := it.next():
                for r in batch:
                    row = (int(r["id"]), int(r["size"]), float(r["mtime"]))
                    old = out.get(r["key"])
                    if old is not None:  # both versions of a file a killed run had not finished replacing
                        older, row = sorted([old, row], key=lambda v: v[2])
                        self.superseded.append(older[0])
                    out[r["key"]] = row
        finally:
            it.close()
        return out

    def lookup(self, ids: list[int]) -> dict[int, tuple[str, str, str]]:
        """id -> (key, absolute path, media type)."""
        if not ids or not self.client.has_collection(self.collection):
            return {}
        rows = self.client.get(self.collection, ids=[int(i) for i in ids], output_fields=["key", "path", "media_type"])
        return {int(r["id"]): (r["key"], r["path"], r["media_type"]) for r in rows}

    def key_to_id(self, key: str) -> int | None:
        if not self.client.has_collection(self.collection):
            return None
        rows = self.client.query(self.collection, filter=f"key == {_literal(key)}", output_fields=["id"])
        return int(rows[0]["id"]) if rows else None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` best items per query, best first; ids of -1 pad short rows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if not self.exists or k < 1:
            return scores[:, :0], ids[:, :0]
        found = self.client.search(self.collection, data=list(queries), limit=k, search_params={"metric_type": "IP"})
        for row, hits in enumerate(found):
            for col, hit in enumerate(hits[:k]):
                scores[row, col], ids[row, col] = hit["distance"], int(hit["id"])
        return scores, ids

    # ------------------------------------------------------------------------------ writing
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
        keep=None,
        rebuild: bool = False,
        write_info: bool = True,
    ) -> dict:
        """Add new/changed files, drop deleted ones (only among the files ``keep`` selects: a
        rank's shard); returns the report. ``settings``: FAISS layouts do not apply (Milvus
        chooses its own index), so a kind other than auto is refused. ``rebuild``: the
        collection is dropped and written afresh. ``write_info``: this process writes the
        folder's ``milvus.json``/``info.json`` (rank 0 under torchrun)."""
        from composir.index.faiss_store import plan_changes, scan_media, write_report

        if settings is not None and settings.kind not in (None, "auto"):
            raise ComposirError(f"--kind {settings.kind}: a Milvus store chooses its own index; leave --kind out")
        if rebuild and self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)
            self.info = {k: v for k, v in self.info.items() if k != "dim"}
        media_root = Path(media_root).resolve()
        if not media_root.is_dir():
            raise ComposirError(f"{media_root}: media folder not found")
        if self.info.get("fingerprint") not in (None, model_info.get("fingerprint")):
            raise ComposirError(
                f"{self.root}: index was built with another model; use a new index folder for this model"
            )
        files, skipped = scan_media(media_root)
        files = [f for f in files if keep is None or keep(f.key)]
        skipped = [s for s in skipped if keep is None or keep(s["file"])]
        known = {k: v for k, v in self.items().items() if keep is None or keep(k)}
        todo, deleted = plan_changes(files, known)
        if not self.exists and not todo and keep is None:
            raise ComposirError(f"{media_root}: no images or videos found")
        info = {**self.info, **model_info, "media_root": str(media_root), "store": "milvus"}
        failed = self._encode_and_insert(todo, known, deleted, encode, info, batch_size, commit_every, progress)
        if write_info:
            self._write_info(info)
        return write_report(self.root, todo, known, deleted, failed, skipped, len(self), write=write_info)

    def _encode_and_insert(self, todo, known, deleted, encode, info, batch_size, commit_every, progress):
        # Encode, insert, then delete the old rows: a changed file's new id differs (a hash of its
        # size and mtime), so a run killed half-way leaves both versions, never neither.
        stale = [known[k][0] for k in deleted] + [known[f.key][0] for f in todo if f.key in known]
        stale += self.superseded
        failed: list[tuple[str, str]] = []
        since_flush = 0
        bar = progress_bar(total=len(todo), desc="indexing", unit="file", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            feats, errors = encode([GalleryItem(f.key, f.path, f.media_type) for f in chunk])
            failed += errors
            bad = dict(errors)
            good = [f for f in chunk if f.key not in bad]
            if good:
                self._ensure_collection(int(feats.shape[1]), info)
                rows = [{"id": item_id(f.key, f.size, f.mtime), "key": f.key, "path": str(f.path),
                         "media_type": f.media_type, "size": f.size, "mtime": f.mtime, "vector": vec}
                        for f, vec in zip(good, np.asarray(feats, dtype=np.float32))]  # fmt: skip
                self.client.insert(self.collection, rows)
                since_flush += len(rows)
            if since_flush >= commit_every:
                self.client.flush(self.collection)  # durable: a re-run goes on from here
                self._write_info(info)
                since_flush = 0
            bar.update(len(chunk))
        bar.close()
        if stale and self.client.has_collection(self.collection):
            self.client.delete(self.collection, ids=stale)
        if self.client.has_collection(self.collection):
            self.client.flush(self.collection)
        return failed

    def _ensure_collection(self, dim: int, info: dict) -> None:
        if self.info.get("dim") not in (None, dim):
            raise ComposirError(
                f"{self.root}: the collection holds {self.info['dim']}-d vectors, the model gives {dim}"
            )
        info["dim"] = dim
        if self.client.has_collection(self.collection):
            return
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("key", DataType.VARCHAR, max_length=_TEXT)
        schema.add_field("path", DataType.VARCHAR, max_length=_TEXT)
        schema.add_field("media_type", DataType.VARCHAR, max_length=16)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime", DataType.DOUBLE)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = self.client.prepare_index_params()
        # Milvus Lite builds FLAT; a server picks its own (AUTOINDEX: HNSW-like, tuned by Milvus).
        kind = "FLAT" if self.uri.endswith(_LITE_SUFFIX) else "AUTOINDEX"
        params.add_index("vector", index_type=kind, metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=params)
        self.info["dim"] = dim

    def write_info(self, model_info: dict, media_root: str | Path) -> None:
        """The folder's pointer and info.json, for a collection other processes filled (torchrun ranks)."""
        fields = self.client.describe_collection(self.collection)["fields"]
        dim = next(int(f["params"]["dim"]) for f in fields if f["name"] == "vector")
        root = str(Path(media_root).resolve())
        self._write_info({**self.info, **model_info, "media_root": root, "store": "milvus", "dim": dim})

    def _write_info(self, info: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self._saved:
            atomic_write_json(self.root / POINTER, {"uri": self.uri, "collection": self.collection}, indent=1)
            self._saved = True
        self.info = {**info, "count": len(self), "uri": self.uri, "collection": self.collection}
        atomic_write_json(self.root / "info.json", self.info, indent=1)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def check_collection_name(name: str) -> None:
    """Milvus' rule for collection names: a letter or underscore, then letters, digits and
    underscores, at most 255 characters."""
    if not _NAME.fullmatch(name):
        raise ComposirError(
            f"--collection {name[:60]!r}: Milvus names start with a letter or _, then letters, digits or _ "
            "(at most 255 characters)"
        )


def _collection_name(root: Path) -> str:
    """Milvus names: letters, digits, underscores; from the folder's name, made unique by its path."""
    base = "".join(c if c.isalnum() else "_" for c in root.resolve().name)[:40] or "index"
    return f"composir_{base}_{hashlib.blake2b(str(root.resolve()).encode(), digest_size=4).hexdigest()}"


def _connect(uri: str):
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise ComposirError("--store milvus needs pymilvus (and milvus-lite for a local file): pip install "
                            "pymilvus milvus-lite") from exc  # fmt: skip
    lite = uri.endswith(_LITE_SUFFIX) and "://" not in uri
    if lite:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        if str(Path(uri).resolve()) not in _LITE_OPEN_HERE:  # this process's own server is shared
            _check_lite_free(Path(uri))
    try:
        with _quiet_milvus_logs():
            client = MilvusClient(uri)
        if lite:
            _LITE_OPEN_HERE.add(str(Path(uri).resolve()))
            # Milvus Lite serves gRPC from a thread of this process and does not implement every call
            # pymilvus tries first (AllocTimestamp: pymilvus then falls back); the server's logger
            # prints each such probe as an ERROR with a traceback on runs that succeed. Client-side
            # failures still raise (and are reported in one line).
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        return client
    except Exception as exc:  # pymilvus raises its own and grpc errors for an unreachable server
        raise ComposirError(f"Milvus at {uri!r} cannot be reached: {str(exc).splitlines()[0][:200]}") from exc


_LITE_OPEN_HERE: set[str] = set()  # Milvus Lite files this process runs a server for


def _check_lite_free(path: Path) -> None:
    """Milvus Lite opens a .db folder in one process at a time (it holds ``LOCK`` inside it): say
    so plainly, before its own logger prints a traceback."""
    import fcntl

    lock = path / "LOCK"
    if not lock.is_file():
        return
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ComposirError(
                f"{path}: another process has this Milvus Lite file open (Milvus Lite allows one process at a time; "
                "is `composir serve` running on it?). Stop it, or use a Milvus server (--uri http://host:19530)"
            ) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_milvus_logs():
    """pymilvus and milvus-lite log errors (with tracebacks) for conditions we report ourselves in one
    line; silence them around our calls."""
    loggers = [logging.getLogger(name) for name in ("pymilvus", "milvus_lite", "grpc")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
