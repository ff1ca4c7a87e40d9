"""GPU path check: training steps under bf16 autocast and chunked ranking on CUDA.

Run on a machine with a GPU (CI stays CPU-only). Trains a few steps of the tiny demo set-up and
of the BLIP-2-shaped set-up from `train_speed.py` on CUDA with `train.amp=bf16` (and with AMP
off, side by side), and ranks a 1M x 256 gallery with 10k queries on the GPU.

    .venv/bin/python benchmarks/gpu_check.py [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from composir.eval.ranking import chunked_topk
from composir.synth import SynthConfig, generate
from composir.train import load_config, train
from composir.train.metrics_log import MetricsLog

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-synthetic-combiner.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    from train_speed import register_blip2_shaped

    register_blip2_shaped()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(SynthConfig(out=data, seed=0, size=3000), progress=False)
        print("| set-up | amp | triplets/s | peak GPU memory (MiB) | final loss |")
        print("|---|---|---|---|---|")
        for name, extra in {
            "tiny / combiner (batch 64)": ["method.name=combiner"],
            "BLIP-2-shaped / qformer_fusion (batch 32)": [
                "encoder.name=tiny_blip2_shaped",
                "method.name=qformer_fusion",
                "train.batch_size=32",
                "encoder.freeze_vision=true",
            ],
        }.items():
            for amp in ("off", "bf16"):
                out = Path(tmp) / f"run-{len(name)}-{amp}"
                torch.cuda.reset_peak_memory_stats()
                cfg = load_config(
                    CONFIG,
                    [
                        f"data.root={data}",
                        f"output_dir={out}",
                        f"train.max_steps={args.steps}",
                        "train.device=cuda",
                        f"train.amp={amp}",
                        "train.eval_every=100000",
                        "train.save_every=100000",
                        "train.log_every=5",
                        *extra,
                    ],
                )
                train(cfg, resume=False, progress=False)
                rows = MetricsLog(out / "metrics.csv").rows()
                tps = statistics.mean(float(r["value"]) for r in rows if r["metric"] == "triplets_per_s")
                loss = [float(r["value"]) for r in rows if r["metric"] == "loss"][-1]
                peak = torch.cuda.max_memory_allocated() / 2**20
                print(f"| {name} | {amp} | {tps:.0f} | {peak:.0f} | {loss:.3f} |")
    q = torch.nn.functional.normalize(torch.randn(10_000, 256, device="cuda"), dim=1)
    g = torch.nn.functional.normalize(torch.randn(1_000_000, 256, device="cuda"), dim=1)
    torch.cuda.synchronize()
    start = time.perf_counter()
    chunked_topk(q, g, 50, query_chunk=4096, gallery_chunk=262_144)
    torch.cuda.synchronize()
    print(f"chunked top-50 of 10k queries over 1M x 256 on the GPU: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
