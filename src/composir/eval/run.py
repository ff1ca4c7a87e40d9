"""Evaluating a method on a named benchmark split: what ``composir eval`` calls.

``fashioniq`` evaluates its three categories and reports their means (the paper protocol);
every other name is one benchmark. Missing media are counted before any encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composir.errors import ComposirError


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 64
    num_frames: int = 8
    device: str = "cpu"
    num_workers: int = 0


# Called with (benchmark, result, file-name suffix) after each evaluated split: pictures, say.
OnResult = Callable[[Any, Any, str], None]


def load_checked(name: str, root: str, split: str, allow_missing: bool = False) -> dict[str, Any]:
    """Each benchmark ``name`` evaluates (itself, or every part of a benchmark of parts) read and its
    media counted: bad data is one line before any model is loaded, and the split is read once."""
    from composir.data import benchmark_spec, load_benchmark
    from composir.data.media_check import require_media

    benches = {}
    for part in benchmark_spec(name).parts or (name,):
        benches[part] = load_benchmark(part, root, split)
        require_media(benches[part], allow_missing, "pass --allow-missing")
    return benches


def evaluate_split(
    method, name: str, benches: dict[str, Any], options: EvalOptions, on_result: OnResult | None = None
) -> tuple[dict[str, Any], Any, Any]:
    """(the metrics JSON, the last benchmark, the last result) of ``benches`` (``load_checked``); a
    benchmark of parts (FashionIQ): each part evaluated, and their means."""
    from composir.data import benchmark_spec
    from composir.eval import metrics as M
    from composir.eval.evaluate import evaluate

    def run_one(bench_name: str, suffix: str):
        bench = benches[bench_name]
        result = evaluate(method, bench, batch_size=options.batch_size, num_frames=options.num_frames,
                          device=options.device, num_workers=options.num_workers)  # fmt: skip
        if on_result is not None:
            on_result(bench, result, suffix)
        return bench, result

    spec = benchmark_spec(name)
    if not spec.parts:
        bench, result = run_one(name, "")
        return result.to_json(), bench, result
    per_part: dict[str, dict[str, float]] = {}
    n, skipped = 0, []  # type: int, list[tuple[str, str]]
    for part in spec.parts:
        short = part.removeprefix(f"{name}-")
        bench, result = run_one(part, f"-{short}")
        per_part[short], n, skipped = result.metrics, n + len(result.query_ids), skipped + result.failures
    out: dict[str, Any] = {
        "benchmark": name,
        "split": bench.split,
        "metrics": M.fashioniq_metrics(per_part),
        "n_queries": n,
    }
    if skipped:
        out["skipped_media"] = [{"id": i, "error": e} for i, e in skipped]
    return out, bench, result


def write_submission(name: str, split: str, folder: str | Path, bench, result) -> list[Path]:
    """The test server's files for ``result``, in the benchmark's own format."""
    from composir.data import benchmark_spec

    spec = benchmark_spec(name)
    if spec.submission is None:
        raise ComposirError(f"no test-server submission format for {name!r} ({', '.join(submittable())} have one)")
    return spec.submission(Path(folder), split, bench, result)


def submittable() -> list[str]:
    from composir.data import BENCHMARKS

    return sorted(n for n, s in BENCHMARKS.items() if s.submission is not None)
