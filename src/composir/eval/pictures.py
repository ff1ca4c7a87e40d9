"""Results people would rather look at: a grid of queries and what came back, and recall@K curves.

``render_grid``: for a sample of queries, one row each — the reference, the modification text
(and the method's explanation where it has one: CIR-CoT's chain), then the top ``k`` results with
the ground truth framed in green (others grey) and its rank written when it is not in the top
``k``. ``render_recall_curves``: R@K against K for every family and for all queries.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from composir.data.media import load_media
from composir.data.records import Benchmark
from composir.eval.evaluate import EvalResult
from composir.utils.io import atomic_open

GREEN, GREY = "#1a9c3c", "#b0b0b0"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thumb(bench: Benchmark, media_id: str) -> np.ndarray | None:
    try:
        return np.asarray(load_media(bench.media_item(media_id).path, 1)[0].convert("RGB"))
    except Exception:  # a missing or unreadable file shows as an empty cell, never stops the picture
        return None


def sample_queries(result: EvalResult, n: int, seed: int = 0) -> list[int]:
    """``n`` query positions spread over the evaluation (seeded, sorted)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(result.query_ids), min(n, len(result.query_ids)), replace=False)
    return sorted(int(i) for i in picks)


def render_grid(
    bench: Benchmark,
    result: EvalResult,
    path: str | Path,
    n: int = 8,
    k: int = 5,
    explain: Callable[[list[int]], list[Any]] | None = None,
    seed: int = 0,
) -> Path:
    """The query grid as a PNG at ``path`` (written atomically); ``explain(positions)`` gives each
    sampled query's explanation (or None)."""
    plt = _plt()
    by_id = {q.query_id: q for q in bench.queries}
    rows = sample_queries(result, n, seed)
    notes = explain(rows) if explain is not None else [None] * len(rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(2.1 * (k + 1), 2.5 * len(rows)), squeeze=False)
    for r, (pos, note) in enumerate(zip(rows, notes)):
        query = by_id[result.query_ids[pos]]
        ranked = result.ranked_ids[pos]
        _cell(axes[r][0], _thumb(bench, query.reference_id), "reference", GREY)
        caption = textwrap.fill(f'"{query.text}"', 34)
        if note:
            caption += "\n" + textwrap.fill(_explanation_text(note), 34)
        axes[r][0].set_xlabel(caption, fontsize=7)
        gold = set(query.target_ids)
        for c in range(k):
            media_id = ranked[c] if c < len(ranked) else None
            hit = media_id in gold
            image = _thumb(bench, media_id) if media_id else None
            _cell(axes[r][c + 1], image, f"{c + 1}. {media_id or '-'}" + (" ✓" if hit else ""), GREEN if hit else GREY)
        if gold and not gold & set(ranked[:k]):
            rank = next((i + 1 for i, m in enumerate(ranked) if m in gold), None)
            axes[r][k].set_xlabel(f"target at rank {rank}" if rank else "target not ranked", fontsize=7, color=GREEN)
    fig.suptitle(f"{bench.name} {bench.split}: {len(rows)} queries, top {k} (target framed green)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, plt)


def _explanation_text(note: Any) -> str:
    chain = note.get("chain") if isinstance(note, dict) else None
    if isinstance(chain, dict):
        return " → ".join(f"{key}: {chain[key]}" for key in ("caption", "reasoning", "conclusion") if chain.get(key))
    return str(note)


def _cell(ax, image: np.ndarray | None, title: str, colour: str) -> None:
    if image is not None:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4 if colour == GREEN else 1)
    ax.set_title(textwrap.shorten(title, 28), fontsize=7)


def render_recall_curves(metrics: dict[str, float], per_family: dict[str, dict[str, float]], path: str | Path) -> Path:
    """R@K against K (log scale) for all queries and each family."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks: set[int] = set()
    for name, values in [("all", metrics), *sorted(per_family.items())]:
        points = sorted((int(key[2:]), v) for key, v in values.items() if key.startswith("R@") and key[2:].isdigit())
        if points:
            ax.plot(*zip(*points), marker="o", label=name, linewidth=2.5 if name == "all" else 1.2)
            ks.update(k for k, _ in points)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])  # K = 1, 5, 10, 50: not 10^0, 10^1
    ax.minorticks_off()
    ax.set_xlabel("K")
    ax.set_ylabel("R@K (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path
