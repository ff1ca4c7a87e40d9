"""The gallery index: one vector per item of a media folder, kept in a registered store.

``store`` declares what every store offers (``GalleryStore``), its settings (``IndexSettings``)
and the registry; ``faiss_store`` (the default: FAISS + SQLite generations) and ``milvus_store``
(a Milvus collection) implement it; ``plan`` chooses and tunes a FAISS layout from the
collection itself; ``sharding`` splits a folder between torchrun ranks and merges their parts.
"""

from composir.index import faiss_store, milvus_store  # noqa: F401  (registers the stores)
from composir.index.faiss_store import (
    FileEntry,
    GalleryIndex,
    IndexDamagedError,
    faiss_threads,
    inside,
    merge_parts,
    plan_changes,
    scan_media,
    shard_of,
    write_report,
)
from composir.index.milvus_store import MilvusIndex
from composir.index.store import STORES, GalleryStore, IndexSettings, open_index, register_store, store_of

__all__ = [
    "STORES",
    "FileEntry",
    "GalleryIndex",
    "GalleryStore",
    "IndexDamagedError",
    "IndexSettings",
    "MilvusIndex",
    "faiss_threads",
    "inside",
    "merge_parts",
    "open_index",
    "plan_changes",
    "register_store",
    "scan_media",
    "shard_of",
    "store_of",
    "write_report",
]
