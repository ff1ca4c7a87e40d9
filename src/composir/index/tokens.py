"""The tokens of each indexed item, for runs that score by tokens (``methods.scoring``).

A store keeps one vector per item (its ANN search finds a shortlist with it); a run whose scoring
compares tokens -- SPRC and BLIP-2's ITC take the best of the target's K query tokens -- re-ranks
that shortlist with the tokens kept here. They live beside the store in one SQLite file at the
index folder's top (``tokens.sqlite``), whatever the store: the FAISS generations and a Milvus
collection alike, and torchrun's ranks write it together (SQLite serialises the writers; each
batch is one transaction, so a killed run leaves whole rows). Rows are float16, keyed by the
item's key; ``prune`` drops the keys the index no longer holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from composir.errors import ComposirError

FILE_NAME = "tokens.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS tokens (key TEXT PRIMARY KEY, count INTEGER NOT NULL, data BLOB NOT NULL)"


class TokenStore:
    """Item key -> (K, D) float16 tokens, in ``<index folder>/tokens.sqlite``."""

    def __init__(self, root: str | Path, readonly: bool = False):
        self.path = Path(root) / FILE_NAME
        if readonly and not self.path.is_file():
            raise ComposirError(f"{self.path}: the index scores by tokens but its token file is missing; "
                                "run `composir index` again")  # fmt: skip
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False)
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                self.db.execute(_SCHEMA)
                self.db.commit()
        except sqlite3.DatabaseError as exc:
            raise ComposirError(f"{self.path}: not a readable token file ({exc})") from exc

    def put(self, keys: Sequence[str], tokens: np.ndarray) -> None:
        """Store (n, K, D) tokens for ``keys`` (replacing what a key had)."""
        rows = [(key, int(t.shape[0]), np.ascontiguousarray(t, dtype=np.float16).tobytes()) for key, t in
                zip(keys, tokens)]  # fmt: skip
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO tokens (key, count, data) VALUES (?, ?, ?)", rows)

    def get(self, keys: Iterable[str], dim: int) -> dict[str, np.ndarray]:
        """The tokens of the ``keys`` that have them, as float32 (K, dim) arrays."""
        keys = list(keys)
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit, with room
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for key, count, data in self.db.execute(
                f"SELECT key, count, data FROM tokens WHERE key IN ({marks})", chunk
            ):
                found[key] = np.frombuffer(data, dtype=np.float16).reshape(count, dim).astype(np.float32)
        return found

    def prune(self, keep: set[str]) -> int:
        """Drop the rows of keys not in ``keep`` (items the index no longer holds); how many."""
        stale = [(k,) for (k,) in self.db.execute("SELECT key FROM tokens") if k not in keep]
        with self.db:
            self.db.executemany("DELETE FROM tokens WHERE key = ?", stale)
        return len(stale)

    def close(self) -> None:
        self.db.close()
