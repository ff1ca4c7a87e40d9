"""A token-scoring run's index: one vector per item for the ANN search, every item's tokens kept
beside the store, and the shortlist re-ranked by the run's own scoring (index/tokens.py,
search/searcher.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from composir.cli import main
from composir.index.tokens import TokenStore
from composir.methods.scoring import shortlist_vector, similarity
from composir.search import Searcher
from composir.search.encode import load_query_frames
from helpers import _hub_blip2


def _photos(folder, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(np.kron(base, np.ones((8, 8, 1), np.uint8))).save(folder / f"p{i:02d}.png")


@pytest.fixture(scope="module")
def zero_shot_index(tmp_path_factory):
    """BLIP-2's own ITC scoring (``blip2_zero_shot``: text [CLS] against the best target token),
    a random tiny BLIP-2 in the hub's layout, over 14 pictures."""
    tmp = tmp_path_factory.mktemp("rerank")
    _, hub = _hub_blip2(tmp)
    _photos(tmp / "media", 14)
    args = ["index", "--encoder", "blip2", "--pretrained", str(hub), "--method", "blip2_zero_shot",
            "--media", str(tmp / "media"), "--out", str(tmp / "index")]  # fmt: skip
    assert main(args) == 0
    return tmp, args


def _exhaustive(searcher, reference, text, leave_out=None):
    """Every indexed item (but ``leave_out``) scored by the run's token scoring, from the tokens as
    the index keeps them (float16): ids in that order, their scores, and the ids in the order of
    the item vectors alone."""
    method = searcher.method
    frames = load_query_frames(method, reference, searcher.num_frames)
    query = method.encode_query(frames, method.encoder.tokenize([text]))
    keys = [row[0] for _, row in sorted(searcher.index.lookup(list(range(64))).items()) if row[0] != leave_out]
    stored = searcher.tokens.get(keys, query.shape[-1])
    gallery = torch.from_numpy(np.stack([stored[k] for k in keys]))
    scores = similarity(query, gallery)[0]
    by_vector = (query @ shortlist_vector(gallery).T)[0].argsort(descending=True).tolist()
    order = scores.argsort(descending=True).tolist()
    return [keys[j] for j in order], scores[order], [keys[j] for j in by_vector]


@torch.no_grad()
def test_search_reranks_the_shortlist_by_the_runs_token_scoring(zero_shot_index):
    tmp, _ = zero_shot_index
    searcher = Searcher(tmp / "index", shortlist=100)
    assert searcher.scoring == "max_target_tokens" and searcher.index.info["scoring"] == "max_target_tokens"
    # An indexed reference, by its id: it leaves its own results.
    want_ids, want_scores, by_vector = _exhaustive(searcher, tmp / "media" / "p03.png", "make it red", "p03.png")
    got = searcher.search("p03.png", "make it red", k=8)
    assert [r.id for r in got] == want_ids[:8]
    torch.testing.assert_close(torch.tensor([r.score for r in got]), want_scores[:8], atol=1e-5, rtol=1e-5)
    # The mechanism is engaged: the vector order alone ranks these items otherwise.
    assert by_vector[:8] != want_ids[:8]


@torch.no_grad()
def test_the_shortlist_is_longer_than_k(zero_shot_index):
    """The best item by tokens need not be among the best k by vectors: a search for k fetches the
    whole shortlist, so it still finds it. One item is given a token equal to the query (the best
    score there is) while its vector, the mean of its tokens, stays among the last."""
    tmp, _ = zero_shot_index
    searcher = Searcher(tmp / "index", shortlist=100)
    method, reference = searcher.method, tmp / "media" / "p02.png"
    query = method.encode_query(load_query_frames(method, reference, 1), method.encoder.tokenize(["add a cat"]))
    _, _, by_vector = _exhaustive(searcher, reference, "add a cat", "p02.png")
    needle = by_vector[-1]
    writer = TokenStore(tmp / "index")
    original = writer.get([needle], query.shape[-1])[needle]
    planted = original.copy()
    planted[0] = query[0].numpy()
    writer.put([needle], planted[None])
    try:
        assert _exhaustive(searcher, reference, "add a cat", "p02.png")[0][0] == needle
        assert [r.id for r in searcher.search("p02.png", "add a cat", k=1)] == [needle]
    finally:
        writer.put([needle], original[None])


@torch.no_grad()
def test_a_short_shortlist_is_reranked_within_itself(zero_shot_index):
    tmp, _ = zero_shot_index
    searcher = Searcher(tmp / "index", shortlist=4)
    _, _, by_vector = _exhaustive(searcher, tmp / "media" / "p05.png", "add a cat", "p05.png")
    got = [r.id for r in searcher.search(tmp / "media" / "p05.png", "add a cat", k=4)]
    full = [r.id for r in Searcher(tmp / "index", shortlist=100).search(tmp / "media" / "p05.png", "add a cat", k=13)]
    assert sorted(got) == sorted(by_vector[:4])  # the 4 the vectors found (the indexed file itself left out)
    assert got == [i for i in full if i in got]  # in the token scoring's order


def test_tokens_follow_the_index_through_updates(zero_shot_index):
    tmp, args = zero_shot_index
    store = TokenStore(tmp / "index", readonly=True)
    assert {k for (k,) in store.db.execute("SELECT key FROM tokens")} == {f"p{i:02d}.png" for i in range(14)}
    (tmp / "media" / "p13.png").unlink()
    assert main(args) == 0
    assert {k for (k,) in store.db.execute("SELECT key FROM tokens")} == {f"p{i:02d}.png" for i in range(13)}
    with pytest.raises(Exception, match="token file is missing"):
        TokenStore(tmp / "nowhere", readonly=True)
