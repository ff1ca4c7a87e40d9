"""``composir demo``: the main job end to end on the synthetic benchmark.

synthesise -> train the tiny encoder with CLIP4Cir's Combiner -> evaluate per modification
family on the test split -> print the recall table and write the training plot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
# Most triplets train; val and test keep 1,000 queries each over ~4,000-image galleries.
DEMO_SIZE = 20_000
DEMO_SPLITS = {"train": 0.9, "val": 0.05, "test": 0.05}


def run_demo(args: argparse.Namespace) -> int:
    from composir.data import load_benchmark
    from composir.eval.evaluate import evaluate
    from composir.synth import SynthConfig, generate
    from composir.synth.contact_sheet import render_contact_sheet
    from composir.train import load_config, load_run, train
    from composir.utils.io import atomic_write_json

    out = Path(args.out)
    data = out / "data"
    start = time.time()
    print(f"[1/4] synthesising {args.size} triplets into {data}")
    generate(SynthConfig(out=data, seed=args.seed, size=args.size, split_fractions=DEMO_SPLITS))
    sheet = render_contact_sheet(load_benchmark("synthetic", data, "val"), out / "contact_sheet.png")
    print(f"      contact sheet: {sheet}")
    overrides = [f"data.root={data}", f"output_dir={out / 'run'}", f"train.seed={args.seed}"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    cfg = load_config(CONFIG, overrides)
    print(
        f"[2/4] training {cfg.encoder.name} + {cfg.method.name} for {cfg.train.max_steps} steps "
        f"(batch {cfg.train.batch_size}; resumes if interrupted)"
    )
    train(cfg, resume=True)
    print("[3/4] evaluating the best checkpoint on the test split (reference excluded, hard negatives in the gallery)")
    method, _ = load_run(out / "run")
    result = evaluate(method, load_benchmark("synthetic", data, "test"), batch_size=128)
    atomic_write_json(out / "test_metrics.json", result.to_json(), indent=2)
    print(f"{'family':9s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'R@50':>6s} {'Rs@1':>6s} {'Rs@2':>6s}")
    for fam, m in [("all", result.metrics), *sorted(result.per_family.items())]:
        print(
            f"{fam:9s} {m['R@1']:6.2f} {m['R@5']:6.2f} {m['R@10']:6.2f} {m['R@50']:6.2f} "
            f"{m['Rsubset@1']:6.2f} {m['Rsubset@2']:6.2f}"
        )
    print(f"      training curves: {out / 'run' / 'training.png'}; metrics: {out / 'test_metrics.json'}")

    print(f"[4/4] indexing the test images ({data / 'test'}) and searching them")
    from composir.index import GalleryIndex
    from composir.search import Searcher, model_encoder

    info = {
        "run": str((out / "run").resolve()),
        "fingerprint": method.encoder.fingerprint(),
        "num_frames": cfg.data.num_frames,
        "method": cfg.method.name,
    }
    report = GalleryIndex(out / "index").update(data / "test", model_encoder(method, cfg.data.num_frames), info)
    print(f"      index {out / 'index'}: {report['total']} images")
    searcher = Searcher(out / "index")
    test = load_benchmark("synthetic", data, "test")
    shown: dict = {}
    for q in test.queries:
        shown.setdefault(q.extra["family"], q)
    for family, q in sorted(shown.items()):
        ref = f"{q.reference_id}.png"
        ranked = searcher.search(ref, q.text, k=50)
        results = ranked[:3]
        target = f"{q.target_ids[0]}.png"
        rank = next((i + 1 for i, r in enumerate(ranked) if r.id == target), None)
        print(
            f'      [{family}] {ref} + "{q.text}" -> '
            + ", ".join(f"{r.id} ({r.score:.2f})" for r in results)
            + f"   target {target} at rank {rank if rank else '>50'}"
        )
    print(
        "      try your own: composir search --index "
        + str(out / "index")
        + f' --image {data / "test" / (q.reference_id + ".png")} --text "make the background pink"'
    )
    print(
        f"      web page: composir serve --index {out / 'index'} --benchmark synthetic --root {data}   "
        "then open http://127.0.0.1:8000/"
    )
    print(f"done in {time.time() - start:.0f}s")
    return 0
