"""Searching an index: ``Searcher`` loads an index and the model that built it once and answers
queries (reference and/or text); ``encode`` holds the model-side helpers indexing shares."""

from composir.search.encode import load_query_frames, model_encoder
from composir.search.searcher import Reference, Searcher, SearchResult

__all__ = ["Reference", "SearchResult", "Searcher", "load_query_frames", "model_encoder"]
