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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from composir.data.records import Benchmark
from composir.eval.evaluate import EvalResult, score
from composir.methods.claims import (
    Claim,
    Decodes,
    Engaged,
    Gain,
    HasRange,
    Headroom,
    LosesGain,
    Parity,
    Precondition,
    RecoversGap,
    Retrieves,
    Shrinks,
    SubTask,
)

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
    hits["top1"] = np.asarray([ranked[0] if ranked else "" for ranked in result.ranked_ids], dtype=object)
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
    where = ", ".join(check.low if isinstance(check, RecoversGap) else check.buckets)
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
    elif isinstance(check, RecoversGap):
        # (variant - baseline) on low - fraction * (baseline high - baseline low) > 0
        f = check.fraction
        terms = [(check.variant, check.low, 1.0), (BASELINE, check.low, -1.0 + f), (BASELINE, check.high, -f)]
        c = contrast(hits, terms, check.metric, **kw)
        holds, fails = c.low > 0, c.high < 0
        text = (f"{check.variant} recovers ≥ {f:.0%} of the baseline's {check.metric} gap from {where} to "
                f"{', '.join(check.high)} on {where}")  # fmt: skip
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


@dataclass
class PreconditionResult:
    text: str  # the precondition in words
    value: float | None  # what was measured (points, or a fraction for Engaged); None: not measurable
    met: bool


def _rate(hits: Hits, variant: str, metric: str, buckets: Sequence[str]) -> float:
    """Mean hit rate (points) of ``variant`` on ``buckets``, over its seeds."""
    rates = []
    for run in hits[variant]:
        rows = np.isin(run["bucket"], list(buckets))
        if rows.any():
            rates.append(float(np.asarray(run[metric], dtype=np.float64)[rows].mean()))
    return 100 * float(np.mean(rates)) if rates else float("nan")


def _at_least(text: str, value: float, at_least: float) -> PreconditionResult:
    if math.isnan(value):
        return PreconditionResult(text + " (its buckets are not in these runs)", None, False)
    return PreconditionResult(text, value, bool(value >= at_least))


def check_precondition(pre: Precondition, hits: Hits) -> PreconditionResult:
    """Whether ``pre`` holds on these runs, with the number that says so."""
    if isinstance(pre, HasRange):
        value = _rate(hits, BASELINE, pre.metric, pre.high) - _rate(hits, BASELINE, pre.metric, pre.low)
        low, high = ", ".join(pre.low), ", ".join(pre.high)
        return _at_least(f"baseline {pre.metric} range ≥ {pre.at_least:g} points from {low} to {high}", value,
                         pre.at_least)  # fmt: skip
    if isinstance(pre, Headroom):
        value = 100.0 - _rate(hits, BASELINE, pre.metric, pre.buckets)
        where = ", ".join(pre.buckets)
        return _at_least(f"baseline {pre.metric} leaves ≥ {pre.at_least:g} points of headroom on {where}", value,
                         pre.at_least)  # fmt: skip
    if isinstance(pre, Retrieves):
        value = _rate(hits, BASELINE, pre.metric, pre.buckets)
        where = ", ".join(pre.buckets)
        return _at_least(f"baseline {pre.metric} ≥ {pre.at_least:g} on {where}", value, pre.at_least)
    if isinstance(pre, Engaged):
        text = f"removing {pre.variant}'s mechanism at test ({pre.ablation}) changes ≥ {pre.at_least:.0%} of top-1s"
        runs = list(zip(hits.get(pre.variant, ()), hits.get(pre.ablation, ())))
        if not runs or any("top1" not in a or "top1" not in b for a, b in runs):
            return PreconditionResult(text + " (top-1s not recorded in these runs)", None, False)
        value = float(np.mean([np.mean(a["top1"] != b["top1"]) for a, b in runs]))
        return PreconditionResult(text, value, bool(value >= pre.at_least))
    if isinstance(pre, Decodes):
        text = (f"a nearest-class-mean probe on {pre.variant}'s {pre.feature} decodes {pre.label} "
                f"≥ {pre.above_chance:g} points above chance")  # fmt: skip
        key = probe_key(pre.feature, pre.label)
        probed: list[Any] = [dict(run.get("probes", {})).get(key) for run in hits.get(pre.variant, ())]
        if not probed or any(r is None for r in probed):
            return PreconditionResult(text + " (not probed in these runs)", None, False)
        value = float(np.mean([100 * (r["accuracy"] - r["chance"]) for r in probed]))
        return PreconditionResult(text, value, bool(value >= pre.above_chance))
    if isinstance(pre, SubTask):
        text = f"{pre.variant}'s {pre.metric} ≥ {pre.at_least:g}"
        recorded: list[Any] = [dict(run.get("subtasks", {})).get(pre.metric) for run in hits.get(pre.variant, ())]
        if not recorded or any(v is None for v in recorded):
            return PreconditionResult(text + " (not recorded in these runs)", None, False)
        value = float(np.mean(recorded))
        return PreconditionResult(text, value, bool(value >= pre.at_least))
    raise TypeError(f"unknown precondition {pre!r}")


