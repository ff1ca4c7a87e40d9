"""Judging a paper's claim (``methods.claims``) from per-query hits of runs over several seeds.

Each run is scored per query (hit or miss at R@1, R@10, R@50, Rsubset@1; ``query_hits``). A check
is a *contrast*: a weighted sum of variants' mean hit rates over a set of buckets (e.g. IMAGINE
minus the baseline on the 1- and 4-shot buckets). Its interval comes from a two-level paired
bootstrap: seeds are drawn with replacement and, within each drawn seed, test queries are drawn
with replacement -- the same query indices for every variant of that seed, since all variants of
a seed were evaluated on the same test set. So the interval covers both training noise (seeds)
and test-set noise (queries), and it stays narrow where variants win and lose on the same queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from composir.data.records import Benchmark
from composir.eval.evaluate import EvalResult, score
from composir.methods.claims import Claim, Gain, LosesGain, Parity, Shrinks

HIT_METRICS = ("R@1", "R@10", "R@50", "Rsubset@1")
BASELINE = "baseline"  # the name the baseline's runs go under in ``Hits``

# variant name -> one run per seed (same seed order for every variant) -> metric or "bucket" -> per query
Hits = Mapping[str, Sequence[Mapping[str, np.ndarray]]]


def query_hits(bench: Benchmark, result: EvalResult, metrics: Sequence[str] = HIT_METRICS) -> dict[str, np.ndarray]:
    """Per query of ``bench``: each of ``metrics`` as 0/1 (the benchmark's own protocol scored on
    that query alone, so Recall_subset leaves the reference out as the protocol does); ``bucket``
    is the query's family."""
    out: dict[str, list] = {name: [] for name in metrics}
    subsets = result.subset_ranked_ids or [None] * len(bench.queries)
    for query, ranked, subset in zip(bench.queries, result.ranked_ids, subsets):
        one = score(bench.protocol, [query], [ranked], None if subset is None else [subset])
        for name in metrics:
            out[name].append(one[name] / 100.0)
    hits = {name: np.asarray(values) for name, values in out.items()}
    hits["bucket"] = np.asarray([q.extra.get("family", "") for q in bench.queries], dtype=object)
    return hits


Term = tuple[str, tuple[str, ...], float]  # (variant, buckets, weight)


@dataclass
class Contrast:
    estimate: float  # points (percent), mean over seeds on the full test sets
    low: float  # 95% bootstrap interval
    high: float


def contrast(hits: Hits, terms: Sequence[Term], metric: str, draws: int = 2000, seed: int = 0) -> Contrast:
    """Sum of ``weight * mean hit rate`` (in points) of each term, with its paired bootstrap interval."""
    n_seeds = min(len(hits[v]) for v, _, _ in terms)
    if n_seeds == 0:
        raise ValueError("no runs to compare")
    rng = np.random.default_rng(seed)
    groups = sorted({b for _, b, _ in terms})
    per_seed = np.zeros((n_seeds, n_seeds, draws))  # [seed, slot, draw]
    estimate = 0.0
    for s in range(n_seeds):
        stat_full = 0.0
        stat = np.zeros((n_seeds, draws))
        for group in groups:
            rows = np.flatnonzero(np.isin(hits[terms[0][0]][s]["bucket"], group))
            if len(rows) == 0:
                raise ValueError(f"no test queries in buckets {group}")
            index = rng.integers(len(rows), size=(n_seeds, draws, len(rows)), dtype=np.int32)
            for variant, buckets, weight in terms:
                if buckets != group:
                    continue
                values = np.asarray(hits[variant][s][metric], dtype=np.float64)[rows]
                stat_full += weight * values.mean()
                stat += weight * values[index].mean(-1)
        estimate += stat_full / n_seeds
        per_seed[s] = stat
    chosen = rng.integers(n_seeds, size=(draws, n_seeds))  # seeds drawn for each slot of each draw
    boot = per_seed[chosen, np.arange(n_seeds)[None, :], np.arange(draws)[:, None]].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Contrast(100 * estimate, 100 * float(low), 100 * float(high))


def difference(hits: Hits, variant: str, buckets: tuple[str, ...], metric: str, **kw) -> Contrast:
    """``variant`` minus the baseline on ``buckets``."""
    return contrast(hits, [(variant, buckets, 1.0), (BASELINE, buckets, -1.0)], metric, **kw)


@dataclass
class CheckResult:
    text: str  # the check in words
    contrast: Contrast
    outcome: str  # "holds" | "fails" | "inconclusive"


def judge(check, hits: Hits, **kw) -> CheckResult:
    """Whether ``check`` holds, fails or cannot be told apart at this many seeds and queries."""
    where = ", ".join(check.buckets)
    if isinstance(check, Gain):
        c = difference(hits, check.variant, check.buckets, check.metric, **kw)
        holds, fails = c.estimate >= check.at_least and c.low > 0, c.high < check.at_least
        text = f"{check.variant} − baseline ≥ +{check.at_least:g} {check.metric} on {where}"
    elif isinstance(check, Parity):
        c = difference(hits, check.variant, check.buckets, check.metric, **kw)
        holds = c.low >= -check.within and c.high <= check.within
        fails = c.low > check.within or c.high < -check.within
        text = f"{check.variant} within ±{check.within:g} {check.metric} of baseline on {where}"
    elif isinstance(check, Shrinks):
        then = check.then
        terms = [(check.variant, check.buckets, 1.0), (BASELINE, check.buckets, -1.0)]
        terms += [(check.variant, then, -1.0), (BASELINE, then, 1.0)]
        c = contrast(hits, terms, check.metric, **kw)
        holds, fails = c.low > 0, c.high < 0
        text = f"{check.variant}'s {check.metric} gain larger on {where} than on {', '.join(then)}"
    elif isinstance(check, LosesGain):
        # keep*(full - base) - (ablation - base) > 0: the ablation keeps less than `keep` of the gain.
        terms = [
            (check.variant, check.buckets, check.keep),
            (BASELINE, check.buckets, 1.0 - check.keep),
            (check.ablation, check.buckets, -1.0),
        ]
        c = contrast(hits, terms, check.metric, **kw)
        holds, fails = c.low > 0, c.high < 0
        text = f"{check.ablation} keeps < {check.keep:.0%} of {check.variant}'s {check.metric} gain on {where}"
    else:
        raise TypeError(f"unknown check {check!r}")
    outcome = "holds" if holds else "fails" if fails else "inconclusive"
    return CheckResult(text, c, outcome)


def verdict(results: Sequence[CheckResult]) -> str:
    """reproduced: every check holds; not reproduced: some check fails; else inconclusive."""
    if results and all(r.outcome == "holds" for r in results):
        return "reproduced"
    if any(r.outcome == "fails" for r in results):
        return "not reproduced"
    return "inconclusive"


def judge_claim(claim: Claim, hits: Hits, **kw) -> tuple[str, list[CheckResult]]:
    results = [judge(check, hits, **kw) for check in claim.checks]
    return verdict(results), results
