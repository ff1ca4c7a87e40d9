"""Benchmarks registered by name, each in its reader's module: the reader, the evaluation
protocol, and (where the benchmark has a test server) the submission writer. Adding a benchmark
is adding one file that calls ``register_benchmark``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composir.data.records import Benchmark, Protocol
from composir.errors import ConfigError

# (folder, split, benchmark, evaluation result) -> the files written for the test server.
Submit = Callable[[Path, str, Benchmark, Any], list[Path]]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    protocol: Protocol
    reader: Callable[..., Benchmark] | None  # (root, split, **options) -> Benchmark; None for a mean of parts
    help: str = ""
    parts: tuple[str, ...] = ()  # evaluated as these benchmarks and reported with their means (FashionIQ)
    submission: Submit | None = None


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(spec: BenchmarkSpec) -> BenchmarkSpec:
    if spec.name in BENCHMARKS and BENCHMARKS[spec.name] != spec:
        raise ValueError(f"benchmark {spec.name!r} is registered twice")
    if (spec.reader is None) == (not spec.parts):
        raise ValueError(f"benchmark {spec.name!r}: give a reader or the parts it is the mean of, not both")
    BENCHMARKS[spec.name] = spec
    return spec


def benchmark_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def readable_benchmarks() -> list[str]:
    """Names that read one split (what training and ``load_benchmark`` take)."""
    return sorted(n for n, s in BENCHMARKS.items() if s.reader is not None)
