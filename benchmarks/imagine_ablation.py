"""IMAGINE vs the Q-Former fusion baseline and the main ablations on the synthetic video benchmark.

Two stages, as in the paper (IMAGINE fine-tunes a trained BLIP-2, it does not learn vision from
nothing):

1. a *backbone*: the Q-Former fusion baseline (`qformer_fusion`) trained from scratch on the
   synthetic video benchmark once (seed 0), standing in for pretrained BLIP-2 features;
2. every variant -- the baseline itself, IMAGINE and its ablations -- fine-tunes that backbone
   (`train.init_from`) for the same number of steps with each seed (the seed draws the new
   modules' initialisation and the batch order).

The best checkpoint of each run is evaluated on the test split; the table gives mean +- std over
seeds of R@1 / R@10 per modification family (explicit / multi / implicit) and Recall_subset@1.

    .venv/bin/python benchmarks/imagine_ablation.py [--size 4000] [--frames 2]
        [--backbone-steps 2000] [--steps 300] [--seeds 0 1 2] [--out DIR] [--json FILE]

Finished runs are reused when the command is repeated with the same --out (each run resumes)
and their scores with the same --json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from composir.data import load_benchmark
from composir.eval.evaluate import evaluate
from composir.synth import SynthConfig, generate
from composir.train import load_config, load_run, train
from composir.utils.io import atomic_write_json

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-synthetic-video-imagine.yaml"
BASELINE = ["method.name=qformer_fusion", "method.config=null"]
VARIANTS: dict[str, list[str]] = {
    "qformer_fusion (baseline)": BASELINE,
    "IMAGINE": [],
    "random selection": ["method.config.selection=random"],
    "no momentum (replace)": ["method.config.update=replace"],
    "static prototypes": ["method.config.update=static"],
    "no schema loss": ["method.config.schema_weight=0.0"],
    "addition instead of modulation": ["method.config.composition=add"],
    "no IMC (imagery unused at inference)": ["method.config.composition=none"],
    # The fine-tuning budget hypothesis: new modules (IMC, imagery projections; the baseline has
    # only its logit scale) at 10x the encoder's learning rate.
    "qformer_fusion, 10x lr outside the encoder": [*BASELINE, "train.encoder_lr={lr}", "train.lr={lr10}"],
    "IMAGINE, new modules at 10x lr": ["train.encoder_lr={lr}", "train.lr={lr10}"],
}
FAMILIES = ("explicit", "multi", "implicit")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _scores(method, test, frames: int) -> dict:
    res = evaluate(method, test, batch_size=64, num_frames=frames, progress=False)
    return {"all": res.metrics, **res.per_family}


def _table(results: dict[str, list[dict]]) -> list[str]:
    lines = [
        "| variant | runs | " + " | ".join(f"{f} R@1 | {f} R@10" for f in FAMILIES) + " | all Rsubset@1 |",
        "|---|---|" + "---|" * (2 * len(FAMILIES) + 1),
    ]
    for name, runs in results.items():
        if not runs:
            continue
        cells = []
        for fam, key in [(f, k) for f in FAMILIES for k in ("R@1", "R@10")] + [("all", "Rsubset@1")]:
            vals = [r[fam][key] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4000, help="synthetic triplets over all splits")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--backbone-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per variant and seed")
    parser.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="composir-imagine-"))
    data = root / "data"
    if not (data / "synthetic.json").is_file():
        generate(SynthConfig(out=data, seed=0, size=args.size, video=True, num_frames=args.frames), progress=False)
    test = load_benchmark("synthetic", data, "test")
    common = [f"data.root={data}", f"data.num_frames={args.frames}"]

    backbone = root / "backbone"
    steps = args.backbone_steps
    start = time.time()
    train(
        load_config(
            CONFIG,
            [
                *common,
                *BASELINE,
                f"output_dir={backbone}",
                "train.seed=0",
                f"train.max_steps={steps}",
                f"train.eval_every={min(500, steps)}",
                f"train.save_every={min(500, steps)}",
            ],
        ),
        resume=True,
        progress=False,
    )
    method, _ = load_run(backbone)
    previous: dict[str, list[dict]] = {}
    if args.json and Path(args.json).is_file():  # scores of finished runs from an earlier invocation
        previous = json.loads(Path(args.json).read_text())
    results: dict[str, list[dict]] = {
        "backbone (no fine-tuning)": previous.get("backbone (no fine-tuning)") or [_scores(method, test, args.frames)]
    }
    results.update({name: [] for name in args.variants})
    print(f"backbone: {time.time() - start:.0f} s", flush=True)

    # Seed-major order: a run cut short still has every variant on the first seeds.
    for seed in args.seeds:
        for name in args.variants:
            run = root / f"{_slug(name)}-s{seed}"
            overrides = [
                *common,
                f"output_dir={run}",
                f"train.init_from={backbone}",
                f"train.seed={seed}",
                f"train.max_steps={args.steps}",
                f"train.lr={args.lr}",
                f"train.warmup_steps={max(1, args.steps // 10)}",
                f"train.eval_every={args.steps}",
                f"train.save_every={args.steps}",
                *(o.format(lr=args.lr, lr10=10 * args.lr) for o in VARIANTS[name]),
            ]
            done = [r for r in previous.get(name, []) if r.get("seed") == seed]
            if done and (run / "checkpoints" / "best").is_dir():
                results[name].append(done[0])
                continue
            start = time.time()
            train(load_config(CONFIG, overrides), resume=True, progress=False)
            method, _ = load_run(run)
            scores = _scores(method, test, args.frames)
            results[name].append({"seed": seed, **scores, "seconds": time.time() - start})
            print(f"{name} seed {seed}: " + "  ".join(f"{f} R@1={scores[f]['R@1']:.1f}" for f in FAMILIES), flush=True)
            if args.json:
                atomic_write_json(args.json, results, indent=2)
    print(
        f"\nsynthetic video benchmark (size {args.size}, {args.frames} frames); backbone {args.backbone_steps} "
        f"steps, then {args.steps} fine-tuning steps per variant at lr {args.lr}, seeds {args.seeds}; "
        "test split, mean ± std over seeds"
    )
    print("\n".join(_table(results)))


if __name__ == "__main__":
    main()
