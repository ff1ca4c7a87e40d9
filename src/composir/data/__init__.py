"""Benchmark records and readers. ``load_benchmark(name, root, split)`` is the one entry point."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from composir.data.captions import attach_captions, read_captions
from composir.data.chains import attach_chains, read_chains
from composir.data.circo import load_circo
from composir.data.cirr import load_cirr
from composir.data.fashioniq import CATEGORIES, load_fashioniq
from composir.data.records import PROTOCOLS, Benchmark, GalleryItem, Protocol, Triplet
from composir.data.synthetic import load_synthetic
from composir.data.webvid_covr import load_webvid_covr
from composir.errors import ConfigError

READERS: dict[str, Callable[..., Benchmark]] = {
    "cirr": load_cirr,
    "circo": load_circo,
    "webvid-covr": load_webvid_covr,
    "synthetic": load_synthetic,
    **{f"fashioniq-{c}": partial(load_fashioniq, category=c) for c in CATEGORIES},
}


def protocol_of(name: str) -> Protocol:
    """The evaluation protocol of a benchmark name (``load_benchmark``'s), without reading it."""
    if name not in READERS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {sorted(READERS)}")
    return PROTOCOLS["fashioniq" if name.startswith("fashioniq") else name]


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
    try:
        reader = READERS[name]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name!r}; known: {sorted(READERS)}") from None
    bench = reader(Path(root), split, **kwargs)
    if captions is not None:
        attach_captions(bench, read_captions(captions, caption_stage))
    if chains is not None:
        attach_chains(bench, read_chains(chains))
    return bench


__all__ = ["PROTOCOLS", "READERS", "Benchmark", "GalleryItem", "Protocol", "Triplet", "load_benchmark", "protocol_of"]
