"""ConText-CIR's concept extraction measured against the synthetic benchmark's own edits.

``concepts``: the generator knows which objects each modification text names (its ``edits``):
the edited object ("the red triangle"), a new shape ("into a diamond"), an added object ("a small
green cross"), a new background ("a pink background"). Those phrases, found in the text, are the
gold concept spans; spaCy's noun chunks (``methods/noun_phrases.py``) are scored against them:
a predicted span is correct when it equals a gold span once a leading article is set aside.
Location phrases ("in the bottom"), pronouns and the implicit family's abstract words are not
gold concepts, so chunks there count against precision. Reported per family with the parse time.

    .venv/bin/python benchmarks/context_cir.py concepts --data D [--split test]
    .venv/bin/python benchmarks/context_cir.py triplets --data D --generated OUT   (after make-triplets)

``triplets``: precision of ``composir make-triplets`` output against the generator's scenes: a
generated triplet is correct when reference and target differ by the text's edit and nothing else.

``budget``: whether the claims board's ConText-CIR baseline (the authors' direction, no concept
loss; ``--cc-weight`` turns it on) retrieves given more fine-tuning steps or the text's padding
attended: each setting fine-tuned from the board's backbone on one seed's schema benchmark exactly
as the board runs it (``composir.experiments.board.run_variant``, one thread per run), then R@1 per family on the test
split and the concept map shift. Runs are cached in ``--out``.

    .venv/bin/python benchmarks/context_cir.py budget --board runs/claims --seed 0 --steps 600 2400 \
        --padding masked attended --out runs/context-cir-budget
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

from composir.data import load_benchmark
from composir.data.noun_phrases import NounPhrases

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


def scenes_by_image(root: Path) -> dict[str, dict]:
    """Every image's generator scene (kept with its captions in captions/mcot.jsonl)."""
    from composir.data.captions import read_caption_records

    records = read_caption_records(root / "captions" / "mcot.jsonl")
    return {i: r["scene"] for i, r in records.items() if "scene" in r}


def _objects(scene: dict) -> list[tuple[str, str, str, str]]:
    return sorted((o["size"], o["colour"], o["shape"], o["cell"]) for o in scene["objects"])


def triplet_is_correct(reference: dict, target: dict, text: str) -> bool:
    """The text's edit and nothing else: objects the text does not name keep their place, size
    and colour; the background changes only when the text names one."""
    if "background" not in text and reference["background"] != target["background"]:
        return False
    named = lambda o: f"{o[1]} {o[2]}" in text  # noqa: E731 (colour shape, as captions say it)
    kept_ref = [o for o in _objects(reference) if not named(o)]
    kept_tgt = [o for o in _objects(target) if not named(o)]
    changed = _objects(reference) != _objects(target) or reference["background"] != target["background"]
    return kept_ref == kept_tgt and changed


def cmd_triplets(args) -> None:
    """Precision of `composir make-triplets` output against the generator's scenes."""
    import json

    scenes = scenes_by_image(Path(args.data))
    out = Path(args.generated)
    total = correct = unknown = 0
    by_edit: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for split in ("train", "val"):
        for entry in json.loads((out / "captions" / f"cap.rc2.{split}.json").read_text()):
            ref, tgt = scenes.get(entry["reference"]), scenes.get(entry["target_hard"])
            if ref is None or tgt is None:
                unknown += 1
                continue
            ok = triplet_is_correct(ref, tgt, entry["caption"])
            total += 1
            correct += ok
            by_edit[entry["edit"]][0] += ok
            by_edit[entry["edit"]][1] += 1
    print(f"{total} generated triplets checked ({unknown} without a known scene): precision {_pct(correct, total)}")
    for kind, (ok, n) in sorted(by_edit.items()):
        print(f"  {kind}: {_pct(ok, n)} of {n}")


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}" if b else "–"


def cmd_budget(args) -> None:
    from composir.experiments.board import RunSpec, load_hits, rate, run_all
    from composir.methods.claims import Variant

    board = Path(args.board)
    data, backbone = board / f"schema-data-s{args.seed}", board / "backbone"
    for need in (data, backbone / "checkpoints"):
        if not need.is_dir():
            raise SystemExit(
                f"--board {board}: no {need.relative_to(board)} (run benchmarks/board.py for seed {args.seed} first)"
            )
    runs = {}
    for steps in args.steps:
        for padding in args.padding:
            config = {"layers": 2, "heads": 4, "cc_weight": args.cc_weight, "text_padding": padding}
            variant = Variant("context_cir", config, train={"eval_every": min(steps, 600)})
            loss = f"-cc{args.cc_weight:g}" if args.cc_weight else ""
            out = Path(args.out) / f"{padding}-{steps}{loss}-s{args.seed}"
            runs[(steps, padding)] = RunSpec(variant, args.seed, str(data), str(backbone), str(out), steps, args.lr)
    run_all(list(runs.values()), args.jobs)
    print("| steps | text padding | R@1 explicit | R@1 multi | R@1 implicit | concept map shift | min |")
    print("|---|---|---|---|---|---|---|")
    for (steps, padding), spec in runs.items():
        found = Path(spec.out) / "hits.json"
        if not found.is_file():  # run_all has said why
            continue
        record = load_hits(found)
        r1 = " | ".join(f"{rate(record['hits'], 'R@1', f):.2f}" for f in ("explicit", "multi", "implicit"))
        shift = record["hits"]["subtasks"].get("concept map shift", float("nan"))
        print(f"| {steps} | {padding} | {r1} | {shift:.1f} | {record['seconds'] / 60:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("concepts")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.set_defaults(func=cmd_concepts)
    p = sub.add_parser("triplets")
    p.add_argument("--data", required=True, help="the synthetic benchmark the images came from")
    p.add_argument("--generated", required=True, help="make-triplets output folder")
    p.set_defaults(func=cmd_triplets)
    p = sub.add_parser("budget")
    p.add_argument("--board", default="runs/claims", help="the claims board's cache (its backbone and data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, nargs="+", default=[600, 2400])
    p.add_argument("--padding", nargs="+", default=["masked", "attended"], choices=["masked", "attended"])
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--cc-weight", type=float, default=0.0, help="the concept loss (0: the claim's baseline)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/context-cir-budget")
    p.set_defaults(func=cmd_budget)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
