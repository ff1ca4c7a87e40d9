"""Retrieval metrics as pure functions on ranked id lists.

``ranked_ids[i]`` is query i's ranking (best first), already without the items the protocol
removes (e.g. the reference). A query whose ground truth is absent from the gallery simply never
hits: it stays in the denominator, as in the official scripts. All values are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

from composir.data.records import PROTOCOLS, Protocol

Ranking = Sequence[str]


def _check_lengths(ranked_ids: Sequence[Ranking], target_ids: Sequence[Sequence[str]]) -> None:
    if len(ranked_ids) != len(target_ids):
        raise ValueError(f"{len(ranked_ids)} rankings but {len(target_ids)} target lists")
    if not ranked_ids:
        raise ValueError("no queries to score")


def recall_at_k(ranked_ids: Sequence[Ranking], target_ids: Sequence[Sequence[str]], k: int) -> float:
    """Percent of queries with at least one ground truth in the top ``k``."""
    _check_lengths(ranked_ids, target_ids)
    hits = sum(1 for ranking, targets in zip(ranked_ids, target_ids) if set(ranking[:k]) & set(targets))
    return 100.0 * hits / len(ranked_ids)


def recall_subset_at_k(
    ranked_ids: Sequence[Ranking],
    target_ids: Sequence[Sequence[str]],
    subset_ids: Sequence[Sequence[str]],
    reference_ids: Sequence[str],
    k: int,
) -> float:
    """CIRR Recall_subset@k: the ranking restricted to the query's img_set members minus its reference."""
    _check_lengths(ranked_ids, target_ids)
    restricted = []
    for ranking, members, reference in zip(ranked_ids, subset_ids, reference_ids):
        allowed = set(members) - {reference}
        restricted.append([i for i in ranking if i in allowed])
    return recall_at_k(restricted, target_ids, k)


def average_precision_at_k(ranking: Ranking, targets: Sequence[str], k: int) -> float:
    """CIRCO's AP@k: sum of precision at each hit in the top k, over min(k, len(targets)) with the
    ground-truth list as given (the official definition). An item listed twice in the ranking
    counts once (the official checker rejects such rankings), so AP never exceeds 1."""
    if not targets:
        raise ValueError("AP needs at least one ground truth")
    relevant = set(targets)
    found: set[str] = set()
    total = 0.0
    for rank, item in enumerate(ranking[:k], start=1):
        if item in relevant and item not in found:
            found.add(item)
            total += len(found) / rank
    return total / min(k, len(targets))


def map_at_k(ranked_ids: Sequence[Ranking], target_ids: Sequence[Sequence[str]], k: int) -> float:
    """CIRCO mAP@k (percent)."""
    _check_lengths(ranked_ids, target_ids)
    return 100.0 * sum(average_precision_at_k(r, t, k) for r, t in zip(ranked_ids, target_ids)) / len(ranked_ids)


def mean_of(metrics: dict[str, float], keys: Sequence[str]) -> float:
    return sum(metrics[k] for k in keys) / len(keys)


def protocol_metrics(
    protocol: Protocol,
    ranked_ids: Sequence[Ranking],
    target_ids: Sequence[Sequence[str]],
    subset_ranked_ids: Sequence[Ranking] | None = None,
    subset_ids: Sequence[Sequence[str]] | None = None,
    reference_ids: Sequence[str] | None = None,
    first_targets: Sequence[str] | None = None,
) -> dict[str, float]:
    """Every metric ``protocol`` names (``Protocol.metric_names`` order): mAP@K, Recall@K (on
    ``first_targets`` where the protocol says so), Recall_subset@K and the published averages."""
    out: dict[str, float] = {f"mAP@{k}": map_at_k(ranked_ids, target_ids, k) for k in protocol.map_ks}
    recall_targets = [[t] for t in first_targets] if protocol.recall_on_first_target else target_ids
    out.update({f"R@{k}": recall_at_k(ranked_ids, recall_targets, k) for k in protocol.recall_ks})
    for k in protocol.subset_ks:
        out[f"Rsubset@{k}"] = recall_subset_at_k(subset_ranked_ids, target_ids, subset_ids, reference_ids, k)
    if protocol.cirr_averages:
        # The usual CIRR "Avg" vs the IMAGINE paper's mean of all seven numbers.
        out["Avg(R@5,Rsubset@1)"] = (out["R@5"] + out["Rsubset@1"]) / 2
        out["Mean(all7)"] = mean_of(out, ["R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"])
    if protocol.mean_recall:
        out["Mean"] = mean_of(out, [f"R@{k}" for k in protocol.recall_ks])
    return out


def cirr_metrics(
    ranked_ids: Sequence[Ranking],
    subset_ranked_ids: Sequence[Ranking],
    target_ids: Sequence[Sequence[str]],
    subset_ids: Sequence[Sequence[str]],
    reference_ids: Sequence[str],
) -> dict[str, float]:
    """Recall@{1,5,10,50}, Recall_subset@{1,2,3} and both published averages, named apart."""
    return protocol_metrics(PROTOCOLS["cirr"], ranked_ids, target_ids, subset_ranked_ids, subset_ids, reference_ids)


def fashioniq_metrics(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flatten per-category R@10/R@50 and add the category means and their mean."""
    out: dict[str, float] = {}
    for cat, m in per_category.items():
        out[f"{cat}/R@10"] = m["R@10"]
        out[f"{cat}/R@50"] = m["R@50"]
    cats = list(per_category)
    out["Avg R@10"] = sum(per_category[c]["R@10"] for c in cats) / len(cats)
    out["Avg R@50"] = sum(per_category[c]["R@50"] for c in cats) / len(cats)
    out["Avg"] = (out["Avg R@10"] + out["Avg R@50"]) / 2
    return out


def circo_metrics(
    ranked_ids: Sequence[Ranking], target_ids: Sequence[Sequence[str]], first_targets: Sequence[str]
) -> dict[str, float]:
    """mAP@{5,10,25,50} on all ground truths, and Recall@K on ``target_img_id`` as the official script."""
    return protocol_metrics(PROTOCOLS["circo"], ranked_ids, target_ids, first_targets=first_targets)


def recall_metrics(
    ranked_ids: Sequence[Ranking], target_ids: Sequence[Sequence[str]], ks: Sequence[int] = (1, 5, 10, 50)
) -> dict[str, float]:
    """Recall@ks and their mean (WebVid-CoVR reports R@{1,5,10,50} and the mean)."""
    return protocol_metrics(Protocol("recall", recall_ks=tuple(ks), mean_recall=True), ranked_ids, target_ids)
