"""Query encoding at evaluation: every query on its own vs each distinct reference encoded once.

CIRR reuses references (val: 4,181 queries over 2,165 references). `evaluate()` decodes each
distinct reference once and calls `method.encode_queries`, which runs the vision tower once per
reference and fuses it with all of that reference's texts. This script encodes the same queries
both ways, side by side, on a BLIP-2-shaped model (EVA ViT-g widths at reduced depth, as in
train_speed.py), with CIRR val's real reference multiplicity: the queries of randomly drawn
references of `captions/cap.rc2.val.json` (random pixels stand in for the images).

    .venv/bin/python benchmarks/eval_queries.py [--queries 256] [--batch 32] [--vit-layers 6]
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import torch

from composir.data import load_benchmark
from composir.encoders import build_encoder
from composir.eval.evaluate import _reference_batches
from composir.methods import build_method

REALDATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "realdata" / "cirr"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vit-layers", type=int, default=6)
    parser.add_argument("--methods", nargs="+", default=["qformer_fusion", "imagine", "combiner"])
    parser.add_argument("--root", default=str(REALDATA))
    args = parser.parse_args()
    import train_speed  # the BLIP-2-shaped encoder lives there (benchmarks/ is on sys.path)

    train_speed.BLIP2_SHAPED["vision_config"]["num_hidden_layers"] = args.vit_layers
    train_speed.register_blip2_shaped()
    torch.manual_seed(0)

    bench = load_benchmark("cirr", args.root, "val")
    queries_of: dict[str, list[int]] = {}
    for i, q in enumerate(bench.queries):
        queries_of.setdefault(q.reference_id, []).append(i)
    references: list[str] = []
    shuffled = list(queries_of)
    random.Random(0).shuffle(shuffled)  # a random sample of references keeps CIRR's multiplicities
    for ref in shuffled:
        if sum(len(queries_of[r]) for r in references) >= args.queries:
            break
        references.append(ref)
    counts = [len(queries_of[r]) for r in references]
    n_queries = sum(counts)
    print(
        f"CIRR val: {len(bench.queries)} queries over {len(queries_of)} references; "
        f"measured on {n_queries} queries over {len(references)} references"
    )
    encoder = build_encoder("tiny_blip2_shaped")
    frames = torch.randn(len(references), 1, 3, 224, 224)
    texts = [bench.queries[i].text for r in references for i in queries_of[r]]
    tokens = encoder.tokenize(texts)
    reference_of_query = torch.tensor([j for j, n in enumerate(counts) for _ in range(n)])

    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| method | per query: ViT passes, s | per reference: ViT passes, s | time ratio | max abs diff |")
    print("|---|---|---|---|---|")
    for name in args.methods:
        method = build_method(name, encoder).eval()
        with torch.no_grad():
            start = time.perf_counter()
            single = [
                method.encode_query(frames[reference_of_query[b : b + args.batch]], tokens[b : b + args.batch])
                for b in range(0, n_queries, args.batch)
            ]
            t_single = time.perf_counter() - start
            start = time.perf_counter()
            grouped, first = [], 0
            for batch in _reference_batches(counts, args.batch):
                local = reference_of_query[first : first + sum(counts[r] for r in batch)]
                grouped.append(
                    method.encode_queries(frames[batch], tokens[first : first + len(local)], local - batch[0])
                )
                first += len(local)
            t_grouped = time.perf_counter() - start
        diff = (torch.cat(single) - torch.cat(grouped)).abs().max().item()
        print(
            f"| {name} | {n_queries}, {t_single:.1f} | {len(references)}, {t_grouped:.1f} | "
            f"{t_grouped / t_single:.2f} | {diff:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
