"""Experiments over the registered claims: ``verdicts`` (per-query hits, paired bootstrap,
each check's outcome), ``board`` (the claims board on the schema benchmark), ``compare`` (a claim's
variants from scratch over seeds). ``benchmarks/board.py`` and ``benchmarks/compare.py`` run them."""
