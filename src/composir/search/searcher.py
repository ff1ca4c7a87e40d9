"""Search an index with a reference (image/video path or an id in the index) and/or a text.

- reference + text: the method's composed query (what it was trained for);
- reference only: the reference's target embedding (find similar items);
- text only: the encoder's text feature, in the same space only where the backbone aligns text
  and images contrastively (pretrained CLIP/BLIP-2; weak for a model trained from scratch on
  composed queries alone).
"""

from __future__ import annotations

import filecmp
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from composir.data.media import DecodeLimits
from composir.errors import ComposirError
from composir.index import IndexDamagedError, inside, open_index
from composir.index.tokens import TokenStore
from composir.methods.scoring import check_scoring, shortlist_vector, similarity
from composir.search.encode import load_query_frames

# Items a token-scoring index fetches by their vectors and re-ranks by their tokens, per query
# (docs/benchmarks.md, "Token re-ranking": its measured recall).
DEFAULT_SHORTLIST = 200


@dataclass
class SearchResult:
    id: str
    path: str
    score: float
    media_type: str = "image"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "score": round(float(self.score), 6), "media_type": self.media_type}


@dataclass
class Reference:
    """A decoded query reference: its frames and, when it is an indexed item, its id (left out of
    its own results)."""

    frames: torch.Tensor
    own_id: int | None = None


