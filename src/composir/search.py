"""Search an index with a reference (image/video path or an id in the index) and/or a text.

- reference + text: the method's composed query (what it was trained for);
- reference only: the reference's target embedding (find similar items);
- text only: the encoder's text feature, in the same space only where the backbone aligns text
  and images contrastively (pretrained CLIP/BLIP-2; weak for a model trained from scratch on
  composed queries alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from composir.errors import ComposirError
from composir.index import GalleryIndex, load_query_frames


@dataclass
class SearchResult:
    id: str
    path: str
    score: float
    media_type: str = "image"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "score": round(float(self.score), 6), "media_type": self.media_type}


class Searcher:
    """Loads the index and the model that built it once; answers many queries."""

    def __init__(self, index: str | Path, run: str | Path | None = None, device: str = "cpu"):
        from composir.train import load_run

        self.index = GalleryIndex(index)
        if not self.index.exists:
            raise ComposirError(f"{index}: no index here (run `composir index` first)")
        run = run or self.index.info.get("run")
        if not run:
            raise ComposirError(f"{index}: the index does not name its model run; pass run=")
        self.method, self.config = load_run(run, "best", device)
        fingerprint = self.method.encoder.fingerprint()
        if fingerprint != self.index.info.get("fingerprint"):
            raise ComposirError(f"{index}: built with another model than {run} (fingerprint mismatch)")
        self.device = device
        self.num_frames = int(self.index.info.get("num_frames", self.config.data.num_frames))

    def _reference(self, reference: str | Path) -> tuple[torch.Tensor, int | None]:
        """Frames of the reference and its id in the index (so it is left out of its own results)."""
        ref = str(reference)
        own_id = self.index.key_to_id(ref)
        if own_id is not None:
            _, path, _ = self.index.lookup([own_id])[own_id]
            return load_query_frames(self.method, path, self.num_frames), own_id
        path = Path(ref)
        if not path.is_file():
            raise ComposirError(f"reference {ref!r} is neither a file nor an id in the index")
        return load_query_frames(self.method, path, self.num_frames), None

    @torch.no_grad()
    def query_vector(self, reference: str | Path | None, text: str | None) -> tuple[torch.Tensor, int | None]:
        if reference is None and not text:
            raise ComposirError("give a reference, a text, or both")
        own = None
        if reference is not None:
            frames, own = self._reference(reference)
            frames = frames.to(self.device)
            if text:
                tokens = self.method.encoder.tokenize([text]).to(self.device)
                return self.method.encode_query(frames, tokens), own
            return self.method.encode_target(frames), own
        tokens = self.method.encoder.tokenize([text]).to(self.device)
        return F.normalize(self.method.encoder.encode_text(tokens), dim=-1), own

    def search(self, reference: str | Path | None = None, text: str | None = None, k: int = 10) -> list[SearchResult]:
        vec, own = self.query_vector(reference, text)
        scores, ids = self.index.search(vec.float().cpu().numpy(), k + (1 if own is not None else 0))
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and i != own][:k]
        meta = self.index.lookup([i for i, _ in hits])
        return [SearchResult(meta[i][0], meta[i][1], s, meta[i][2]) for i, s in hits if i in meta]