def probe_key(feature: str, label: str) -> str:
    return f"{feature} -> {label}"


def nearest_class_mean_accuracy(features: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Two-fold nearest-class-mean probe (cosine): each half classified by the class means of the
    other; ``accuracy`` over both halves, ``chance`` the most frequent class's share. Classes with
    fewer than 2 samples are left out."""
    named = np.asarray(labels, dtype=object)
    names, counts = np.unique(named, return_counts=True)
    keep = np.isin(named, names[counts >= 2])
    x, y = np.asarray(features, dtype=np.float64)[keep], named[keep]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    fold = np.zeros(len(y), dtype=bool)
    for name in np.unique(y):  # each class split between the folds
        fold[np.flatnonzero(y == name)[::2]] = True
    correct = 0
    for test in (fold, ~fold):
        classes = list(np.unique(y[~test]))
        means = np.stack([x[~test & (y == c)].mean(0) for c in classes])
        predicted = np.asarray(classes, dtype=object)[(x[test] @ means.T).argmax(1)]
        correct += int((predicted == y[test]).sum())
    _, kept_counts = np.unique(y, return_counts=True)
    return {"accuracy": correct / len(y), "chance": float(kept_counts.max() / len(y)), "n": float(len(y))}


def applicable(pre: Precondition, hits: Hits) -> bool:
    """Whether these runs have what ``pre`` reads: its variants, and its buckets in the baseline's runs."""
    names = [getattr(pre, a) for a in ("variant", "ablation") if hasattr(pre, a)]
    buckets = [b for a in ("low", "high", "buckets") for b in getattr(pre, a, ())]
    present = set().union(*(set(run["bucket"].tolist()) for run in hits.get(BASELINE, ())))
    return all(n in hits for n in names) and all(b in present for b in buckets)


def preconditions_of(claim: Claim) -> tuple[Precondition, ...]:
    """The claim's registered preconditions, and for every Gain check the headroom it needs."""
    implied = tuple(Headroom(c.metric, c.buckets, c.at_least) for c in claim.checks if isinstance(c, Gain))
    return (*claim.preconditions, *(p for p in implied if p not in claim.preconditions))


def verdict(results: Sequence[CheckResult], preconditions: Sequence[PreconditionResult] = ()) -> str:
    """untestable here (a precondition failed, named with its number); else reproduced: every check
    holds; not reproduced: some check fails; else inconclusive."""
    failed = [p for p in preconditions if not p.met]
    if failed:
        said = "; ".join(f"{p.text}: {'not measured' if p.value is None else f'{p.value:.3g}'}" for p in failed)
        return f"untestable here ({said})"
    if results and all(r.outcome == "holds" for r in results):
        return "reproduced"
    if any(r.outcome == "fails" for r in results):
        return "not reproduced"
    return "inconclusive"


def judge_claim(claim: Claim, hits: Hits, **kw) -> tuple[str, list[CheckResult], list[PreconditionResult]]:
    """(verdict, the checks' results, the preconditions' results): preconditions first, so a
    verdict is never "not reproduced" while one fails."""
    pres = [check_precondition(p, hits) for p in preconditions_of(claim)]
    results = [judge(check, hits, **kw) for check in claim.checks]
    return verdict(results, pres), results, pres