class Searcher:
    """Loads the index and the model that built it once; answers many queries.

    A search is two steps so that a server can decode references outside its model lock:
    ``load_reference`` (file or index id -> frames) and ``search_explained`` (the forward pass and
    the index lookup). ``refresh`` switches to a newer generation written by ``composir index``.
    """

    def __init__(
        self, index: str | Path, run: str | Path | None = None, device: str = "cpu", shortlist: int = DEFAULT_SHORTLIST
    ):
        from composir.runs import build_untrained, load_run

        self.index = open_index(index)
        if not self.index.exists:
            raise ComposirError(f"{index}: no index here (run `composir index` first)")
        run = run or self.index.info.get("run")
        spec = self.index.info.get("model")
        if run:
            if not (Path(run) / "config.yaml").is_file():
                raise ComposirError(f"{index}: its model run {run} is not there (pass run= / --run)")
            self.method, self.config = load_run(run, "best", device)
        elif spec:  # a zero-shot index: the same untrained model, built again
            self.method, self.config = build_untrained(spec, device), None
        else:
            raise ComposirError(f"{index}: the index does not name its model run; pass run=")
        self.fingerprint = self.method.encoder.fingerprint()
        self._check(self.index)
        self.device = device
        default_frames = self.config.data.num_frames if self.config is not None else 1
        self.num_frames = int(self.index.info.get("num_frames", default_frames))
        if shortlist < 1:
            raise ComposirError(f"shortlist must be at least 1, got {shortlist}")
        self.shortlist = shortlist
        # The scoring the index was built for (an index from before scorings holds vectors): a token
        # scoring embeds the composed query as the run scores it and re-ranks the shortlist.
        self.scoring = check_scoring(str(self.index.info.get("scoring", "vector")), f"{index}: info scoring")
        self.method.active_scoring = self.scoring
        self.tokens = TokenStore(self.index.root, readonly=True) if self.scoring != "vector" else None
        self._ids_by_size: dict[int, list[int]] | None = None  # for indexed_copy, built on first use

    def _check(self, index) -> None:
        if self.fingerprint != index.info.get("fingerprint"):
            raise ComposirError(f"{index.root}: built with another model than this run (fingerprint mismatch)")

    def refresh(self) -> bool:
        """Reload the index if ``CURRENT`` names a newer generation; True when it did."""
        name = self.index.current_generation()
        if name is None or name == self.index.current_name:
            return False
        try:
            fresh = open_index(self.index.root)
        except IndexDamagedError:
            # A writer switched generations again between our reading CURRENT and loading it (and
            # removed the one we read): keep answering from the loaded one; the next request retries.
            return False
        self._check(fresh)
        self.index = fresh
        self._ids_by_size = None
        return True

    @property
    def method_name(self) -> str:
        """The registered method's name (a run's, or a zero-shot index's spec)."""
        if self.config is not None:
            return self.config.method.name
        return str((self.index.info.get("model") or {}).get("method", self.method.name))

    @property
    def media_root(self) -> Path | None:
        root = self.index.info.get("media_root")
        return Path(root) if root else None

    def media_path(self, item_id: int) -> Path | None:
        """The indexed item's file, resolved, if it is still a regular file inside the media root
        (checked now: a symlink changed since indexing cannot lead outside it)."""
        row = self.index.lookup([item_id]).get(item_id)
        if row is None or self.media_root is None:
            return None
        return inside(self.media_root, Path(row[1]))

    def load_reference(
        self, reference: str | Path, max_pixels: int | None = None, limits: DecodeLimits | None = None
    ) -> Reference:
        """Frames of the reference (a file, or an id in the index) and its id in the index."""
        ref = str(reference)
        own_id = self.index.key_to_id(ref)
        if own_id is not None:
            path = self.media_path(own_id)
            if path is None:
                raise ComposirError(f"reference {ref!r} is indexed but its file is gone or outside the media folder")
        else:
            path = Path(ref)
            if not path.is_file():
                raise ComposirError(f"reference {ref!r} is neither a file nor an id in the index")
            own_id = self.indexed_copy(path)  # an upload of an indexed file leaves its own results too
        return Reference(load_query_frames(self.method, path, self.num_frames, max_pixels, limits), own_id)

    def indexed_copy(self, path: Path) -> int | None:
        """The id of an indexed item whose file has exactly ``path``'s bytes (same size first, then
        the bytes compared), or None."""
        if self._ids_by_size is None:
            by_size: dict[int, list[int]] = {}
            for item_id, size, _ in self.index.items().values():
                by_size.setdefault(int(size), []).append(int(item_id))
            self._ids_by_size = by_size
        for item_id in self._ids_by_size.get(path.stat().st_size, []):
            indexed = self.media_path(item_id)
            if indexed is not None and filecmp.cmp(indexed, path, shallow=False):
                return item_id
        return None

    @torch.no_grad()
    def explained_query(self, reference: Reference | None, text: str | None) -> tuple[torch.Tensor, Any]:
        """The query embedding and, for a composed query, the method's explanation (one pass)."""
        if reference is None and not text:
            raise ComposirError("give a reference, a text, or both")
        if reference is not None and text:
            tokens = self.method.encoder.tokenize([text]).to(self.device)
            query, explanations = self.method.encode_query_explained(reference.frames.to(self.device), tokens)
            return query, explanations[0] if explanations else None
        return self._single_query(reference, text), None

    def _single_query(self, reference: Reference | None, text: str | None) -> torch.Tensor:
        if reference is not None:
            frames = reference.frames.to(self.device)
            if self.method.target_text:  # an image alone, as an uncaptioned target
                return self.method.encode_target(frames, self.method.encoder.tokenize([""]).to(self.device))
            return self.method.encode_target(frames)
        tokens = self.method.encoder.tokenize([text]).to(self.device)
        return F.normalize(self.method.encoder.encode_text(tokens), dim=-1)

    def search_explained(
        self, reference: Reference | None, text: str | None, k: int = 10
    ) -> tuple[list[SearchResult], Any]:
        """Results and the method's explanation of the query (None where it has none), one forward pass."""
        if k < 1:
            raise ComposirError(f"k must be at least 1, got {k}")
        vec, explanation = self.explained_query(reference, text)
        own = reference.own_id if reference is not None else None
        rerank = self.tokens is not None and reference is not None and bool(text)
        wanted = max(k, self.shortlist) if rerank else k
        scores, ids = self.index.search(shortlist_vector(vec).float().cpu().numpy(), wanted + (own is not None))
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and i != own]
        meta = self.index.lookup([i for i, _ in hits])
        if rerank:
            hits = self._rerank(vec, hits, meta)
        return [SearchResult(meta[i][0], meta[i][1], s, meta[i][2]) for i, s in hits[:k] if i in meta], explanation

    def _rerank(self, query: torch.Tensor, hits: list[tuple[int, float]], meta: dict) -> list[tuple[int, float]]:
        """The shortlist ordered by the run's token scoring (``methods.scoring.similarity``); an item
        without stored tokens (written by an interrupted run) keeps its place after those with them."""
        assert self.tokens is not None
        keys = {i: meta[i][0] for i, _ in hits if i in meta}
        stored = self.tokens.get(keys.values(), int(query.shape[-1]))
        scored = [i for i, _ in hits if keys.get(i) in stored]
        if not scored:
            return hits
        gallery = torch.from_numpy(np.stack([stored[keys[i]] for i in scored])).to(query)
        token_scores = similarity(query.float(), gallery.float())[0].tolist()
        ranked = sorted(zip(scored, token_scores), key=lambda pair: -pair[1])
        return ranked + [(i, s) for i, s in hits if keys.get(i) not in stored]

    def search(
        self, reference: str | Path | Reference | None = None, text: str | None = None, k: int = 10
    ) -> list[SearchResult]:
        """The ``k`` best items for a reference (a file, an id in the index, or one already loaded)
        and/or a text."""
        if reference is not None and not isinstance(reference, Reference):
            reference = self.load_reference(reference)
        return self.search_explained(reference, text, k)[0]
