"""composir: composed image and video retrieval toolkit."""

import os

# OpenMP threads that spin between parallel regions starve every other process on a loaded machine:
# with one other busy job on 2 cores the demo's training ran 6-10x slower with GNU OpenMP's default
# wait policy than with PASSIVE (docs/benchmarks.md, "The demo on a busy machine"). libgomp reads
# this when torch loads it, so it is set here, before composir imports torch; a value the user set
# is kept, and a program that imported torch before composir keeps whatever torch started with.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from typing import Any

__version__ = "0.1.0"

__all__ = ["Benchmark", "GalleryItem", "Triplet", "__version__", "load_benchmark"]


def __getattr__(name: str) -> Any:
    # The data layer (numpy, media decoding) is imported on first use: a command that needs none
    # of it, such as a search sent to a running server, starts without it.
    if name in ("Benchmark", "GalleryItem", "Triplet", "load_benchmark"):
        import composir.data

        return getattr(composir.data, name)
    raise AttributeError(f"module 'composir' has no attribute {name!r}")
