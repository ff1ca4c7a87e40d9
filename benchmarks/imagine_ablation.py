"""IMAGINE vs the Q-Former fusion baseline and the main ablations on the synthetic video benchmark.

Each variant trains from the same config (`configs/tiny-synthetic-video-imagine.yaml`) with
three seeds; the best checkpoint is evaluated on the test split; the table gives mean +- std of
R@1 and R@10 per modification family (explicit / multi / implicit).

    .venv/bin/python benchmarks/imagine_ablation.py [--size 2000] [--steps 300] [--seeds 0 1 2]
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

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-synthetic-video-imagine.yaml"
VARIANTS: dict[str, list[str]] = {
    "qformer_fusion (baseline)": ["method.name=qformer_fusion", "method.config=null"],
    "IMAGINE": [],
    "random selection": ["method.config.selection=random"],
    "no momentum (replace)": ["method.config.update=replace"],
    "static prototypes": ["method.config.update=static"],
    "no schema loss": ["method.config.schema_weight=0.0"],
    "addition instead of modulation": ["method.config.composition=add"],
}
FAMILIES = ("explicit", "multi", "implicit")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
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
    results: dict[str, list[dict]] = {}
    for name in args.variants:
        for seed in args.seeds:
            run = root / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-s{seed}"
            overrides = [
                f"data.root={data}",
                f"output_dir={run}",
                f"train.seed={seed}",
                f"train.max_steps={args.steps}",
                f"train.eval_every={args.steps}",
                f"train.save_every={args.steps}",
                f"data.num_frames={args.frames}",
                *VARIANTS[name],
            ]
            start = time.time()
            train(load_config(CONFIG, overrides), resume=True, progress=False)
            method, _ = load_run(run)
            res = evaluate(method, test, batch_size=64, num_frames=args.frames)
            results.setdefault(name, []).append({"all": res.metrics, **res.per_family, "seconds": time.time() - start})
            print(
                f"{name} seed {seed}: " + "  ".join(f"{f} R@1={res.per_family[f]['R@1']:.1f}" for f in FAMILIES),
                flush=True,
            )
    print(
        f"\nsynthetic video benchmark (size {args.size}, {args.frames} frames), {args.steps} steps, "
        f"seeds {args.seeds}; test split, mean +- std"
    )
    print("| variant | " + " | ".join(f"{f} R@1 | {f} R@10" for f in FAMILIES) + " |")
    print("|---|" + "---|" * (2 * len(FAMILIES)))
    for name, runs in results.items():
        cells = []
        for fam in FAMILIES:
            for key in ("R@1", "R@10"):
                vals = [r[fam][key] for r in runs]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
