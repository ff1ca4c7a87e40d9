"""CIR-CoT's written chains and its speed on the synthetic benchmark.

``quality``: for each trained run, the chain it writes for every test query (mode ``reason``): the
conclusion against the target's attribute-level caption (the generator's ground truth, what the
chains were trained toward) -- exact match, the F1 of the objects it names (each "size colour
shape" phrase, as a multiset), whether the background is right, and the share of the gold
attribute words (colour, shape, size, background) it has; the caption section's attribute words
against the reference's caption; per family; and how often each section was written at all.

``latency``: one run, ``reason`` vs ``direct`` on the same queries, one query per call (what a
server sees), interleaved query by query so the machine's noise hits both alike, chain cache
cleared before every reason call (each one generates); median and p90 ms, one thread.

    .venv/bin/python benchmarks/cir_cot.py quality RUN [RUN ...] --data D [--n 600]
    .venv/bin/python benchmarks/cir_cot.py latency RUN --data D [--n 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from composir.data import load_benchmark
from composir.data.media import load_media
from composir.experiments.captions import attribute_accuracy, object_f1, parse_attribute_caption
from composir.train import load_run

FAMILIES = ("explicit", "multi", "implicit")


def _frames(method, bench, ids: list[str]) -> torch.Tensor:
    enc = method.encoder
    return torch.stack([torch.stack([enc.preprocess(f) for f in load_media(bench.media_item(i).path, 1)]) for i in ids])


@torch.no_grad()
def chains(method, bench, n: int) -> list[tuple[str, dict, str]]:
    """(family, explanation chain, gold attribute caption) for the first ``n`` test queries."""
    method.config.mode = "reason"
    out = []
    for start in range(0, min(n, len(bench.queries)), 64):
        batch = bench.queries[start : min(n, start + 64)]
        frames = _frames(method, bench, [q.reference_id for q in batch])
        tokens = method.encoder.tokenize([q.text for q in batch])
        _, explanations = method.encode_query_explained(frames, tokens)
        for q, e in zip(batch, explanations):
            gold = (q.extra.get("target_captions") or {}).get("attributes") or (q.extra.get("cot") or {}).get(
                "conclusion", ""
            )
            gold_caption = (q.extra.get("cot") or {}).get("caption", "")
            out.append((q.extra.get("family", ""), e["chain"], gold, gold_caption))
    return out


def cmd_quality(args) -> None:
    bench = load_benchmark("synthetic", Path(args.data), "test")
    print("| run | family | queries | conclusion exact | object F1 | background | conclusion attributes | "
          "caption attributes | sections written (c / r / o) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        method, _ = load_run(run)
        rows = defaultdict(list)
        for family, chain, gold, gold_caption in chains(method.eval(), bench, args.n):
            pred_objects, pred_bg = parse_attribute_caption(chain["conclusion"])
            gold_objects, gold_bg = parse_attribute_caption(gold)
            row = (
                chain["conclusion"].strip().lower() == gold.strip().lower(),
                object_f1(pred_objects, gold_objects),
                pred_bg == gold_bg,
                attribute_accuracy([chain["conclusion"]], [gold]) / 100,
                attribute_accuracy([chain["caption"]], [gold_caption]) / 100,
                *(bool(chain[k]) for k in ("caption", "reasoning", "conclusion")),
            )
            rows[family].append(row)
            rows["all"].append(row)
        for family in (*FAMILIES, "all"):
            r = rows.get(family)
            if not r:
                continue
            m = [100 * statistics.mean(float(x[i]) for x in r) for i in range(8)]
            print(f"| {Path(run).name} | {family} | {len(r)} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.1f} | "
                  f"{m[4]:.1f} | {m[5]:.0f} / {m[6]:.0f} / {m[7]:.0f} |")  # fmt: skip


@torch.no_grad()
def cmd_latency(args) -> None:
    torch.set_num_threads(1)
    bench = load_benchmark("synthetic", Path(args.data), "test")
    method, _ = load_run(args.run)
    method.eval()
    times: dict[str, list[float]] = {"reason": [], "direct": []}
    lengths = []
    for q in bench.queries[: args.n]:
        frames = _frames(method, bench, [q.reference_id])
        tokens = method.encoder.tokenize([q.text])
        for mode in times:  # interleaved: the same query in both modes, back to back
            method.config.mode = mode
            method._chains.clear()
            start = time.perf_counter()
            method.encode_query_explained(frames, tokens)
            times[mode].append(1000 * (time.perf_counter() - start))
            if mode == "reason":  # the chain it just wrote (the only entry of the cleared cache)
                lengths.append(len(next(iter(method._chains.values()))))
    print(f"{args.n} test queries, one per call, one thread; run {args.run}")
    print("| mode | median ms | p90 ms |")
    print("|---|---|---|")
    for mode, t in times.items():
        t = sorted(t)
        print(f"| {mode} | {statistics.median(t):.1f} | {t[int(0.9 * (len(t) - 1))]:.1f} |")
    print(f"chains of {statistics.mean(lengths):.0f} tokens on average (limit {method.config.max_chain_tokens})")
    print(f"reason / direct (medians): {statistics.median(times['reason']) / statistics.median(times['direct']):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("quality")
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=600)
    p.set_defaults(func=cmd_quality)
    p = sub.add_parser("latency")
    p.add_argument("run")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=int, default=60)
    p.set_defaults(func=cmd_latency)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
