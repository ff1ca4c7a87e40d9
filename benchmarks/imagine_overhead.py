"""IMAGINE's overhead over the Q-Former fusion baseline on BLIP-2-shaped features, side by side.

The encoder is BLIP-2's Q-Former at full size (BERT-base width 768, 12 layers, 32 query tokens,
cross-attention every 2nd layer) fed with ViT-g-shaped tokens (257 x 1408, as from a feature
cache, so the frozen ViT's cost is left out for both). Each variant runs in its own process for
its peak memory (max RSS above the process's baseline). Reported: added parameters, training
step time, peak memory and inference time per query, as ratios to the baseline.

    .venv/bin/python benchmarks/imagine_overhead.py [--batch 16 --steps 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

QFORMER = {
    "vision_config": {
        "hidden_size": 1408,
        "intermediate_size": 6144,
        "num_hidden_layers": 1,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
    },
    "qformer_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "vocab_size": 30522,
        "encoder_hidden_size": 1408,
        "cross_attention_frequency": 2,
        "use_qformer_text_input": True,
    },
    "num_query_tokens": 32,
    "image_text_hidden_size": 256,
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(name: str, batch: int, steps: int) -> dict:
    import torch
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    from composir.encoders.blip2 import Blip2Encoder, Blip2Options
    from composir.encoders.tiny import HashTokenizer
    from composir.methods import build_method

    torch.manual_seed(0)
    model = Blip2ForImageTextRetrieval(Blip2Config(**QFORMER))
    encoder = Blip2Encoder(model, HashTokenizer(30522, 32), Blip2Options(max_text_length=32))
    encoder.model.vision_model.requires_grad_(False)
    encoder.cached_vision = True
    config = None
    if name.startswith("imagine"):
        config = {"top_k": 10, "hidden_dim": 256, "global_features": "fused" if name.endswith("fused") else "separate"}
    method = build_method(name.split(":")[0], encoder, config)
    trainable = sum(p.numel() for p in method.parameters())
    ref = torch.randn(batch, 257, 1408)
    tgt = torch.randn(batch, 257, 1408)
    tokens = encoder.tokenize(["move the ants to the bark"] * batch)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-5)
    base = _rss_mb()
    times = []
    method.train()
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = sum(method.losses({"reference": ref, "target": tgt, "tokens": tokens}).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(0)  # the prototype updates, as the trainer runs them
        times.append(time.perf_counter() - start)
    method.eval()
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(3):
            method.encode_query(ref, tokens)
        infer = (time.perf_counter() - start) / (3 * batch)
    return {
        "params": trainable,
        "step_s": sorted(times[1:])[len(times[1:]) // 2],
        "peak_extra_mb": _rss_mb() - base,
        "infer_s_per_query": infer,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_variant(args.worker, args.batch, args.steps)))
        return
    res = {}
    for name in ("qformer_fusion", "imagine", "imagine:fused"):
        cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--steps", str(args.steps)]
        res[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    b = res["qformer_fusion"]
    print(
        f"BLIP-2-shaped Q-Former (12 layers, 768 wide, 32 queries) on cached ViT-g-shaped tokens, "
        f"batch {args.batch}, median of {args.steps} training steps; ratios to qformer_fusion"
    )
    print("| variant | parameters | training step | peak extra memory | inference per query |")
    print("|---|---|---|---|---|")
    print(
        f"| qformer_fusion | {b['params'] / 1e6:.2f}M | {b['step_s']:.3f} s | {b['peak_extra_mb']:.0f} MiB | "
        f"{1000 * b['infer_s_per_query']:.1f} ms |"
    )
    for name, label in (("imagine", "IMAGINE, separate global passes"), ("imagine:fused", "IMAGINE, fused globals")):
        i = res[name]
        added = i["params"] - b["params"]
        print(
            f"| {label} | +{added / 1e6:.2f}M (+{100 * added / b['params']:.2f}%; +{100 * added / 1.17e9:.3f}% of "
            f"BLIP-2's 1.17B) | {i['step_s']:.3f} s ({i['step_s'] / b['step_s']:.3f}x) | "
            f"{i['peak_extra_mb']:.0f} MiB ({i['peak_extra_mb'] / b['peak_extra_mb']:.3f}x) | "
            f"{1000 * i['infer_s_per_query']:.1f} ms ({i['infer_s_per_query'] / b['infer_s_per_query']:.3f}x) |"
        )


if __name__ == "__main__":
    main()
