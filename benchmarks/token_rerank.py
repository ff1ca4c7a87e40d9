"""Token re-ranking: how much of a token scoring's top k the index's vector shortlist keeps.

An index keeps one vector per item (the normalised mean of its tokens) and re-ranks a shortlist
of S items by the run's token scoring (``search.Searcher``). This measures, for each S, the mean
overlap between the re-ranked top k and the exhaustive token top k (recall@k of the shortlist),
and how often the top 1 is the same, over a benchmark's queries -- with the run's own encoder and
scoring, the tokens rounded to float16 as the index stores them; then what re-ranking S items costs
(fetching BLIP-2-sized tokens from the token file and scoring them).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/token_rerank.py --run RUN --root DATA \
        [--benchmark synthetic] [--split test] [--shortlists 10,25,50,100,200] [--k 10]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from composir.data import load_benchmark
from composir.data.media import load_media
from composir.eval.evaluate import encode_media
from composir.methods.scoring import shortlist_vector, similarity
from composir.runs import load_run


@torch.no_grad()
def embeddings(method, bench, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, gallery tokens) as the index and the searcher compute them (gallery scoring)."""
    method.use_scoring(None)
    gallery = encode_media(bench.gallery, method.encode_target, method.encoder.preprocess, num_frames,
                           frame_scores=method.target_frame_scores, desc="gallery")  # fmt: skip
    if gallery.features.dim() != 3:
        raise SystemExit(f"the run scores {method.active_scoring!r}: its index holds vectors, nothing to re-rank")
    queries = []
    for q in bench.queries:
        item = bench.media_item(q.reference_id)
        frames = load_media(item.path, num_frames, item.media_type, sampling=method.reference_sampling)
        pixels = torch.stack([method.encoder.preprocess(f) for f in frames])[None]
        queries.append(method.encode_query(pixels, method.encoder.tokenize([q.text])))
    return torch.cat(queries), gallery.features.half().float()


def overlap(queries: torch.Tensor, gallery: torch.Tensor, shortlist: int, k: int) -> tuple[float, float]:
    """(mean |re-ranked top k ∩ exhaustive top k| / k, fraction with the same top 1)."""
    exact = similarity(queries, gallery).topk(k, dim=1).indices
    short = (shortlist_vector(queries) @ shortlist_vector(gallery).T).topk(min(shortlist, len(gallery)), dim=1).indices
    kept, same = 0.0, 0
    for i in range(len(queries)):
        scores = similarity(queries[i : i + 1], gallery[short[i]])[0]
        reranked = short[i][scores.topk(min(k, len(scores))).indices]
        kept += len(set(reranked.tolist()) & set(exact[i].tolist())) / k
        same += int(reranked[0] == exact[i][0])
    return kept / len(queries), same / len(queries)


def rerank_cost(shortlists: list[int], items: int = 10000, k_tokens: int = 32, dim: int = 256) -> dict[int, float]:
    """Milliseconds to fetch S items' tokens from a ``TokenStore`` of ``items`` BLIP-2-sized rows
    (32 x 256, float16) and score them (median of 20 queries)."""
    import tempfile
    import time

    from composir.index.tokens import TokenStore

    rng = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = TokenStore(tmp)
        for start in range(0, items, 1000):
            tokens = torch.nn.functional.normalize(torch.randn(1000, k_tokens, dim, generator=rng), dim=-1)
            store.put([f"item{start + i}" for i in range(1000)], tokens.numpy())
        query = torch.nn.functional.normalize(torch.randn(1, dim, generator=rng), dim=-1)
        out = {}
        for s in shortlists:
            times = []
            for _ in range(20):
                keys = [f"item{int(i)}" for i in torch.randint(0, items, (s,), generator=rng)]
                start = time.perf_counter()
                rows = store.get(keys, dim)
                similarity(query, torch.from_numpy(np.stack(list(rows.values()))))
                times.append(time.perf_counter() - start)
            out[s] = 1000 * sorted(times)[len(times) // 2]
        store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--benchmark", default="synthetic")
    p.add_argument("--split", default="test")
    p.add_argument("--shortlists", default="10,25,50,100,200")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-queries", type=int, default=1000)
    args = p.parse_args()
    method, cfg = load_run(args.run)
    bench = load_benchmark(args.benchmark, args.root, args.split)
    bench.queries = bench.queries[: args.max_queries]
    queries, gallery = embeddings(method.eval(), bench, cfg.data.num_frames)
    print(f"{len(queries)} queries, {len(gallery)} items of {gallery.shape[1]} tokens, scoring {method.active_scoring}")
    print(f"| shortlist S | recall@{args.k} of the re-ranked shortlist | same top 1 |")
    print("|---|---|---|")
    rows = {}
    for s in (int(v) for v in args.shortlists.split(",")):
        kept, same = overlap(queries, gallery, s, args.k)
        rows[s] = {"recall": kept, "same_top1": same}
        print(f"| {s} | {kept:.3f} | {same:.3f} |")
    cost = rerank_cost(sorted(rows))
    print(
        "re-ranking cost, 10,000 stored items of 32 x 256 tokens: "
        + ", ".join(f"S={s}: {ms:.1f} ms" for s, ms in cost.items())
    )
    print(json.dumps({"gallery": len(gallery), "queries": len(queries), "k": args.k, "by_shortlist": rows, "ms": cost}))


if __name__ == "__main__":
    main()
