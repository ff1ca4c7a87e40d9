"""Evaluation: metrics on ranked id lists, chunked ranking, test-server submission files."""
