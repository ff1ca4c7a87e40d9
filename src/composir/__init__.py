"""composir: composed image and video retrieval toolkit."""

from composir.data import Benchmark, GalleryItem, Triplet, load_benchmark

__version__ = "0.1.0"

__all__ = ["Benchmark", "GalleryItem", "Triplet", "__version__", "load_benchmark"]
