"""Chunked top-k ranking vs one big matmul + topk, side by side in one run.

Each variant runs in its own fresh process so its peak memory (max RSS above the process's
baseline after the data is built) is its own. Default: 10k queries x 200k gallery x 256 dims.

    .venv/bin/python benchmarks/eval_speed.py [--queries 10000 --gallery 200000 --dim 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(mode: str, n: int, m: int, d: int, k: int) -> dict:
    import torch

    from composir.eval.ranking import chunked_topk

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
    g = torch.nn.functional.normalize(torch.randn(m, d), dim=1)
    exclude = torch.randint(0, m, (n,))
    base = _rss_mb()
    start = time.perf_counter()
    if mode == "full":
        sims = q @ g.T
        sims[torch.arange(n), exclude] = float("-inf")
        _, idx = torch.topk(sims, k, dim=1)
        del sims
    else:
        _, idx = chunked_topk(q, g, k, exclude, query_chunk=1024, gallery_chunk=65536)
    seconds = time.perf_counter() - start
    return {"mode": mode, "seconds": seconds, "peak_extra_mb": _rss_mb() - base, "checksum": int(idx[:, 0].sum())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.worker, args.queries, args.gallery, args.dim, args.k)))
        return
    results = {}
    for mode in ("chunked", "full"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--queries",
            str(args.queries),
            "--gallery",
            str(args.gallery),
            "--dim",
            str(args.dim),
            "--k",
            str(args.k),
        ]
        results[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    c, f = results["chunked"], results["full"]
    same = "yes" if c["checksum"] == f["checksum"] else "NO"
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch threads as default")
    print(f"{args.queries} queries x {args.gallery} gallery x {args.dim} dims, top-{args.k}")
    print("| variant | time (s) | peak extra memory (MiB) |")
    print("|---|---|---|")
    print(f"| chunked_topk (1024 x 65536 blocks) | {c['seconds']:.2f} | {c['peak_extra_mb']:.0f} |")
    print(f"| one matmul + topk | {f['seconds']:.2f} | {f['peak_extra_mb']:.0f} |")
    print(
        f"ratio time chunked/full: {c['seconds'] / f['seconds']:.2f}; "
        f"memory full/chunked: {f['peak_extra_mb'] / max(1.0, c['peak_extra_mb']):.1f}x; same top-1: {same}"
    )


if __name__ == "__main__":
    main()
