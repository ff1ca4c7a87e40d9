"""Training throughput (triplets/s) and the share of step time spent waiting for data.

Runs `composir.train.train` for a few steps on the synthetic benchmark for each set-up, side
by side in one run, and reads the numbers the trainer logs (`triplets_per_s`, `data_fraction`;
the first logging window, with its start-up costs, is dropped).

    .venv/bin/python benchmarks/train_speed.py [--steps 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from composir.synth import SynthConfig, generate
from composir.train import load_config, train
from composir.train.metrics_log import MetricsLog

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-synthetic-combiner.yaml"

# BLIP-2 widths (EVA ViT-g: 1408 wide, 16 heads, patch 14 at 224 px; Q-Former: BERT-base, 32
# queries) at reduced depth so that a CPU can run it: 2 ViT layers instead of 39, 2 Q-Former
# layers instead of 12.
BLIP2_SHAPED = {
    "model_config": {
        "vision_config": {
            "hidden_size": 1408,
            "intermediate_size": 6144,
            "num_hidden_layers": 2,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            "initializer_range": 0.02,
        },
        "qformer_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 2,
            "num_attention_heads": 12,
            "vocab_size": 4096,
            "encoder_hidden_size": 1408,
            "cross_attention_frequency": 2,
            "use_qformer_text_input": True,
        },
        "num_query_tokens": 32,
        "image_text_hidden_size": 256,
    },
}


def setups(workers: int) -> dict[str, list[str]]:
    common = [
        f"train.num_workers={workers}",
        "train.eval_every=100000",
        "train.save_every=100000",
        "train.log_every=5",
        "train.warmup_steps=1",
    ]
    return {
        "tiny / combiner (batch 64)": [*common, "method.name=combiner"],
        "tiny / qformer_fusion (batch 64)": [*common, "method.name=qformer_fusion"],
        "BLIP-2-shaped, 2+2 layers / qformer_fusion (batch 8)": [
            *common,
            "encoder.name=tiny_blip2_shaped",
            "method.name=qformer_fusion",
            "train.batch_size=8",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    register_blip2_shaped()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(SynthConfig(out=data, seed=0, size=3000), progress=False)
        print(
            f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"{args.steps} steps each, {args.workers} loader workers"
        )
        print("| set-up | triplets/s | data wait / step time |")
        print("|---|---|---|")
        for name, overrides in setups(args.workers).items():
            out = Path(tmp) / name.split()[0]
            cfg = load_config(
                CONFIG, [f"data.root={data}", f"train.max_steps={args.steps}", *overrides, f"output_dir={out}"]
            )
            train(cfg, resume=False, progress=False)
            rows = MetricsLog(out / "metrics.csv").rows()
            tps = [float(r["value"]) for r in rows if r["metric"] == "triplets_per_s"][1:]
            frac = [float(r["value"]) for r in rows if r["metric"] == "data_fraction"][1:]
            print(f"| {name} | {statistics.mean(tps):.1f} | {100 * statistics.mean(frac):.1f}% |")


def register_blip2_shaped() -> None:
    from composir.encoders import register_encoder
    from composir.encoders.blip2 import Blip2Encoder, Blip2Options
    from composir.encoders.tiny import HashTokenizer

    @register_encoder("tiny_blip2_shaped")
    def _build(pretrained=None, config=None):
        from transformers import Blip2Config, Blip2ForImageTextRetrieval

        model = Blip2ForImageTextRetrieval(Blip2Config(**BLIP2_SHAPED["model_config"]))
        return Blip2Encoder(model, HashTokenizer(4096, 32), Blip2Options(image_size=224, max_text_length=32))


if __name__ == "__main__":
    main()
