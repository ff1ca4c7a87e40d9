"""Benchmark records and readers. ``load_benchmark(name, root, split)`` is the one entry point; each
benchmark registers itself (reader, protocol, submission writer) in its reader's module."""

from __future__ import annotations

from pathlib import Path

# Importing the reader modules registers their benchmarks.
from composir.data import circo, cirr, fashioniq, synthetic, webvid_covr  # noqa: F401
from composir.data.captions import attach_captions, read_captions
from composir.data.chains import attach_chains, read_chains
from composir.data.records import PROTOCOLS, Benchmark, GalleryItem, Protocol, Triplet
from composir.data.registry import BENCHMARKS, BenchmarkSpec, benchmark_spec, readable_benchmarks, register_benchmark
from composir.errors import ConfigError


def protocol_of(name: str) -> Protocol:
    """The evaluation protocol of a benchmark name (``load_benchmark``'s), without reading it."""
    return benchmark_spec(name).protocol


def load_benchmark(
    name: str,
    root: str | Path,
    split: str,
    captions: str | Path | None = None,
    caption_stage: str = "final",
    chains: str | Path | None = None,
    **kwargs,
) -> Benchmark:
    """Read a benchmark's annotations (never its pixels) into queries and a gallery; ``captions``: a
    caption cache (``data.target_captions``) whose ``caption_stage`` becomes the targets' captions;
    ``chains``: reasoning chains per query (``data.chains``, ``composir annotate-cot``)."""
    spec = benchmark_spec(name)
    if spec.reader is None:
        raise ConfigError(f"{name} is evaluated as its parts ({', '.join(spec.parts)}); read one of them")
    bench = spec.reader(Path(root), split, **kwargs)
    if captions is not None:
        attach_captions(bench, read_captions(captions, caption_stage))
    if chains is not None:
        attach_chains(bench, read_chains(chains))
    return bench


__all__ = [
    "BENCHMARKS",
    "PROTOCOLS",
    "Benchmark",
    "BenchmarkSpec",
    "GalleryItem",
    "Protocol",
    "Triplet",
    "benchmark_spec",
    "load_benchmark",
    "protocol_of",
    "readable_benchmarks",
    "register_benchmark",
]
