"""What every gallery store offers (``GalleryStore``), its settings, and the store registry.

A store keeps one vector per gallery item plus its metadata (key, path, media type, size, mtime)
and brings itself in line with a media folder (``update``). Stores register by name
(``@register_store("faiss")``) in their own module; ``open_index(folder)`` asks each registered
store whether the folder is one of its own and opens it; FAISS is the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from composir.errors import ComposirError

KINDS = ("flat", "ivfsq8", "ivfpq", "auto")


@dataclass(frozen=True)
class IndexSettings:
    """How a FAISS store lays out its vectors. ``kind`` and ``refine`` of None mean the index's own
    (a new index: ``auto`` and 10). Other stores choose their own layout and ignore these."""

    kind: str | None = None
    nlist: int = 256  # IVF lists for an explicit ivfsq8/ivfpq kind (auto chooses its own)
    pq_m: int = 32  # bytes per IVF-PQ code; must divide the embedding dimension
    refine: int | None = None  # IVF-PQ: refine x k candidates are re-ranked by their exact vectors
    max_memory: int | None = None  # auto: resident budget in bytes (None: a quarter of the RAM)
    target_recall: float = 0.95  # auto: recall@10 the tuning must reach

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ComposirError(f"index kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("nlist", "pq_m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ComposirError(f"index {name}: {value!r} must be a whole number >= 1")
        if self.refine is not None and (isinstance(self.refine, bool) or not isinstance(self.refine, int)
                                        or self.refine < 0):  # fmt: skip
            raise ComposirError(f"index refine: {self.refine!r} must be a whole number >= 0 (0 or 1: no re-ranking)")
        if self.max_memory is not None and (not isinstance(self.max_memory, int) or self.max_memory < 1):
            raise ComposirError(f"index max_memory: {self.max_memory!r} must be a positive number of bytes")
        target = self.target_recall
        if not isinstance(target, (int, float)) or not math.isfinite(target) or not 0 < target <= 1:
            raise ComposirError(f"index target_recall: {target!r} must be in (0, 1]")

    @classmethod
    def of(cls, settings: IndexSettings | None = None, **knobs: Any) -> IndexSettings:
        """``settings`` with the given knobs (the dataclass's field names) replaced."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(knobs) - names)
        if unknown:
            raise TypeError(f"unknown index settings: {', '.join(unknown)}")
        return replace(settings or cls(), **knobs)


# Encodes a batch of gallery items: (features (n, d), [(key, error)] for the items that failed).
Encode = Callable[[list], tuple[np.ndarray, list[tuple[str, str]]]]


@runtime_checkable
class GalleryStore(Protocol):
    """The operations search, the service and the CLI use, whatever keeps the vectors."""

    root: Path
    info: dict

    @property
    def exists(self) -> bool: ...

    def __len__(self) -> int: ...

    def current_generation(self) -> str | None:
        """A name that changes whenever another process has written a newer state."""
        ...

    def items(self) -> dict[str, tuple[int, int, float]]:
        """key -> (id, size, mtime)."""
        ...

    def lookup(self, ids: list[int]) -> dict[int, tuple[str, str, str]]:
        """id -> (key, absolute path, media type)."""
        ...

    def key_to_id(self, key: str) -> int | None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` best items per query, best first; ids of -1 pad short rows."""
        ...

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
    ) -> dict:
        """Add new/changed files, drop deleted ones (among those ``keep`` selects); the report."""
        ...


@dataclass(frozen=True)
class StoreSpec:
    name: str
    cls: type
    holds: Callable[[Path], bool]  # is this folder one of this store's indexes?
    help: str
    # A new empty store for index folder ``folder``, anything else it needs kept in ``workdir``
    # (tests and smoke runs: every store passes the same contract tests through it).
    example: Callable[[Path, Path], Any]


STORES: dict[str, StoreSpec] = {}


def register_store(
    name: str, holds: Callable[[Path], bool], help: str, example: Callable[[Path, Path], Any] | None = None
) -> Callable[[type], type]:
    """Register a store class under ``name``; ``holds(folder)`` recognises its index folders;
    ``example(folder, workdir)`` opens a new one (default: ``cls(folder)``)."""

    def add(cls: type) -> type:
        if name in STORES:
            raise ValueError(f"index store {name!r} is registered twice")
        STORES[name] = StoreSpec(name, cls, holds, help, example or (lambda folder, workdir: cls(folder)))
        return cls

    return add


DEFAULT_STORE = "faiss"


def store_of(root: str | Path) -> str:
    """The name of the store whose index lives at ``root`` (the default store for a new folder)."""
    root = Path(root)
    for spec in STORES.values():
        if spec.name != DEFAULT_STORE and spec.holds(root):
            return spec.name
    return DEFAULT_STORE


def open_index(root: str | Path) -> Any:
    """The index stored at ``root``, opened by the store that wrote it."""
    return STORES[store_of(root)].cls(Path(root))
