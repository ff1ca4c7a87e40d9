"""Does the demo's model learn? Combiner vs image_only vs text_only, trained the same way.

Synthesises the demo's benchmark, trains each method with the demo config (same encoder,
steps, seed, batches), evaluates the best checkpoint on the test split and prints per-family
recall. The `explicit` rows are the acceptance check of issue 3.

    .venv/bin/python benchmarks/demo_learning.py [--size 6000] [--steps N] [--methods combiner image_only text_only]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from composir.data import load_benchmark
from composir.demo import CONFIG, DEMO_SIZE, DEMO_SPLITS
from composir.eval.evaluate import evaluate
from composir.synth import SynthConfig, generate
from composir.train import load_config, load_run, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=DEMO_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=["combiner", "image_only", "text_only"])
    parser.add_argument("--out", default=None, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="composir-demo-learning-"))
    data = root / "data"
    if not (data / "synthetic.json").is_file():
        generate(SynthConfig(out=data, seed=args.seed, size=args.size, split_fractions=DEMO_SPLITS), progress=False)
    test = load_benchmark("synthetic", data, "test")
    results = {}
    for name in args.methods:
        # The combiner run is the demo's own: with --out demo-out, `composir demo`'s run is reused.
        run_dir = root / ("run" if name == "combiner" else name)
        overrides = [f"data.root={data}", f"output_dir={run_dir}", f"method.name={name}", f"train.seed={args.seed}"]
        if name != "combiner":
            overrides.append("method.config=null")
        if args.steps:
            overrides.append(f"train.max_steps={args.steps}")
        start = time.time()
        train(load_config(CONFIG, overrides), resume=True, progress=False)
        method, _ = load_run(run_dir)
        res = evaluate(method, test, batch_size=128)
        results[name] = {"all": res.metrics, **res.per_family, "train_seconds": time.time() - start}
    print(f"test split of the synthetic benchmark (size {args.size}, seed {args.seed}); recall in %")
    print("| method | family | R@1 | R@5 | R@10 | R@50 | Rsubset@1 |")
    print("|---|---|---|---|---|---|---|")
    for name, per in results.items():
        for fam in ("explicit", "multi", "implicit", "all"):
            m = per[fam]
            print(
                f"| {name} | {fam} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@10']:.1f} | {m['R@50']:.1f} "
                f"| {m['Rsubset@1']:.1f} |"
            )
    best_single = max(results[n]["explicit"]["R@1"] for n in ("image_only", "text_only") if n in results)
    if "combiner" in results:
        c = results["combiner"]["explicit"]
        print(
            f"explicit: combiner R@1 {c['R@1']:.1f} vs best single-modality {best_single:.1f} "
            f"(+{c['R@1'] - best_single:.1f} points); combiner R@10 {c['R@10']:.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
