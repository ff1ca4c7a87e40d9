"""Reasoning chains per query (``composir annotate-cot`` writes them; CIR-CoT trains on them).

JSON Lines, one record per query id, appended as chains are made (the caption cache's format and
rules: the last record of an id wins, an ``error`` record marks a query to try again, a cut-off
last line is ignored)::

    {"id": "12", "cot": {"caption": "...", "reasoning": "...", "conclusion": "..."}, "model": "qwen2-vl-7b"}
    {"id": "13", "error": "HTTP 500 after 3 tries"}

``load_benchmark(..., chains=path)`` / ``data.chains`` put each query's chain in
``extra["cot"]``, where the synthetic benchmark keeps its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from composir.data.captions import read_records
from composir.data.records import Benchmark

SECTIONS = ("caption", "reasoning", "conclusion")


def _chain_problem(record: dict[str, Any]) -> str | None:
    cot = record.get("cot")
    if not (isinstance(cot, dict) and all(isinstance(cot.get(k), str) for k in SECTIONS)):
        return f'"cot" must be an object with strings {", ".join(SECTIONS)}'
    return None


def read_chain_records(path: str | Path) -> dict[str, dict[str, Any]]:
    return read_records(path, _chain_problem, "chain annotations")


def read_chains(path: str | Path) -> dict[str, dict[str, str]]:
    """Query id -> its chain (ids whose last record is an error are left out)."""
    return {qid: r["cot"] for qid, r in read_chain_records(path).items() if "error" not in r}


def attach_chains(bench: Benchmark, chains: dict[str, dict[str, str]]) -> int:
    """Each query's chain into ``extra["cot"]``; returns how many queries have none."""
    missing = 0
    for q in bench.queries:
        if q.query_id in chains:
            q.extra["cot"] = chains[q.query_id]
        elif "cot" not in q.extra:
            missing += 1
    return missing
