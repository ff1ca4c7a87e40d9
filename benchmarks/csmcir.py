"""CSMCIR's measurements beside the claims board: feature fragmentation and the memory bank's cost.

``gap``: for each run folder (and, with ``--init``, each method freshly initialised from the
board's backbone), embed 600 test queries of a synthetic benchmark and measure how far apart the
feature sets are: the composed query and the target as the method embeds them (the two sides that
retrieval compares), and the paper's three sets -- reference image, modification text, target.
Reported: distance between the sets' means (normalised features) and a linear probe's held-out
accuracy telling the sets apart (chance: 1/number of sets). A 2-D PCA of the three sets per model
goes to docs/img/csmcir-fragmentation.png.

``overhead``: one training step of CSMCIR without and with the memory bank (entropy, 1024
entries, momentum key encoder: the default), interleaved on the same batches: median time per
step; peak RSS of each setting run alone in a fresh process.

    .venv/bin/python benchmarks/csmcir.py gap --data D --init BACKBONE RUN [RUN ...]
    .venv/bin/python benchmarks/csmcir.py overhead [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from composir.data import load_benchmark
from composir.data.media import load_media
from composir.encoders import build_encoder
from composir.methods import build_method
from composir.runs.checkpoint import init_weights_from
from composir.train import load_run

REPO = Path(__file__).resolve().parents[1]


@torch.no_grad()
def feature_sets(method, bench, n: int = 600) -> dict[str, torch.Tensor]:
    """Normalised features of ``n`` test queries: query, target (as the method embeds them),
    reference image and text (the encoder's own image and text features)."""
    enc = method.encoder.eval()
    method.eval()
    queries = bench.queries[:n]
    sets: dict[str, list[torch.Tensor]] = {"query": [], "target": [], "reference": [], "text": []}
    for i in range(0, len(queries), 64):
        chunk = queries[i : i + 64]
        ref = _frames(enc, [bench.media_item(q.reference_id) for q in chunk])
        tgt_items = [bench.media_item(q.target_ids[0]) for q in chunk]
        tgt = _frames(enc, tgt_items)
        tokens = enc.tokenize([q.text for q in chunk])
        captions = enc.tokenize([item.caption or "" for item in tgt_items])
        sets["query"].append(method.encode_query(ref, tokens))
        sets["target"].append(method.encode_target(tgt, captions if method.target_text else None))
        sets["reference"].append(enc.encode_image(ref))
        sets["text"].append(enc.encode_text(tokens))
    return {k: F.normalize(torch.cat(v).float(), dim=-1) for k, v in sets.items()}


def _frames(enc, items) -> torch.Tensor:
    return torch.stack([torch.stack([enc.preprocess(f) for f in load_media(i.path, 1)]) for i in items])


def mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.mean(0) - b.mean(0)).norm())


def probe_accuracy(sets: list[torch.Tensor], steps: int = 300, seed: int = 0) -> float:
    """Held-out accuracy of a linear classifier telling the sets apart (half of each set to train)."""
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y, test_x, test_y = [], [], [], []
    for label, x in enumerate(sets):
        order = torch.randperm(len(x), generator=gen)
        half = len(x) // 2
        train_x.append(x[order[:half]])
        test_x.append(x[order[half:]])
        train_y.append(torch.full((half,), label))
        test_y.append(torch.full((len(x) - half,), label))
    x, y = torch.cat(train_x), torch.cat(train_y)
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], len(sets))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(probe(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe(torch.cat(test_x)).argmax(1) == torch.cat(test_y)).float().mean())


GAP_HEADER = (
    "| model | ‖mean q − mean t‖ | probe q vs t (%) | ‖mean ref − mean t‖ | ‖mean text − mean t‖ "
    "| probe ref / text / t (%) |"
)


def gap_row(name: str, sets: dict[str, torch.Tensor]) -> str:
    q_t = mean_distance(sets["query"], sets["target"])
    probe_qt = 100 * probe_accuracy([sets["query"], sets["target"]])
    ref_t = mean_distance(sets["reference"], sets["target"])
    text_t = mean_distance(sets["text"], sets["target"])
    probe3 = 100 * probe_accuracy([sets["reference"], sets["text"], sets["target"]])
    return f"| {name} | {q_t:.3f} | {probe_qt:.1f} | {ref_t:.3f} | {text_t:.3f} | {probe3:.1f} |"


def _init_model(method_name: str, backbone: Path):
    _, cfg = load_run(backbone)
    torch.manual_seed(0)
    enc = build_encoder(cfg.encoder.name, pretrained=cfg.encoder.pretrained, config=cfg.encoder.config)
    method = build_method(method_name, enc, {})
    init_weights_from(method, str(backbone))
    method.weights_loaded(set(method.state_dict()))
    return method


