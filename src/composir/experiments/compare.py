"""A registered claim's variants trained from scratch on the synthetic image benchmark, N seeds:
per family R@1 / R@10 / Rsubset@1, recall at equal training time, recall by concepts in the text.

The claims board (``claims.py``) fine-tunes a shared backbone on the schema benchmark; this script
answers the method issues' other question -- how the variants compare when each trains from
scratch on the plain image benchmark (explicit / multi / implicit families):

* **Per family**: mean ± std over seeds and the paired difference to the claim's baseline with its
  two-level bootstrap interval (``composir.experiments.verdicts``), on the test split.
* **Equal training time**: every run keeps ``--points`` checkpoints and each is scored on the test
  split, so recall is known as a function of steps. The seconds one training step costs are
  measured separately, all variants interleaved step by step on the same batches in one process
  (one thread), so the machine's noise hits them alike; a variant's recall at time T is read off
  its curve at T / (its seconds per step) steps (linear between checkpoints). T is the time the
  fastest variant's full run takes.
* **By concepts**: test queries grouped by how many objects / backgrounds their text names (the
  generator's gold concepts, ``context_cir.gold_spans``): 1, 2, 3+ (implicit texts name none).
* ``--generated``: one more row, the claim's method trained on ``composir make-triplets`` output
  built from each seed's training images and captions (no ground-truth triplets), scored on the
  same real test split; the generated triplets' precision against the generator's scenes beside it.

    .venv/bin/python benchmarks/compare.py --claim CSMCIR [--seeds 0 1 2] [--size 6000] [--steps 600]
    .venv/bin/python benchmarks/compare.py --claim ConText-CIR --generated

Runs are cached under ``--out`` (``<variant key>-s<seed>/hits.json``); a repeated command reuses
them and only rewrites the report (``--doc``, default docs/compare-<claim>.md, plot beside it in
docs/img/). Run with ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from composir.experiments import board
from composir.experiments.captioner import caption_lines, learned_captions, reads_captions
from composir.experiments.verdicts import BASELINE, applicable, judge_claim
from composir.methods.claims import Claim, Variant, registered_claims
from composir.utils.io import atomic_open, atomic_write_json

# The repository checkout (configs/, docs/, runs/): experiments run from a development install.
REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "tiny-synthetic-csmcir.yaml"
FAMILIES = ("explicit", "multi", "implicit")
CONCEPT_BUCKETS = ("0 concepts", "1 concept", "2 concepts", "3+ concepts")
GENERATED = "trained on generated triplets"


@dataclass(frozen=True)
class CompareSpec:
    """One run: a variant trained from scratch on one seed's data, scored at ``points`` checkpoints."""

    variant: Variant
    seed: int
    data: str  # the synthetic benchmark (test split scored)
    out: str
    steps: int
    points: int
    lr: float
    train_root: str | None = None  # make-triplets output to train on instead of ``data``
    captions: str | None = None  # a caption cache read in training and at test (None: the generator's)
    # Variants that train the very same model (``Variant.training_key``) and differ only at
    # inference: (hits file name in ``out``, variant), scored from this run's checkpoints.
    also_scored: tuple[tuple[str, Variant], ...] = ()
    init_from: str | None = None  # a run to start from (``Variant.start: captioner``); None: random init

    def overrides(self) -> list[str]:
        every = max(1, self.steps // self.points)
        train_data = (
            [f"data.root={self.train_root}", "data.benchmark=cirr"] if self.train_root else [f"data.root={self.data}"]
        )
        captions = [f"data.target_captions={self.captions}"] if self.captions else []
        start = [f"train.init_from={self.init_from}"] if self.init_from else []
        return [
            *start,
            *train_data,
            *captions,
            f"method.name={self.variant.method}",
            "method.config=null",
            f"method.config={json.dumps(self.variant.config)}",
            f"output_dir={self.out}",
            f"train.seed={self.seed}",
            f"train.max_steps={self.steps}",
            f"train.lr={self.lr}",
            f"train.warmup_steps={max(1, self.steps // 10)}",
            f"train.eval_every={self.steps}",
            f"train.save_every={every}",
            f"train.keep_last={self.points + 1}",
            "train.num_workers=0",
            *(f"train.{k}={json.dumps(v)}" for k, v in self.variant.train.items()),
        ]


# ------------------------------------------------------------------------------ data
def make_data(root: Path, seeds: tuple[int, ...], size: int) -> dict[int, Path]:
    from composir.synth import SynthConfig, generate

    data = {}
    for seed in seeds:
        data[seed] = root / f"data-s{seed}"
        if not (data[seed] / "synthetic.json").is_file():
            generate(SynthConfig(out=data[seed], seed=seed, size=size), progress=False)
    return data


def make_generated(data: Path) -> tuple[Path, float]:
    """make-triplets over the training images of ``data`` with the generator's captions; returns the
    output folder and the generated triplets' precision (%) against the generator's scenes."""
    from composir.annotate.triplets import TripletConfig, make_triplets
    from composir.data import load_benchmark
    from context_cir import scenes_by_image, triplet_is_correct

    out, images = data.parent / f"{data.name}-generated", data.parent / f"{data.name}-train-images"
    if not (out / "captions" / "cap.rc2.train.json").is_file():
        images.mkdir(exist_ok=True)
        train = load_benchmark("synthetic", data, "train")
        for item in train.gallery:
            link = images / Path(item.path).name
            if not link.exists():
                link.symlink_to(Path(item.path).resolve())
        make_triplets(TripletConfig(images, data / "captions" / "mcot.jsonl", out), progress=False)
    scenes = scenes_by_image(data)
    verdicts = []
    for split in ("train", "val"):
        for entry in json.loads((out / "captions" / f"cap.rc2.{split}.json").read_text()):
            ref, tgt = scenes.get(entry["reference"]), scenes.get(entry["target_hard"])
            if ref is not None and tgt is not None:
                verdicts.append(triplet_is_correct(ref, tgt, entry["caption"]))
    return out, 100 * float(np.mean(verdicts))


def concept_counts(bench) -> np.ndarray:
    """Per test query: how many objects / backgrounds its text names (the generator's gold spans)."""
    from context_cir import gold_spans

    return np.asarray([len(gold_spans(q.text, q.extra.get("edits") or [])) for q in bench.queries])


# ------------------------------------------------------------------------------ runs
def run_compare(spec: CompareSpec) -> Path:
    """Train, then score every kept checkpoint on the test split, for the variant and for each of
    ``also_scored``; ``hits.json`` in the run folder, written last, marks the run complete."""
    board.one_thread()
    from composir.data import load_benchmark
    from composir.train import load_config, train

    out = Path(spec.out)
    result_file = out / "hits.json"
    if result_file.is_file():
        return result_file
    start = time.time()
    train(load_config(CONFIG, spec.overrides()), resume=True, progress=False)
    train_seconds = time.time() - start
    test = load_benchmark("synthetic", Path(spec.data), "test", captions=spec.captions)
    for name, variant in spec.also_scored:
        if not (out / name).is_file():
            score_checkpoints(replace(spec, variant=variant), test, out / name, train_seconds)
    score_checkpoints(spec, test, result_file, train_seconds)
    return result_file


def score_checkpoints(spec: CompareSpec, test, path: Path, train_seconds: float) -> None:
    """Every kept checkpoint of ``spec.out`` built as ``spec.variant`` and scored on ``test``."""
    from composir.eval.evaluate import evaluate
    from composir.experiments.captions import perturb_gallery_captions
    from composir.experiments.verdicts import query_hits
    from composir.runs.factory import build_with_weights
    from composir.train import load_config

    start = time.time()
    cfg = load_config(CONFIG, spec.overrides())
    test = perturb_gallery_captions(test, spec.variant.gallery_captions, spec.seed)
    curve = []
    for folder in sorted((Path(spec.out) / "checkpoints").glob("step-*")):
        method = build_with_weights(cfg, folder)
        result = evaluate(method.eval(), test, batch_size=64, num_frames=1, progress=False)
        hits = query_hits(test, result)
        curve.append({"step": int(folder.name.split("-")[1]), **{k: v.tolist() for k, v in hits.items()}})
    record = {
        "variant": asdict(spec.variant),
        "seed": spec.seed,
        "seconds": train_seconds + time.time() - start,
        "train_seconds": train_seconds,
        "query_ids": [q.query_id for q in test.queries],
        "concepts": concept_counts(test).tolist(),
        "curve": curve,
        "subtasks": board.subtasks(method, test),  # the final checkpoint's (SubTask preconditions)
    }
    atomic_write_json(path, record)


def backfill_subtasks(specs: dict[tuple[str, int], CompareSpec]) -> None:
    """Runs scored before ``subtasks`` were recorded get them now, from their final checkpoint."""
    from composir.data import load_benchmark
    from composir.experiments.captions import perturb_gallery_captions
    from composir.runs.factory import build_with_weights
    from composir.train import load_config

    for spec in specs.values():
        for name, variant in (("hits.json", spec.variant), *spec.also_scored):
            path = Path(spec.out) / name
            if not path.is_file() or "subtasks" in (record := json.loads(path.read_text())):
                continue
            scored = replace(spec, variant=variant)
            final = sorted((Path(spec.out) / "checkpoints").glob("step-*"))[-1]
            method = build_with_weights(load_config(CONFIG, scored.overrides()), final).eval()
            test = load_benchmark("synthetic", Path(spec.data), "test", captions=spec.captions)
            test = perturb_gallery_captions(test, variant.gallery_captions, spec.seed)
            record["subtasks"] = board.subtasks(method, test)
            atomic_write_json(path, record)


def load_run_hits(path: Path) -> dict:
    """Final-checkpoint hits (with ``bucket`` = family and ``concepts``) and the whole curve."""
    record = json.loads(path.read_text())
    curve = []
    for point in record["curve"]:
        arrays = {k: np.asarray(point[k], dtype=float) for k in ("R@1", "R@10", "R@50", "Rsubset@1") if k in point}
        arrays["bucket"] = np.asarray(point["bucket"], dtype=object)
        curve.append((point["step"], arrays))
    final = dict(curve[-1][1])
    final["concepts"] = np.asarray(record["concepts"])
    final["subtasks"] = record.get("subtasks", {})
    return {"hits": final, "curve": curve, "seconds": record["seconds"]}


# ------------------------------------------------------------------------------ step time
def step_seconds(members: dict[str, Variant], data: Path, steps: int) -> dict[str, float]:
    """Median seconds per training step of each variant (and the baseline), interleaved step by step
    on the same batches in this process, one thread; the first few steps are warm-up."""
    import torch

    from composir.runs import build_from_config
    from composir.train import load_config
    from composir.train.dataset import TripletDataset
    from composir.train.loop import load_data

    torch.set_num_threads(1)
    models, batches = {}, {}
    for name, variant in members.items():
        spec = CompareSpec(variant, 0, str(data), "/nonexistent", steps, 1, 5e-4)
        cfg = load_config(CONFIG, spec.overrides())
        torch.manual_seed(0)
        method = build_from_config(cfg).train()
        dataset = TripletDataset(load_data(cfg, "train"), method.encoder.preprocess, 1)
        collate = method.collator()
        batches[name] = [collate([dataset[i] for i in range(s * 32, (s + 1) * 32)]) for s in range(steps)]
        models[name] = (method, torch.optim.AdamW(method.parameters(), lr=5e-4))
    times: dict[str, list[float]] = {name: [] for name in members}
    for step in range(steps):
        for name, (method, optimizer) in models.items():  # interleaved: noise hits every variant alike
            start = time.perf_counter()
            sum(method(batches[name][step]).values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step(step + 1)
            times[name].append(time.perf_counter() - start)
    skip = min(5, steps // 3)
    return {name: statistics.median(t[skip:]) for name, t in times.items()}


def cached_step_seconds(members: dict[str, Variant], data: Path, steps: int, out: Path) -> dict[str, float]:
    """``step_seconds``, measured once per set of variants and kept in ``out`` (a redrawn report
    reuses it: timing again on a busy machine would change the equal-time table)."""
    trained: dict[str, str] = {}  # one per trained model: variants differing only at inference train alike
    for name, variant in members.items():
        trained.setdefault(variant.training_key, name)
    timed = {name: members[name] for name in trained.values()}
    keys = {name: v.key for name, v in timed.items()}
    path = out / f"step-seconds-{hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]}.json"
    seconds = None
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("keys") == keys and saved.get("steps") == steps:
            seconds = saved["seconds"]
    if seconds is None:
        seconds = step_seconds(timed, data, steps)
        atomic_write_json(path, {"keys": keys, "steps": steps, "seconds": seconds})
    return {name: seconds[trained[v.training_key]] for name, v in members.items()}


def recall_at_time(curve: list[tuple[int, dict]], seconds_per_step: float, budget: float, metric: str) -> dict:
    """Per family (and ``all``): the curve's hit rate (%) at ``budget`` seconds of training, linear
    between checkpoints (and from 0 at step 0)."""
    steps = budget / seconds_per_step
    xs = [0] + [s for s, _ in curve]
    out = {}
    for family in (*FAMILIES, "all"):
        ys = [0.0]
        for _, hits in curve:
            rows = np.ones(len(hits[metric]), bool) if family == "all" else hits["bucket"] == family
            ys.append(100 * float(hits[metric][rows].mean()))
        out[family] = float(np.interp(steps, xs, ys))
    return out


# ------------------------------------------------------------------------------ report
def concept_hits(runs: list[dict]) -> list[dict]:
    """The runs' hits with ``bucket`` = the number of concepts the query's text names."""
    out = []
    for hits in runs:
        labels = np.asarray([CONCEPT_BUCKETS[min(int(c), 3)] for c in hits["concepts"]], dtype=object)
        out.append({**hits, "bucket": labels})
    return out


def time_table(runs: dict[str, list[dict]], seconds: dict[str, float], steps: int) -> list[str]:
    budget = min(seconds[name] for name in runs) * steps
    lines = [
        f"Recall at equal training time: {budget:.0f} s (the fastest variant's {steps} steps at one thread), "
        "test R@1 per family read off each run's checkpoint curve, mean ± std over seeds:",
        "",
        "| variant | s / step | steps in the budget | " + " | ".join(FAMILIES) + " | all |",
        "|---|---|---|" + "---|" * (len(FAMILIES) + 1),
    ]
    for name, variant_runs in runs.items():
        at = [recall_at_time(r["curve"], seconds[name], budget, "R@1") for r in variant_runs]
        cells = [board.mean_sd([a[f] for a in at]) for f in (*FAMILIES, "all")]
        lines.append(
            f"| {name} | {seconds[name]:.3f} | {min(steps, budget / seconds[name]):.0f} | " + " | ".join(cells) + " |"
        )
    return lines


def plot(claim: Claim, runs: dict[str, list[dict]], seconds: dict[str, float] | None, path: Path) -> None:
    """R@1 (all test queries) against training time (or steps), and R@1 by concepts in the text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(runs)
    for i, (name, variant_runs) in enumerate(runs.items()):
        steps = np.array([s for s, _ in variant_runs[0]["curve"]])
        r1 = np.array([[100 * h["R@1"].mean() for _, h in r["curve"]] for r in variant_runs])
        x = steps * seconds[name] if seconds and name in seconds else steps
        axes[0].errorbar(x, r1.mean(0), yerr=r1.std(0), marker="o", capsize=3, label=name)
        by = np.array(
            [
                [board.rate(h, "R@1", b) for b in CONCEPT_BUCKETS]
                for h in concept_hits([r["hits"] for r in variant_runs])
            ]
        )
        axes[1].bar(
            np.arange(len(CONCEPT_BUCKETS)) + i * width, by.mean(0), width, yerr=by.std(0), capsize=2, label=name
        )
    axes[0].set(xlabel="training seconds (one thread)" if seconds else "training steps", ylabel="R@1, all test queries")
    axes[0].set_title(f"{claim.paper}: recall against training time", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set(
        xticks=np.arange(len(CONCEPT_BUCKETS)) + 0.4 - width / 2, xticklabels=CONCEPT_BUCKETS, ylabel="R@1 (test)"
    )
    axes[1].set_title("by number of concepts the text names", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    args, claim: Claim, runs: dict[str, list[dict]], seconds: dict[str, float] | None, extra: list[str]
) -> list[str]:
    hits = {name: [r["hits"] for r in variant_runs] for name, variant_runs in runs.items()}
    compared = {n: h for n, h in hits.items() if n != GENERATED}
    n_seeds = len(hits[BASELINE])
    lines = [
        f"# {claim.paper}: variants trained from scratch on the synthetic image benchmark",
        "",
        "Written by `benchmarks/compare.py` (do not edit by hand). Command: "
        f"`OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/compare.py {shlex.join(sys.argv[1:])}`",
        "",
        f"{n_seeds} seeds (each its own generated benchmark of {args.size:,} triplets and training seed), "
        f"{args.steps} steps × 32 at lr {args.lr:g} from scratch, tiny encoder with 16 query tokens, "
        f"{args.jobs} runs at a time with one thread each, {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}. Baseline: {claim.baseline.method} {claim.baseline.config or ''}.",
        "",
    ]
    for metric in ("R@1", "R@10", "Rsubset@1"):
        lines += [f"{metric} on the test split, mean ± std over seeds (difference to the baseline [95% paired "
                  "bootstrap interval]):", "", *board.metric_table(compared, metric, FAMILIES), ""]  # fmt: skip
    lines += ["R@1 by how many concepts (objects, backgrounds) the text names:", ""]
    by_concept = {name: concept_hits(h) for name, h in compared.items()}
    lines += [*board.metric_table(by_concept, "R@1", CONCEPT_BUCKETS), ""]
    if seconds:
        lines += [*time_table({n: runs[n] for n in compared}, seconds, args.steps), ""]
    lines += claim_checks(claim, compared)
    lines += extra
    picture = Path(args.doc).parent / "img" / f"{Path(args.doc).stem}.png"  # one picture per report
    plot(claim, {n: runs[n] for n in compared}, seconds, picture)
    lines += [f"![{claim.paper}]({picture.relative_to(Path(args.doc).parent).as_posix()})", ""]
    return lines


def claim_checks(claim: Claim, hits: dict[str, list[dict]]) -> list[str]:
    """The claim's own checks (the claims board's rules), judged on these from-scratch runs; checks
    on variants not run here are left out."""
    runnable = tuple(
        c for c in claim.checks if all(getattr(c, a, None) in (None, *hits) for a in ("variant", "ablation"))
    )
    if not runnable:
        return []
    usable = tuple(p for p in claim.preconditions if applicable(p, hits))
    verdict, results, pres = judge_claim(dataclasses.replace(claim, checks=runnable, preconditions=usable), hits)
    return [f"The claim's checks (the claims board's rules), judged on these runs: **{verdict}**.", "",
            *board.precondition_table(pres), "", *board.check_table(results), ""]  # fmt: skip


def add_generated_runs(
    specs: dict, hits_files: dict, variant: Variant, data: dict[int, Path], root: Path, args
) -> dict[int, float]:
    """A run per seed of ``variant`` trained on make-triplets output; each seed's triplet precision."""
    precision = {}
    for s, seed_data in data.items():
        generated, precision[s] = make_generated(seed_data)
        out = root / f"{variant.key}-generated-s{s}"
        specs[(GENERATED, s)] = CompareSpec(
            variant, s, str(seed_data), str(out), args.steps, args.points, args.lr, train_root=str(generated)
        )
        hits_files[(GENERATED, s)] = out / "hits.json"
    return precision


def generated_lines(runs: dict[str, list[dict]], method_name: str, precision: dict[int, float]) -> list[str]:
    """The method trained on generated vs real triplets, paired on the same test queries."""
    hits = {BASELINE: [r["hits"] for r in runs[method_name]], GENERATED: [r["hits"] for r in runs[GENERATED]]}
    return [
        f"**Trained on generated triplets.** `composir make-triplets` on each seed's training images and the "
        f"generator's captions (no ground-truth pairs): precision {board.mean_sd(list(precision.values()))} % "
        f"against the generator's scenes. Test R@1 of {method_name} trained on them; 'baseline' here is "
        f"{method_name} trained on the benchmark's own triplets (difference [95% paired interval]):",
        "",
        *board.metric_table(hits, "R@1", FAMILIES),
        "",
    ]


def plan_runs(
    members: dict[str, Variant],
    data: dict[int, Path],
    root: Path,
    args,
    captions: dict[int, Path] | None = None,
    captioners: dict[int, str] | None = None,
) -> tuple[dict[tuple[str, int], CompareSpec], dict[tuple[str, int], Path]]:
    """One training run per (trained model, seed) -- variants that differ only at inference are
    scored from the same run -- and where each (variant, seed)'s hits will be. ``captions``: per
    seed, the caption cache caption-reading runs read; ``captioners``: per seed, the captioner run
    that variants with ``start: captioner`` start from."""
    groups: dict[str, list[str]] = {}
    for name, variant in members.items():
        groups.setdefault(variant.training_key, []).append(name)
    specs, hits_files = {}, {}
    for s in args.seeds:
        for names in groups.values():
            first = members[names[0]]
            out = root / f"{first.key}-s{s}"
            others = tuple((f"hits-{members[n].key}.json", members[n]) for n in names[1:])
            learned = str(captions[s]) if captions and first.captions == "default" else None
            init = captioners[s] if captioners and first.start == "captioner" else None
            specs[(names[0], s)] = CompareSpec(
                first, s, str(data[s]), str(out), args.steps, args.points, args.lr, captions=learned,
                also_scored=others, init_from=init,
            )  # fmt: skip
            hits_files[(names[0], s)] = out / "hits.json"
            hits_files.update({(n, s): out / file for n, (file, _) in zip(names[1:], others)})
    return specs, hits_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--claim", required=True, help="a registered claim (its baseline and variants)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=6000, help="synthetic triplets per seed over all splits")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--points", type=int, default=3, help="checkpoints scored per run (the time curve)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--time-steps", type=int, default=20, help="interleaved steps per variant for s/step (0: skip)")
    parser.add_argument("--only", nargs="*", default=None, help="these variants of the claim (default: all)")
    parser.add_argument("--also", nargs="*", default=[], help="more methods as rows (their default config)")
    parser.add_argument("--generated", action="store_true", help="add the method trained on make-triplets output")
    parser.add_argument(
        "--captions",
        choices=("learned", "oracle"),
        default="learned",
        help="target captions: a learned captioner's (trained per seed) or the generator's",
    )
    parser.add_argument("--captioner-steps", type=int, default=1500)
    parser.add_argument("--out", default=str(REPO / "runs" / "compare"))
    parser.add_argument("--doc", default=None, help="default: docs/compare-<claim>.md")
    args = parser.parse_args()
    claims = registered_claims()
    if args.claim not in claims:
        parser.error(f"unknown claim {args.claim!r}; registered: {sorted(claims)}")
    claim = claims[args.claim]
    args.doc = args.doc or str(REPO / "docs" / f"compare-{board.slug(claim.paper)}.md")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    board.one_thread()

    data = make_data(root, tuple(args.seeds), args.size)
    unknown = sorted(set(args.only or []) - set(claim.variants))
    if unknown:
        parser.error(f"--only: {unknown} are not variants of {claim.paper}; it has {sorted(claim.variants)}")
    chosen = {n: v for n, v in claim.variants.items() if not args.only or n in args.only}
    members = {BASELINE: claim.baseline, **chosen, **{m: Variant(m) for m in args.also}}
    learned = args.captions == "learned" and reads_captions(members.values())
    start_from_captioner = any(v.start == "captioner" for v in members.values())
    trained = learned or start_from_captioner
    captioners = learned_captions(data, root, args.captioner_steps, args.jobs) if trained else {}
    captions = captioners if learned else {}
    captioner_runs = {s: str(cache.parent) for s, (cache, _) in captioners.items()}
    specs, hits_files = plan_runs(members, data, root, args, {s: c[0] for s, c in captions.items()}, captioner_runs)
    method_name = next(iter(chosen))
    precision = add_generated_runs(specs, hits_files, chosen[method_name], data, root, args) if args.generated else {}
    board.run_all(list(specs.values()), args.jobs, run=run_compare)
    backfill_subtasks(specs)
    runs: dict[str, list[dict]] = {}
    for (name, s), path in hits_files.items():
        if not path.is_file():
            print(f"missing run {path}: the report leaves seed {s} out", file=sys.stderr)
            continue
        runs.setdefault(name, []).append(load_run_hits(path))
    done = min(len(r) for r in runs.values())
    runs = {n: r[:done] for n, r in runs.items()}
    accuracies = {s: accuracy for s, (_, accuracy) in captions.items()}
    extra = caption_lines(accuracies, args.captioner_steps, "encoder included") if captions else []
    extra += generated_lines(runs, method_name, precision) if GENERATED in runs else []
    seconds = (
        cached_step_seconds(members, data[args.seeds[0]], args.time_steps, Path(args.out)) if args.time_steps else None
    )
    lines = report(args, claim, runs, seconds, extra)
    with atomic_open(Path(args.doc)) as f:
        f.write("\n".join(lines))
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
