"""Indexing one media folder from several torchrun ranks.

FAISS: each rank indexes its shard of the files (``shard_of``: crc32 of the relative path) into
``OUT/parts/part-RRR-of-WWW`` (flat, incremental), and rank 0 merges the parts into ``OUT``.
Milvus: every rank writes its shard straight into the one collection (a Milvus server; Milvus
Lite is one process's file), and rank 0 writes the folder's pointer and info.
"""

from __future__ import annotations

from pathlib import Path

from composir.index.faiss_store import GalleryIndex, merge_parts, shard_of
from composir.index.milvus_store import MilvusIndex
from composir.index.store import Encode, IndexSettings


def part_folders(out: str | Path, world: int) -> list[Path]:
    return [Path(out) / "parts" / f"part-{r:03d}-of-{world:03d}" for r in range(world)]


def index_sharded_faiss(
    out: str | Path, media: str | Path, encode: Encode, info: dict, settings: IndexSettings, batch_size: int,
    rank: int, world: int, barrier,
) -> dict:  # fmt: skip
    """This rank's part, then (rank 0) the merge; ``barrier()`` waits for every rank. The merged
    report on rank 0 (``merged``: items in the merged index), this rank's part report elsewhere."""
    parts = part_folders(out, world)
    report = GalleryIndex(parts[rank]).update(
        media, encode, info, kind="flat", batch_size=batch_size, progress=rank == 0,
        keep=lambda key: shard_of(key, world) == rank,
    )  # fmt: skip
    barrier()
    if rank == 0:
        report = {**report, **merge_parts(parts, out, settings)}
    barrier()
    return report


def index_sharded_milvus(
    index: MilvusIndex, media: str | Path, encode: Encode, info: dict, batch_size: int, rank: int, world: int, barrier
) -> dict:
    report = index.update(media, encode, info, batch_size=batch_size, progress=rank == 0,
                          keep=lambda key: shard_of(key, world) == rank, write_info=False)  # fmt: skip
    barrier()
    if rank == 0:
        index.write_info(info, media)
    barrier()
    return report
