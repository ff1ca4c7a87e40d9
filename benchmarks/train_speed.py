"""Training throughput (triplets/s), the share of step time spent waiting for data, and pixels
vs cached features for a frozen BLIP-2-shaped vision tower.

Runs `composir.train.train` for a few steps on the synthetic benchmark for each set-up, side
by side in one run, and reads the numbers the trainer logs (`triplets_per_s`, `data_fraction`;
the first logging window, with its start-up costs, is dropped). The last column projects one
epoch of WebVid-CoVR's 1.6M training triplets at that rate.

    .venv/bin/python benchmarks/train_speed.py [--steps 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from composir.data import load_benchmark
from composir.data.feature_cache import build_cache
from composir.synth import SynthConfig, generate
from composir.train import build_from_config, load_config, train
from composir.train.metrics_log import MetricsLog

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-synthetic-combiner.yaml"
WEBVID_COVR_TRAIN = 1_600_000

# BLIP-2 widths (EVA ViT-g: 1408 wide, 16 heads, patch 14 at 224 px; Q-Former: BERT-base, 32
# queries) at reduced depth so that a CPU can run it, keeping BLIP-2's ~3:1 ratio of ViT to
# Q-Former depth (39 : 12): 6 ViT layers and 2 Q-Former layers by default (--vit-layers).
BLIP2_SHAPED = {
    "vision_config": {
        "hidden_size": 1408,
        "intermediate_size": 6144,
        "num_hidden_layers": 6,
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
}


def register_blip2_shaped() -> None:
    from composir.encoders import register_encoder
    from composir.encoders.blip2 import Blip2Encoder, Blip2Options
    from composir.encoders.tiny import HashTokenizer

    @register_encoder("tiny_blip2_shaped", example=lambda workdir: _build())
    def _build(pretrained=None, config=None):
        from transformers import Blip2Config, Blip2ForImageTextRetrieval

        model = Blip2ForImageTextRetrieval(Blip2Config(**BLIP2_SHAPED))
        return Blip2Encoder(model, HashTokenizer(4096, 32), Blip2Options(image_size=224, max_text_length=32))


def setups(workers: int, cache: Path) -> dict[str, list[str]]:
    common = [
        f"train.num_workers={workers}",
        "train.eval_every=100000",
        "train.save_every=100000",
        "train.log_every=5",
        "train.warmup_steps=1",
    ]
    blip2 = [
        *common,
        "encoder.name=tiny_blip2_shaped",
        "method.name=qformer_fusion",
        "method.config=null",
        "train.batch_size=16",
        "encoder.freeze_vision=true",
    ]
    return {
        "tiny / combiner (batch 64), pixels": [*common, "method.name=combiner"],
        "tiny / qformer_fusion (batch 64), pixels": [*common, "method.name=qformer_fusion", "method.config=null"],
        "BLIP-2-shaped, frozen ViT / qformer_fusion (batch 16), pixels": blip2,
        "BLIP-2-shaped, frozen ViT / qformer_fusion (batch 16), cached features": [
            *blip2,
            f"data.feature_cache={cache}",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=1500, help="synthetic triplets to train on")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vit-layers", type=int, default=6)
    parser.add_argument("--only", default=None, help="run only the set-ups whose name contains this")
    args = parser.parse_args()
    BLIP2_SHAPED["vision_config"]["num_hidden_layers"] = args.vit_layers
    register_blip2_shaped()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(SynthConfig(out=data, seed=0, size=args.size), progress=False)
        print(
            f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"{args.steps} steps each, {args.workers} loader workers"
        )
        cache = Path(tmp) / "cache"
        blip2_cfg = load_config(
            CONFIG,
            [
                f"data.root={data}",
                "encoder.name=tiny_blip2_shaped",
                "encoder.freeze_vision=true",
                "method.name=qformer_fusion",
                "method.config=null",
            ],
        )
        start = time.perf_counter()
        encoder = build_from_config(blip2_cfg).encoder
        media = load_benchmark("synthetic", data, "train").gallery + load_benchmark("synthetic", data, "val").gallery
        build_cache(encoder, media, cache, batch_size=16, progress=False)
        cache_seconds = time.perf_counter() - start
        print("| set-up | triplets/s | data wait / step time | WebVid-CoVR epoch (1.6M) |")
        print("|---|---|---|---|")
        rates: dict[str, float] = {}
        for name, overrides in setups(args.workers, cache).items():
            if args.only and args.only not in name:
                continue
            out = Path(tmp) / f"run{len(rates)}"
            cfg = load_config(
                CONFIG, [f"data.root={data}", f"train.max_steps={args.steps}", *overrides, f"output_dir={out}"]
            )
            train(cfg, resume=False, progress=False)
            rows = MetricsLog(out / "metrics.csv").rows()
            tps = [float(r["value"]) for r in rows if r["metric"] == "triplets_per_s"][1:]
            frac = [float(r["value"]) for r in rows if r["metric"] == "data_fraction"][1:]
            rates[name] = statistics.mean(tps)
            hours = WEBVID_COVR_TRAIN / rates[name] / 3600
            print(f"| {name} | {rates[name]:.1f} | {100 * statistics.mean(frac):.1f}% | {hours:.1f} h |")
        pixels, cached = list(rates.values())[-2:]
        print(
            f"cached / pixel training speed (frozen BLIP-2-shaped ViT): {cached / pixels:.1f}x; "
            f"caching {len(media)} images took {cache_seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