def plot(models: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4), squeeze=False)
    for ax, (name, sets) in zip(axes[0], models.items()):
        names = ["reference", "text", "target", "query"]
        x = torch.cat([sets[k] for k in names])
        _, _, v = torch.pca_lowrank(x - x.mean(0), q=2, center=False)
        xy = (x - x.mean(0)) @ v[:, :2]
        start = 0
        for k in names:
            n = len(sets[k])
            ax.scatter(xy[start : start + n, 0], xy[start : start + n, 1], s=4, alpha=0.5, label=k)
            start += n
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_gap(args) -> None:
    bench = load_benchmark("synthetic", args.data, "test")
    bench.queries = [q for q in bench.queries if q.extra.get("family") in ("explicit", "multi", "implicit")]
    models = {}
    if args.init:
        for name in ("qformer_fusion", "csmcir"):
            models[f"{name} at init"] = feature_sets(_init_model(name, Path(args.init)), bench, args.n)
    for run in args.runs:
        method, cfg = load_run(run)
        models[f"{cfg.method.name} trained ({Path(run).name})"] = feature_sets(method, bench, args.n)
    print(GAP_HEADER)
    print("|---|---|---|---|---|---|")
    for name, sets in models.items():
        print(gap_row(name, sets))
    out = Path(args.plot)
    plot(models, out)
    print(f"wrote {out}")


def _overhead_batches(enc, steps: int):
    gen = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        yield (
            step,
            {
                "reference": torch.randn(32, 1, 3, 64, 64, generator=gen),
                "target": torch.randn(32, 1, 3, 64, 64, generator=gen),
                "tokens": enc.tokenize(["make it red and add a circle"] * 32),
                "target_caption": enc.tokenize(["a red circle on a pink background"] * 32),
                "target_id": [f"t{step}-{i}" for i in range(32)],
            },
        )


def _csmcir(bank: str):
    torch.manual_seed(0)
    return build_method("csmcir", build_encoder("tiny", config={"num_query_tokens": 16}), {"bank": bank}).train()


def _train_steps(method, batches) -> list[float]:
    times = []
    for step, batch in batches:
        start = time.perf_counter()
        sum(method(batch).values()).backward()
        method.after_step(step)
        times.append(time.perf_counter() - start)
        method.zero_grad()
    return times


def cmd_peak(args) -> None:
    """(Child process) train ``--steps`` steps with one bank setting and print the peak RSS in MiB."""
    import resource

    torch.set_num_threads(1)
    method = _csmcir(args.bank)
    _train_steps(method, _overhead_batches(method.encoder, args.steps))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def cmd_overhead(args) -> None:
    import subprocess
    import sys

    torch.set_num_threads(1)
    methods = {bank: _csmcir(bank) for bank in ("none", "entropy")}
    times: dict[str, list[float]] = {k: [] for k in methods}
    for step, batch in _overhead_batches(methods["none"].encoder, args.steps):
        for name, method in methods.items():  # interleaved: the machine's noise hits both alike
            times[name] += _train_steps(method, [(step, batch)])
    skip = min(5, args.steps // 3)  # the first steps fill the bank
    t = {k: statistics.median(v[skip:]) for k, v in times.items()}
    peak = {}
    for bank in methods:  # peak memory: each setting alone in a fresh process
        cmd = [sys.executable, __file__, "peak", "--bank", bank, "--steps", str(args.steps)]
        peak[bank] = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()[-1])
    banked = methods["entropy"]
    state = sum(b.numel() * b.element_size() for b in banked.bank.buffers())
    keys = sum(p.numel() * p.element_size() for p in banked.key_encoder.parameters()) if banked.key_encoder else 0
    print(
        f"batch 32, tiny encoder (16 query tokens), bank 1024 entries ({state / 2**20:.2f} MiB of state), "
        f"momentum key encoder {keys / 2**20:.1f} MiB of weights, {args.steps} steps, first {skip} skipped; "
        f"entries at the end: {len(banked.bank)}"
    )
    print("| | no bank | entropy bank | ratio |")
    print("|---|---|---|---|")
    print(f"| step time, median (s) | {t['none']:.4f} | {t['entropy']:.4f} | {t['entropy'] / t['none']:.3f} |")
    print(
        f"| peak RSS of the process (MiB) | {peak['none']:.0f} | {peak['entropy']:.0f} | "
        f"{peak['entropy'] / peak['none']:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gap")
    p.add_argument("runs", nargs="*")
    p.add_argument("--data", required=True)
    p.add_argument("--init", default=None, help="the board's backbone run: both methods initialised from it")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--plot", default=str(REPO / "docs" / "img" / "csmcir-fragmentation.png"))
    p.set_defaults(func=cmd_gap)
    p = sub.add_parser("overhead")
    p.add_argument("--steps", type=int, default=30)
    p.set_defaults(func=cmd_overhead)
    p = sub.add_parser("peak", help="(used by overhead) one setting's peak memory")
    p.add_argument("--bank", default="none")
    p.add_argument("--steps", type=int, default=30)
    p.set_defaults(func=cmd_peak)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
