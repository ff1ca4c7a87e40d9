"""The claims board: every registered paper claim tested on the schema benchmark, written to docs/claims.md.

For each claim registered by a method file (``composir.methods.claims``), every variant (the
method, its ablations, the baseline) is trained the same way and scored per test query, over N
seeds; each check of the claim is judged from a paired two-level bootstrap interval
(``composir.experiments.verdicts``) and the claim gets a verdict.

Two stages, as the papers fine-tune pretrained backbones: a ``qformer_fusion`` backbone is
trained once on a plain synthetic image set (no schemas, its own data seed) -- the stand-in for
pretrained BLIP-2 -- then, for each seed s, the schema benchmark is generated with seed s (new
schema constellations, new references) and every variant fine-tunes the backbone on it with
training seed s (new modules' initialisation, batch order) and is evaluated on its test split.
Variants with identical settings share runs across claims (the baseline is trained once per seed).

    .venv/bin/python benchmarks/board.py [--quick] [--seeds 0 1 2 3 4] [--jobs 2]
        [--papers IMAGINE ...] [--out runs/claims] [--doc docs/claims.md]

Everything is cached under --out: a repeated command reuses finished runs (an interrupted run
resumes from its last checkpoint) and only redraws the board. What the board is drawn from is also
kept in its record in the repository (``--record``, ``benchmarks/records/claims``;
``composir.experiments.records``): a fresh clone redraws the board with ``--render`` and adds seeds
or papers to it without rerunning what is recorded. A claim with no runs in either keeps the
section drawn before, said to be carried over. ``--jobs`` runs that many trainings at once, one
thread each (2 on a 2-core machine). Run with ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from composir.experiments.records import restore_record, save_record
from composir.experiments.verdicts import (
    BASELINE,
    CheckResult,
    PreconditionResult,
    difference,
    judge_claim,
    nearest_class_mean_accuracy,
    probe_key,
    query_hits,
)
from composir.methods.claims import Claim, Decodes, Variant, registered_claims
from composir.utils.io import atomic_open, atomic_write_json
from composir.utils.progress import progress_bar

# The repository checkout (configs/, docs/, runs/): experiments run from a development install.
REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "tiny-synthetic-video-imagine.yaml"
BUCKETS = (
    "schema-1shot", "schema-4shot", "schema-16shot", "schema-64shot", "schema-transfer", "schema-gate",
    "explicit", "multi", "implicit",
)  # fmt: skip
SHOT_BUCKETS = BUCKETS[:4]
TABLE_METRICS = ("R@1", "R@10", "Rsubset@1")
BACKBONE_SCORES = "val_r1_by_family.json"  # in the backbone's folder
BACKBONE_FINISHED = "finished.json"  # in the backbone's folder
NO_RUNS = "No finished runs yet."


@dataclass(frozen=True)
class BoardSize:
    size: int  # schema benchmark triplets over all splits
    test_queries: int  # per schema bucket
    pretrain_size: int
    pretrain_steps: int
    steps: int  # fine-tuning steps per variant and seed
    seeds: tuple[int, ...]
    # The learned captioner's (from the backbone): 4,500 steps with its encoder trained carry 93% of the
    # generator's attribute words on the test galleries (seeds 0, 1), 1,500 with it frozen 79% (docs/benchmarks.md).
    captioner_steps: int = 4500
    captioner_encoder_frozen: bool = False

    @property
    def captioner(self) -> str:
        """The folder (under the board's cache) of the captioners and of every run that depends on
        them: runs from another captioner are other runs."""
        return f"captioner-{self.captioner_steps}-encoder-{'frozen' if self.captioner_encoder_frozen else 'trained'}"


# The full board's backbone: 10,000 steps on 20,000 plain triplets reach explicit R@1 48 on their
# val split (2,000 on 6,000 left the fine-tuned baseline at 12 on the board: R@1 could hardly
# move); it had levelled off (47.9 at 8,000 steps). docs/benchmarks.md, "The claims board's backbone".
FULL = BoardSize(10_000, 500, 20_000, 10_000, 600, (0, 1, 2, 3, 4))
QUICK = BoardSize(4_000, 200, 4_000, 600, 200, (0, 1), captioner_steps=600)


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run: a variant on one seed's schema benchmark."""

    variant: Variant
    seed: int
    data: str
    backbone: str
    out: str
    steps: int
    lr: float
    # The run folder of a variant that trains the very same model (``Variant.training_key``): this
    # one is not trained again, only built with its own (inference) settings and scored.
    trained_in: str | None = None
    captions: str | None = None  # a caption cache read in training and at test (None: the generator's)

    def overrides(self) -> list[str]:
        return [
            f"data.root={self.data}",
            "data.num_frames=1",
            *([f"data.target_captions={self.captions}"] if self.captions else []),
            f"method.name={self.variant.method}",
            "method.config=null",  # the variant's config replaces the base file's, not merges into it
            f"method.config={json.dumps(self.variant.config)}",
            f"output_dir={self.out}",
            f"train.init_from={self.backbone}",
            f"train.seed={self.seed}",
            f"train.max_steps={self.steps}",
            f"train.lr={self.lr}",
            f"train.warmup_steps={max(1, self.steps // 10)}",
            f"train.eval_every={self.steps}",
            f"train.save_every={self.steps}",
            "train.num_workers=0",
            *(f"train.{k}={json.dumps(v)}" for k, v in self.variant.train.items()),
        ]


# ------------------------------------------------------------------------------ the runs
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def make_data(root: Path, size: BoardSize) -> tuple[Path, dict[int, Path]]:
    """The pretraining set and one schema benchmark per seed (generated once, cached)."""
    from composir.synth import SynthConfig, generate

    pretrain = root / "pretrain-data"
    if not (pretrain / "synthetic.json").is_file():
        generate(SynthConfig(out=pretrain, seed=1000, size=size.pretrain_size), progress=False)
    data = {}
    for seed in size.seeds:
        data[seed] = root / f"schema-data-s{seed}"
        if not (data[seed] / "synthetic.json").is_file():
            config = SynthConfig(
                out=data[seed], seed=seed, size=size.size, schemas=True, schema_test_queries=size.test_queries
            )
            generate(config, progress=False)
    return pretrain, data


def backbone_finished(backbone: Path, steps: int) -> bool:
    """Whether the backbone in this folder finished its ``steps`` (``finished.json``, written once its
    latest checkpoint is at that step): a backbone restored from the record has no latest
    checkpoint, only the ``best`` one every variant starts from, and is not trained again."""
    from composir.runs import checkpoint as ckpt

    done = backbone / BACKBONE_FINISHED
    if done.is_file() and json.loads(done.read_text()).get("steps") == steps:
        return ckpt.best_or_latest(backbone / "checkpoints") is not None
    latest = ckpt.latest_checkpoint(backbone / "checkpoints")
    if latest is None or ckpt.read_trainer_state(latest)["step"] < steps:
        return False
    atomic_write_json(done, {"steps": steps})
    return True


def train_backbone(root: Path, pretrain: Path, steps: int) -> Path:
    """qformer_fusion trained from scratch on the plain synthetic set (seed 0), unless finished."""
    from composir.train import load_config, train

    out = root / "backbone"
    if backbone_finished(out, steps):
        return out
    every = max(min(500, steps), steps // 5)
    overrides = [
        f"data.root={pretrain}", "data.num_frames=1", "method.name=qformer_fusion", "method.config=null",
        f"output_dir={out}", "train.seed=0", f"train.max_steps={steps}", f"train.eval_every={every}",
        f"train.save_every={every}", "train.num_workers=0", f"train.warmup_steps={steps // 10}",
    ]  # fmt: skip
    train(load_config(CONFIG, overrides), resume=True, progress=True)
    backbone_finished(out, steps)
    return out


def recorded_backbone_scores(backbone: Path, pretrain: Path) -> dict[str, float] | None:
    """The backbone's scores: measured where its checkpoints are, else as recorded (a cache restored
    from the board's record has no checkpoints), else None."""
    if (backbone / "checkpoints").is_dir():
        return backbone_scores(backbone, pretrain)
    record = backbone / BACKBONE_SCORES
    return json.loads(record.read_text())["scores"] if record.is_file() else None


def backbone_scores(backbone: Path, pretrain: Path) -> dict[str, float]:
    """The backbone's R@1 per family on its own pretraining set's val split, kept in the run folder
    with the step it was measured at (a backbone trained further is measured again): the board's
    header shows what the variants start from."""
    from composir.runs import checkpoint as ckpt

    folder = ckpt.best_or_latest(backbone / "checkpoints")
    if folder is None:
        raise RuntimeError(f"{backbone}: the backbone has no checkpoint")
    step = ckpt.read_trainer_state(folder)["step"]
    record = backbone / BACKBONE_SCORES
    kept = json.loads(record.read_text()) if record.is_file() else {}
    if kept.get("step") == step:
        return kept["scores"]
    from composir.data import load_benchmark
    from composir.eval.evaluate import evaluate
    from composir.train import load_run

    method, _ = load_run(backbone)
    val = load_benchmark("synthetic", pretrain, "val")
    hits = query_hits(val, evaluate(method.eval(), val, batch_size=64, num_frames=1, progress=False))
    scores = {family: rate(hits, "R@1", family) for family in ("explicit", "multi", "implicit")}
    atomic_write_json(record, {"step": step, "scores": scores})
    return scores


def decoding_pairs(claims: dict[str, Claim]) -> set[tuple[str, str]]:
    """(feature, label) of every registered Decodes precondition."""
    return {(p.feature, p.label) for c in claims.values() for p in c.preconditions if isinstance(p, Decodes)}


def extra_field(extra: dict, label: str):
    """``extra["a"]["b"]`` for ``a.b``; None where absent."""
    value = extra
    for part in label.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _schema_queries(bench, n: int) -> list:
    """The first ``n`` test queries of the schema buckets."""
    return [q for q in bench.queries if str(q.extra.get("family", "")).startswith("schema-")][:n]


def probes(method, bench, pairs: set[tuple[str, str]], n: int = 512) -> dict[str, dict[str, float]]:
    """Nearest-class-mean probes of the method's mechanism features (``probe_features``) on up to
    ``n`` schema test queries, one per (feature, label) pair the method has."""
    import torch

    from composir.methods.base import media_frames

    queries = _schema_queries(bench, n)
    if not pairs or not queries:
        return {}
    features: dict[str, list] = {}
    with torch.no_grad():
        for start in range(0, len(queries), 128):
            chunk = queries[start : start + 128]
            frames = media_frames(method, [bench.media_item(q.reference_id).path for q in chunk], 1)
            for name, value in method.probe_features(frames, method.encoder.tokenize([q.text for q in chunk])).items():
                features.setdefault(name, []).append(value.float().cpu())
    out = {}
    for feature, label in sorted(pairs):
        labels = [extra_field(q.extra, label) for q in queries]
        if feature in features and all(isinstance(v, str) for v in labels):
            out[probe_key(feature, label)] = nearest_class_mean_accuracy(torch.cat(features[feature]).numpy(), labels)
    return out


def backfill_probes(root: Path, results: dict, claims: dict[str, Claim]) -> None:
    """Probes for finished runs recorded before their claim's Decodes precondition existed: the run's
    model loaded again and probed on its seed's test split (written into its ``hits.json``)."""
    pairs = decoding_pairs(claims)
    wanted = {c.variants[p.variant].key for c in claims.values() for p in c.preconditions
              if isinstance(p, Decodes) and p.variant in c.variants}  # fmt: skip
    for (key, seed), result in results.items():
        have = result["hits"].get("probes", {})
        if key in wanted and not all(probe_key(f, lab) in have for f, lab in pairs):
            measure_again(root, seed, result, "probes", lambda method, bench: probes(method, bench, pairs))


def measure_again(root: Path, seed: int, result: dict, field: str, measure) -> None:
    """Load a finished run's model again (from its ``folder``), ``measure(method, its seed's test split
    in root)`` and merge what it finds into the run's recorded ``field`` (``hits.json`` and
    ``result``); runs scored from another run's weights (no checkpoints of their own) are left as
    they are."""
    from composir.data import load_benchmark
    from composir.train import load_run

    run = Path(result["folder"])
    if not (run / "checkpoints").is_dir():
        return
    method, _ = load_run(run)
    found = measure(method.eval(), load_benchmark("synthetic", root / f"schema-data-s{seed}", "test"))
    record = json.loads((run / "hits.json").read_text())
    record[field] = {**record.get(field, {}), **found}
    atomic_write_json(run / "hits.json", record)
    result["hits"][field] = record[field]


def subtasks(method, bench, n: int = 128) -> dict[str, float]:
    """Numbers on the sub-tasks a method relies on (``SubTask`` preconditions): its own validation
    metrics on the test split and, for a method that writes chains, their conclusions' quality."""
    return {**method.validation_metrics(bench, 1), **chain_quality(method, bench, n)}


def chain_quality(method, bench, n: int = 128) -> dict[str, float]:
    """For a method that writes chains: how well the conclusions of ``n`` test queries describe the
    target (the generator's attribute-level caption; ``captions.conclusion_quality``); else empty."""
    import torch

    from composir.experiments.captions import conclusion_quality
    from composir.methods.base import media_frames

    queries = [q for q in bench.queries if (q.extra.get("target_captions") or {}).get("attributes")][:n]
    if not queries:
        return {}
    with torch.no_grad():
        frames = media_frames(method, [bench.media_item(q.reference_id).path for q in queries], 1)
        explanations = method.explain(frames, method.encoder.tokenize([q.text for q in queries]))
    chains = [(e or {}).get("chain") for e in explanations or []]
    if not chains or not all(isinstance(c, dict) and "conclusion" in c for c in chains):
        return {}
    gold = [q.extra["target_captions"]["attributes"] for q in queries]
    return conclusion_quality([c["conclusion"] for c in chains], gold)


def backfill_chain_quality(root: Path, results: dict) -> None:
    """Chain quality for finished runs that wrote chains before all of it was recorded: the run's
    model loaded again and its chains scored on its seed's test split (written into ``hits.json``)."""
    for (_, seed), result in results.items():
        have = result["hits"].get("subtasks", {})
        if "conclusion attributes" in have and "conclusion object F1" not in have:
            measure_again(root, seed, result, "subtasks", chain_quality)


def _diagnostics(method, bench, n: int = 256) -> dict[str, float]:
    """The method's own diagnostics on up to ``n`` schema test queries."""
    from composir.methods.base import media_frames

    queries = _schema_queries(bench, n)
    frames = media_frames(method, [bench.media_item(q.reference_id).path for q in queries], 1)
    return method.diagnostics(frames, method.encoder.tokenize([q.text for q in queries]))


def run_variant(spec: RunSpec) -> Path:
    """Fine-tune, evaluate on the test split and store per-query hits (``hits.json``) in the run folder."""
    one_thread()
    from composir.data import load_benchmark
    from composir.eval.evaluate import evaluate
    from composir.experiments.captions import perturb_gallery_captions
    from composir.train import load_config, load_run, train

    out = Path(spec.out)
    result_file = out / "hits.json"
    if result_file.is_file():
        return result_file
    start = time.time()
    if spec.trained_in:
        from composir.runs import checkpoint as ckpt
        from composir.runs.factory import build_with_weights

        folder = ckpt.best_or_latest(Path(spec.trained_in) / "checkpoints")
        if folder is None:
            raise RuntimeError(f"{spec.trained_in}: the run this variant shares was not trained")
        method = build_with_weights(load_config(CONFIG, spec.overrides()), folder).eval()
        out.mkdir(parents=True, exist_ok=True)
    else:
        train(load_config(CONFIG, spec.overrides()), resume=True, progress=False)
        method, _ = load_run(out)
    test = perturb_gallery_captions(
        load_benchmark("synthetic", Path(spec.data), "test", captions=spec.captions),
        spec.variant.gallery_captions,
        spec.seed,
    )
    res = evaluate(method, test, batch_size=64, num_frames=1, progress=False)
    hits = query_hits(test, res)
    record = {
        "variant": asdict(spec.variant),
        "seed": spec.seed,
        "seconds": time.time() - start,
        "query_ids": res.query_ids,
        **{k: v.tolist() for k, v in hits.items()},
        "diagnostics": _diagnostics(method, test),
        "probes": probes(method, test, decoding_pairs(registered_claims())),
        "subtasks": subtasks(method, test),
    }
    atomic_write_json(result_file, record)
    return result_file


def scored(spec) -> bool:
    """Whether a run's ``hits.json`` is in its folder."""
    return (Path(spec.out) / "hits.json").is_file()


def run_all(specs: list, jobs: int, run=run_variant, finished: Callable[[Any], bool] = scored) -> None:
    """``run`` each spec not yet ``finished``, ``jobs`` processes at a time."""
    todo = [s for s in specs if not finished(s)]
    if not todo:
        return
    context = multiprocessing.get_context("spawn")  # no OpenMP state inherited by the workers
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(run, s): s for s in todo}
        for future in progress_bar(as_completed(futures), total=len(futures), desc="runs", unit="run"):
            spec = futures[future]
            try:
                future.result()
            except Exception as exc:  # one failing run is reported; the board shows what finished
                print(f"run {spec.out} failed: {exc}", file=sys.stderr, flush=True)


def finished_runs(root: Path) -> dict[tuple[str, int], dict]:
    """(variant key, seed) -> scores of every finished run under ``root`` (folders ``<key>-s<seed>``)."""
    out = {}
    for path in sorted(root.glob("*-s*/hits.json")):
        key, _, seed = path.parent.name.rpartition("-s")
        if seed.isdigit():
            out[(key, int(seed))] = load_hits(path)
    return out


def board_runs(root: Path, size: BoardSize, claims: dict[str, Claim]) -> dict[tuple[str, int], dict]:
    """The runs the board is drawn from, those of the claims' variants only: a variant that depends
    on the learned captioner from the folder of this size's captioner, every other one from the
    cache's top level."""
    from composir.experiments.captioner import depends_on_captioner

    variants = [v for c in claims.values() for v in (c.baseline, *c.variants.values())]
    dependent = {v.key for v in variants if depends_on_captioner(v)}
    plain = {v.key for v in variants} - dependent
    top = {k: r for k, r in finished_runs(root).items() if k[0] in plain}
    return {**top, **{k: r for k, r in finished_runs(root / size.captioner).items() if k[0] in dependent}}


def run_folder(root: Path, size: BoardSize, key: str, variant: Variant, seed: int) -> Path:
    """Where the run of ``variant`` (under ``key``) on ``seed`` lives in the board's cache."""
    from composir.experiments.captioner import depends_on_captioner

    return (root / size.captioner if depends_on_captioner(variant) else root) / f"{key}-s{seed}"


def load_hits(path: Path) -> dict:
    record = json.loads(path.read_text())
    arrays = {k: np.asarray(record[k], dtype=float) for k in ("R@1", "R@10", "R@50", "Rsubset@1") if k in record}
    arrays["bucket"] = np.asarray(record["bucket"], dtype=object)
    if "top1" in record:  # runs from before it was recorded have none (their Engaged is "not measured")
        arrays["top1"] = np.asarray(record["top1"], dtype=object)
    arrays["probes"] = record.get("probes", {})  # read by Decodes preconditions
    arrays["subtasks"] = record.get("subtasks", {})  # read by SubTask preconditions
    diagnostics = record.get("diagnostics", {})
    return {"hits": arrays, "diagnostics": diagnostics, "seconds": record["seconds"], "folder": path.parent}


# ------------------------------------------------------------------------------ the board
def claim_hits(claim: Claim, results: dict[tuple[str, int], dict], seeds: tuple[int, ...]) -> tuple[dict, list[int]]:
    """Per variant (``BASELINE`` for the baseline), one run per seed: the seeds where all finished."""
    members = {BASELINE: claim.baseline, **claim.variants}
    done = [s for s in seeds if all((v.key, s) in results for v in members.values())]
    return {name: [results[(v.key, s)]["hits"] for s in done] for name, v in members.items()}, done


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def rate(hits: dict, metric: str, bucket: str) -> float:
    rows = hits["bucket"] == bucket
    return 100 * float(hits[metric][rows].mean()) if rows.any() else float("nan")


def metric_table(hits: dict, metric: str, order: tuple[str, ...] = BUCKETS) -> list[str]:
    """Mean ± std over seeds per bucket (those of ``order`` the runs have); variants also show the
    paired difference to the baseline."""
    buckets = [b for b in order if any((h["bucket"] == b).any() for h in hits[BASELINE])]
    lines = ["| variant | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    for name, runs in hits.items():
        cells = []
        for b in buckets:
            cell = mean_sd([rate(h, metric, b) for h in runs])
            if name != BASELINE:
                d = difference(hits, name, (b,), metric, draws=1000)
                cell += f" ({d.estimate:+.1f} [{d.low:+.1f}, {d.high:+.1f}])"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def check_table(results: list[CheckResult]) -> list[str]:
    lines = ["| check | estimate [95% interval] | outcome |", "|---|---|---|"]
    for r in results:
        c = r.contrast
        lines.append(f"| {r.text} | {c.estimate:+.1f} [{c.low:+.1f}, {c.high:+.1f}] | {r.outcome} |")
    return lines


def precondition_table(results: list[PreconditionResult]) -> list[str]:
    """What must hold before the checks can show the claim, measured on these runs."""
    lines = ["| precondition | measured | met |", "|---|---|---|"]
    for r in results:
        value = "not measured" if r.value is None else f"{r.value:.3g}"
        lines.append(f"| {r.text} | {value} | {'yes' if r.met else '**no**'} |")
    return lines


def diagnostics_table(claim: Claim, results: dict, seeds: list[int]) -> list[str]:
    rows = {name: [results[(claim.variants[name].key, s)]["diagnostics"] for s in seeds] for name in claim.diagnose}
    return variant_table(
        rows, lambda vals: f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f}"
    )


def variant_table(rows: dict[str, list[dict]], cell: Callable[[list[float]], str]) -> list[str]:
    """A table of per-run numbers: a row per variant (its runs' dicts), a column per key any run
    has, each cell ``cell`` of the values its runs recorded ("—" where none did); empty: no table."""
    keys = sorted({k for runs in rows.values() for d in runs for k in d})
    if not keys:
        return []
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, runs in rows.items():
        cells = []
        for k in keys:
            vals = [d[k] for d in runs if k in d]
            cells.append(cell(vals) if vals else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def subtask_table(claim: Claim, results: dict, seeds: list[int]) -> list[str]:
    """Every sub-task number the claim's runs recorded (``subtasks``), per variant: mean ± std over
    ``seeds`` (variants that record none are left out)."""
    named = {BASELINE: claim.baseline, **claim.variants}
    rows = {}
    for name, variant in named.items():
        runs = [results[(variant.key, s)]["hits"].get("subtasks", {}) for s in seeds if (variant.key, s) in results]
        if any(runs):
            rows[name] = runs
    return variant_table(rows, mean_sd)


def plot_claim(claim: Claim, hits: dict, path: Path) -> None:
    """R@1 and Rsubset@1 by shot level, R@1 on the other buckets: mean over seeds (error bars: the
    seeds' range on the curves, their std on the bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    others = [b for b in BUCKETS[4:] if any((h["bucket"] == b).any() for h in hits[BASELINE])]
    width = 0.8 / len(hits)
    for i, (name, runs) in enumerate(hits.items()):
        for ax, metric in zip(axes[:2], ("R@1", "Rsubset@1")):
            shots = np.array([[rate(h, metric, b) for b in SHOT_BUCKETS] for h in runs])
            low, high = shots.mean(0) - shots.min(0), shots.max(0) - shots.mean(0)
            ax.errorbar([1, 4, 16, 64], shots.mean(0), yerr=[low, high], marker="o", capsize=3, label=name)
        rest = np.array([[rate(h, "R@1", b) for b in others] for h in runs])
        axes[2].bar(np.arange(len(others)) + i * width, rest.mean(0), width, yerr=rest.std(0), capsize=2, label=name)
    for ax, metric in zip(axes[:2], ("R@1", "Rsubset@1")):
        ax.set(xscale="log", xticks=[1, 4, 16, 64], xticklabels=["1", "4", "16", "64"], ylabel=f"{metric} (test)")
        ax.set_xlabel("training shots per schema")
        ax.set_title(f"{claim.paper}: implicit schema queries", fontsize=9)
    axes[2].set(xticks=np.arange(len(others)) + 0.4 - width / 2, xticklabels=others, ylabel="R@1 (test)")
    axes[2].set_title("other buckets", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


@dataclass(frozen=True)
class Budget:
    """What the runs behind a verdict were given: printed with it."""

    steps: int
    lr: float
    pretrain_steps: int
    full_steps: int = FULL.steps  # what the full board gives

    def note(self) -> str:
        text = (f"Budget: each variant fine-tuned {self.steps} steps × 32 at lr {self.lr:g} from a `qformer_fusion` "
                f"backbone pretrained {self.pretrain_steps} steps (none from scratch).")  # fmt: skip
        if self.limited:
            text += f" **Budget-limited**: {self.steps} of the full board's {self.full_steps} fine-tuning steps."
        return text

    @property
    def limited(self) -> bool:
        return self.steps < self.full_steps

    def for_claim(self, claim: Claim) -> Budget:
        """This budget as ``claim``'s variants get it (``Claim.steps_factor``)."""
        return replace(self, steps=scaled_steps(self.steps, claim), full_steps=scaled_steps(self.full_steps, claim))


def scaled_steps(steps: int, claim: Claim) -> int:
    return max(1, round(steps * claim.steps_factor))


def sized_claim(claim: Claim, steps: int) -> Claim:
    """The claim as the board runs it at ``steps`` fine-tuning steps: where it asks for more
    (``Claim.steps_factor``), every variant's ``train.max_steps`` is set, which makes its runs other
    runs than those of the same variants at the board's budget."""
    if claim.steps_factor == 1:
        return claim
    n = scaled_steps(steps, claim)

    def longer(v: Variant) -> Variant:
        return replace(v, train={**v.train, "max_steps": n})

    return replace(claim, baseline=longer(claim.baseline), variants={k: longer(v) for k, v in claim.variants.items()})


def claim_section(
    claim: Claim, results: dict, seeds: tuple[int, ...], img: Path, doc: Path, budget: Budget
) -> list[str]:
    hits, done = claim_hits(claim, results, seeds)
    lines = [f"## {claim.paper}", "", f"**Claim.** {claim.statement}", ""]
    if claim.note:
        lines += [claim.note, ""]
    if not done:
        return [*lines, NO_RUNS, ""]
    verdict, checks, preconditions = judge_claim(claim, hits)
    budget = budget.for_claim(claim)
    limited = " (budget-limited)" if budget.limited else ""
    lines += [f"**Verdict: {verdict}**{limited} (seeds {', '.join(map(str, done))}).", "", budget.note(), ""]
    lines += [*precondition_table(preconditions), "", *check_table(checks), ""]
    for metric in [m for m in TABLE_METRICS if m in hits[BASELINE][0]]:
        lines += [f"{metric} on the test split, mean ± std over seeds (difference to the baseline "
                  "[95% paired bootstrap interval]):", "", *metric_table(hits, metric), ""]  # fmt: skip
    tasks = subtask_table(claim, results, done)
    if tasks:
        lines += ["Sub-tasks the claim relies on, on each run's test split (`subtasks`), mean ± std over seeds:"]
        lines += ["", *tasks, ""]
    diag = diagnostics_table(claim, results, done)
    if diag:
        lines += ["Mechanism diagnostics on 256 schema test queries (`method.diagnostics`), mean ± std over seeds:", ""]
        lines += [*diag, ""]
    picture = img / f"claims-{slug(claim.paper)}.png"
    plot_claim(claim, hits, picture)
    lines += [f"![{claim.paper}]({picture.relative_to(doc.parent).as_posix()})", ""]
    return lines


def write_board(
    doc: Path, header: list[str], claims: dict[str, Claim], results: dict, seeds, img: Path, budget: Budget
) -> None:
    lines = list(header)
    drawn = drawn_sections(doc.read_text(encoding="utf-8")) if doc.is_file() else {}
    for claim in claims.values():
        section = claim_section(claim, results, seeds, img, doc, budget)
        lines += kept_section(drawn[claim.paper], section) if claim.paper in drawn else section
    with atomic_open(doc) as f:
        f.write("\n".join(lines))


VERDICT = "**Verdict: "
CARRIED = "*Carried over from this document's previous drawing"


def drawn_sections(text: str) -> dict[str, list[str]]:
    """A drawn board's claim sections by paper (from each ``## <paper>`` line to the next)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        if line.startswith("## "):
            current = sections.setdefault(line[3:], [])
        if current is not None:
            current.append(line)
    return sections


def section_seeds(lines: list[str]) -> set[int] | None:
    """The seeds a drawn section's verdict was taken on (None: it has no verdict)."""
    line = next((line for line in lines if line.startswith(VERDICT)), None)
    if line is None:
        return None
    seeds = line.rpartition("(seeds ")[2].partition(")")[0]
    return {int(s) for s in seeds.split(", ") if s.isdigit()}


def kept_section(drawn: list[str], section: list[str]) -> list[str]:
    """``section`` (drawn from the runs there are), unless the section drawn before stands on seeds
    these runs do not cover (its runs are in neither the cache nor the record): then that one, said
    to be carried over, with the seeds that are recorded."""
    before, now = section_seeds(drawn), section_seeds(section) or set()
    if before is None or before <= now:
        return section
    paper = drawn[0][3:]
    recorded = f" (recorded now: seeds {', '.join(map(str, sorted(now)))})" if now else ""
    note = (f"{CARRIED}: the runs behind this section are in neither the board's cache nor its record "
            "(they were made before the record was kept, on an earlier training of the backbone); "
            f"`--papers {paper}` draws it again from new runs{recorded}.*")  # fmt: skip
    body = [line for line in drawn[1:] if not line.startswith(CARRIED)]
    while body and not body[0]:
        body = body[1:]
    return [drawn[0], "", note, "", *body]


def learned_captions_for(variants, data: dict[int, Path], root: Path, backbone: Path, size: BoardSize, jobs: int):
    """Per seed, a learned captioner's caption cache (in its run folder), when a variant reads
    captions or starts from the captioner (else empty)."""
    from composir.experiments.captioner import learned_captions, needs_captioner

    if not needs_captioner(variants):
        return {}
    found = learned_captions(
        data, root / size.captioner, size.captioner_steps, jobs, str(backbone), size.captioner_encoder_frozen
    )
    return {s: cache for s, (cache, _) in found.items()}


def run_start(variant: Variant, seed: int, backbone: Path, captions: dict[int, Path]) -> str:
    """The run a variant's training starts from: the backbone, or the seed's learned captioner."""
    return str(captions[seed].parent) if variant.start == "captioner" else str(backbone)


def caption_note(root: Path, size: BoardSize) -> list[str]:
    """The board's paragraph on its captions, from the captioners' recorded accuracy (none: no lines)."""
    from composir.experiments.captioner import caption_lines, recorded_captioners

    found = recorded_captioners(root / size.captioner)
    start = "from the backbone, its encoder " + ("frozen" if size.captioner_encoder_frozen else "trained too")
    return caption_lines(found, size.captioner_steps, start) if found else []


CAPTIONS = "**Captions.** "
CARRIED_CAPTIONS = "*(Carried over from this document's previous drawing: its captioners are not in the record.)* "


def carried_caption_note(doc: Path) -> list[str]:
    """The captions paragraph drawn before, said to be carried over, where no captioner's accuracy is
    recorded (the carried sections that read those captions keep it); none if there was none."""
    lines = doc.read_text(encoding="utf-8").split("\n") if doc.is_file() else []
    drawn = next((line for line in lines if line.startswith(CAPTIONS)), None)
    if drawn is None:
        return []
    return [CAPTIONS + CARRIED_CAPTIONS + drawn.removeprefix(CAPTIONS).removeprefix(CARRIED_CAPTIONS), ""]


def header_lines(
    args, size: BoardSize, seconds: float | None, results: dict, backbone: dict[str, float] | None = None
) -> list[str]:
    run_minutes = statistics.mean(r["seconds"] for r in results.values()) / 60 if results else 0.0
    start = "" if not backbone else " (its val R@1 " + ", ".join(f"{k} {v:.1f}" for k, v in backbone.items()) + ")"
    command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/board.py" + (" --quick" if args.quick else "")
    return [
        "# The claims board",
        "",
        "Written by `benchmarks/board.py` (do not edit by hand). Each paper's claim, as registered by its",
        "method file (`composir.methods.claims`), tested on the synthetic schema benchmark",
        "(`composir synth --schemas`, docs/benchmarks.md).",
        "",
        f"Command: `{command}` ({size.size:,} triplets per seed, {size.test_queries} test queries per schema",
        f"bucket; backbone `qformer_fusion` pretrained {size.pretrain_steps} steps on a plain synthetic set of",
        f"{size.pretrain_size:,} triplets{start}; every variant fine-tunes it {size.steps} steps × 32 at lr",
        f"{args.lr:g}; images, tiny encoder with 16 query tokens; each claim's seeds are given with its verdict).",
        f"This board: {len(results)} fine-tuning runs of {run_minutes:.1f} min each on average (training and",
        f"test evaluation, one thread each, {args.jobs} at a time, {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}).",
        (
            "Drawn from the cached runs (`--render`)."
            if seconds is None
            else f"This invocation took {seconds / 60:.0f} min of wall time (finished runs are reused)."
        ),
        "The full board (no `--quick`) is 5 seeds; `--quick` (2 seeds, smaller sets and runs, written to",
        "docs/claims-quick.md) is sized to finish in under 30 minutes on 2 cores. The runs' per-query results",
        f"are kept in `benchmarks/records/{'claims-quick' if args.quick else 'claims'}/`: `--render` draws this "
        "page again from them on a fresh clone.",
        "",
        "How to read it: a check is a paired contrast between variants' per-query hit rates (points);",
        "its 95% interval comes from a two-level bootstrap (seeds, then test queries within a seed, the",
        "same queries for every variant of a seed). A check *holds* when the interval is on the claimed",
        "side (and a claimed size is met by the estimate), *fails* when the interval excludes the claim,",
        "and is *inconclusive* otherwise. Before any check, the claim's *preconditions* are measured",
        "(the baseline has range on the metric, the mechanism changes what is retrieved, headroom for",
        "the claimed gain); if one fails the claim is *untestable here*, with the failing number. Else",
        "it is *reproduced* when every check holds, *not reproduced* when any check fails,",
        "*inconclusive* otherwise.",
        "",
    ]


def draw_board(
    doc: Path, args, size: BoardSize, seconds: float | None, root: Path, claims: dict, img: Path, budget: Budget
) -> dict:
    """The board from every finished run in the cache (``--papers`` and ``--seeds`` only choose what
    to train): every registered claim, the backbone's scores and the captioners' in the header."""
    results = board_runs(root, size, claims)
    backfill_probes(root, results, claims)
    backfill_chain_quality(root, results)
    seeds = tuple(sorted({seed for _, seed in results}))
    scores = recorded_backbone_scores(root / "backbone", root / "pretrain-data")
    header = header_lines(args, size, seconds, results, scores) + (
        caption_note(root, size) or carried_caption_note(doc)
    )
    write_board(doc, header, claims, results, seeds, img, budget)
    return results


def keep_record(record: Path | None, root: Path, size: BoardSize, results: dict) -> None:
    """Save what the board was drawn from into its record: the runs' ``hits.json``, the finished
    backbone (its ``best`` weights, which every run starts from: a backbone trained again on another
    machine differs, and later seeds must start where the recorded ones did) with its scores, and
    this size's captioners' accuracy."""
    if record is None:
        return
    from composir.experiments.captioner import ACCURACY

    files = [Path(r["folder"]) / "hits.json" for r in results.values()]
    backbone = root / "backbone"
    if backbone_finished(backbone, size.pretrain_steps):  # the weights every recorded run starts from
        best = backbone / "checkpoints" / "best"
        kept = (BACKBONE_FINISHED, BACKBONE_SCORES, "config.yaml")
        files += [f for f in (*(backbone / n for n in kept), best / "model.safetensors", best / "trainer_state.json")
                  if f.is_file()]  # fmt: skip
    files += sorted((root / size.captioner).glob(f"captioner-s*/{ACCURACY}"))
    written = save_record(root, record, files)
    if written:
        print(f"{written} result file(s) written to the record {record}")


def plan_runs(
    variants: dict[str, Variant],
    size: BoardSize,
    root: Path,
    data: dict[int, Path],
    backbone: Path,
    captions: dict[int, Path],
    lr: float,
) -> list[RunSpec]:
    """One run per variant (by key) and seed: its start, folder, steps (the board's, or the
    variant's own ``train.max_steps``), captions, and the run that trains the same model if another
    variant's does (then this one is only scored)."""
    trainer: dict[str, str] = {}  # training key -> the variant key whose run trains that model
    for key, v in variants.items():
        trainer.setdefault(v.training_key, key)
    return [
        RunSpec(v, s, str(data[s]), run_start(v, s, backbone, captions), str(run_folder(root, size, key, v, s)),
                int(v.train.get("max_steps", size.steps)), lr,
                None if trainer[v.training_key] == key else str(run_folder(root, size, trainer[v.training_key], v, s)),
                str(captions[s]) if captions and v.captions == "default" else None)
        for s in size.seeds
        for key, v in variants.items()
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, smaller sets and runs (< 30 min on 2 cores)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--papers", nargs="+", default=None, help="registered claims to run (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: by size)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="backbone steps (default: by size)")
    parser.add_argument("--captioner-steps", type=int, default=None, help="learned captioner steps (default: by size)")
    parser.add_argument(
        "--captioner-encoder-frozen", action="store_true", help="the learned captioner trains its decoder only"
    )
    parser.add_argument("--out", default=None, help="cache folder (default: runs/claims or runs/claims-quick)")
    parser.add_argument(
        "--record",
        default=None,
        help="the board's record, kept in the repository: what it is drawn from, restored into the cache "
        "where missing and updated after drawing (default: benchmarks/records/claims[-quick]; 'none': no record)",
    )
    parser.add_argument("--render", action="store_true", help="only redraw the board from the finished runs")
    parser.add_argument("--doc", default=None, help="default: docs/claims.md (docs/claims-quick.md with --quick)")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    changes = {"seeds": tuple(args.seeds or size.seeds), "steps": args.steps or size.steps}
    changes["pretrain_steps"] = args.pretrain_steps or size.pretrain_steps
    changes["captioner_steps"] = args.captioner_steps or size.captioner_steps
    changes["captioner_encoder_frozen"] = args.captioner_encoder_frozen or size.captioner_encoder_frozen
    size = BoardSize(**{**asdict(size), **changes})
    claims = {paper: sized_claim(claim, size.steps) for paper, claim in registered_claims().items()}
    unknown = sorted(set(args.papers or []) - set(claims))
    if unknown:
        parser.error(f"unknown paper(s) {unknown}; registered: {sorted(claims)}")
    to_run = {p: c for p, c in claims.items() if not args.papers or p in args.papers}
    root = Path(args.out or REPO / "runs" / ("claims-quick" if args.quick else "claims"))
    doc = Path(args.doc or REPO / "docs" / ("claims-quick.md" if args.quick else "claims.md"))
    root.mkdir(parents=True, exist_ok=True)
    img = doc.parent / "img" / ("quick" if args.quick else "")  # the quick board's plots apart from the full one's
    budget = Budget(size.steps, args.lr, size.pretrain_steps)

    name = "claims-quick" if args.quick else "claims"
    record = None if args.record == "none" else Path(args.record or REPO / "benchmarks" / "records" / name)
    if record is not None and record.exists() and not record.is_dir():
        parser.error(f"--record {record}: not a folder")
    if record is not None:
        restored = restore_record(record, root)
        if restored:
            print(f"{restored} result file(s) restored from the record {record}")

    one_thread()
    start = time.time()
    if args.render:
        results = draw_board(doc, args, size, None, root, claims, img, budget)
        keep_record(record, root, size, results)
        print(f"wrote {doc} from {len(results)} finished runs")
        return
    pretrain, data = make_data(root, size)
    backbone = train_backbone(root, pretrain, size.pretrain_steps)
    variants = {v.key: v for c in to_run.values() for v in (c.baseline, *c.variants.values())}
    captions = learned_captions_for(variants.values(), data, root, backbone, size, args.jobs)
    specs = plan_runs(variants, size, root, data, backbone, captions, args.lr)
    run_all([s for s in specs if s.trained_in is None], args.jobs)
    run_all([s for s in specs if s.trained_in is not None], args.jobs)  # scored from those runs' weights
    seconds = time.time() - start
    keep_record(record, root, size, draw_board(doc, args, size, seconds, root, claims, img, budget))
    done = sum((Path(spec.out) / "hits.json").is_file() for spec in specs)
    print(f"wrote {doc} ({done}/{len(specs)} runs of this invocation, {seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
