"""ConText-CIR's concept extraction measured against the synthetic benchmark's own edits.

``concepts``: the generator knows which objects each modification text names (its ``edits``):
the edited object ("the red triangle"), a new shape ("into a diamond"), an added object ("a small
green cross"), a new background ("a pink background"). Those phrases, found in the text, are the
gold concept spans; spaCy's noun chunks (``methods/noun_phrases.py``) are scored against them:
a predicted span is correct when it equals a gold span once a leading article is set aside.
Location phrases ("in the bottom"), pronouns and the implicit family's abstract words are not
gold concepts, so chunks there count against precision. Reported per family with the parse time.

    .venv/bin/python benchmarks/context_cir.py concepts --data D [--split test]
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

from composir.data import load_benchmark
from composir.methods.noun_phrases import NounPhrases

ARTICLES = ("the ", "a ", "an ")
GOLD_FAMILIES = ("explicit", "multi")  # where every text names the objects it edits


def _strip(text: str, span: tuple[int, int]) -> tuple[int, int]:
    start, end = span
    for article in ARTICLES:
        if text[start:end].lower().startswith(article):
            return start + len(article), end
    return span


def _find(text: str, phrase: str) -> tuple[int, int] | None:
    match = re.search(r"\b" + re.escape(phrase) + r"\b", text)
    return (match.start(), match.end()) if match else None


def gold_spans(text: str, edits: list[dict]) -> set[tuple[int, int]]:
    """Article-free spans of the objects and backgrounds the edits name in ``text``."""
    phrases = []
    for edit in edits:
        kind, target, value = edit["kind"], edit.get("target"), edit.get("value")
        if target:
            phrases.append(target)
        if kind == "shape" and isinstance(value, str):  # "into a diamond" or "with a yellow diamond"
            colour = target.split(" ")[0] if target else ""
            phrases.append(f"{colour} {value}" if _find(text, f"{colour} {value}") else value)
        elif kind == "add" and isinstance(value, dict):
            words = [value.get("size"), value.get("colour"), value.get("shape")]
            phrases.append(" ".join(w for w in words if w))
        elif kind == "background" and isinstance(value, str):
            phrases.append(f"{value} background")
    spans = set()
    for phrase in phrases:
        found = _find(text, phrase)
        if found is None and " " in phrase:  # "a small cross": the generator may drop a default word
            found = _find(text, phrase.split(" ", 1)[1])
        if found:
            spans.add(found)
    return spans


def cmd_concepts(args) -> None:
    bench = load_benchmark("synthetic", Path(args.data), args.split)
    phrases = NounPhrases()
    texts = [q.text for q in bench.queries]
    start = time.perf_counter()
    predicted = phrases(texts)
    seconds = time.perf_counter() - start
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tp, predicted, gold, texts
    other: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # chunks, texts
    for q, spans in zip(bench.queries, predicted):
        family = q.extra.get("family", "?")
        if family not in GOLD_FAMILIES:
            other[family][0] += len(spans)
            other[family][1] += 1
            continue
        gold = gold_spans(q.text, q.extra.get("edits") or [])
        pred = {_strip(q.text, s) for s in spans}
        c = counts[family]
        c[0] += len(pred & gold)
        c[1] += len(pred)
        c[2] += len(gold)
        c[3] += 1
    print(f"{len(texts)} texts ({len(set(texts))} distinct) parsed in {seconds:.1f} s "
          f"({1000 * seconds / max(1, len(set(texts))):.2f} ms per distinct text)")  # fmt: skip
    print("| family | texts | gold spans | predicted | precision | recall |")
    print("|---|---|---|---|---|---|")
    total = [0, 0, 0, 0]
    for family, (tp, n_pred, n_gold, n) in sorted(counts.items()):
        total = [a + b for a, b in zip(total, (tp, n_pred, n_gold, n))]
        print(f"| {family} | {n} | {n_gold} | {n_pred} | {_pct(tp, n_pred)} | {_pct(tp, n_gold)} |")
    tp, n_pred, n_gold, n = total
    print(f"| explicit + multi | {n} | {n_gold} | {n_pred} | {_pct(tp, n_pred)} | {_pct(tp, n_gold)} |")
    print("\nnoun phrases per text where the generator names no object (no gold spans):")
    for family, n_chunks in sorted(other.items()):
        print(f"  {family}: {n_chunks[0] / n_chunks[1]:.2f} ({n_chunks[1]} texts)")


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}" if b else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("concepts")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.set_defaults(func=cmd_concepts)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
