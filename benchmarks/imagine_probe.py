"""What IMAGINE's modules do on the test queries of trained runs (by family; read with imagine_ablation.py).

For each run folder: the confidence c (mean, spread), how far the final composed feature moves
from the concrete one (relative norm of f - f_c, cosine of f with f_c), how many distinct top-k
prototype sets the visual and text libraries select, how close the prototypes of each library
are to one another (a collapsed library gives every sample the same imagery), how much the
shared imagery vector m and the global features the libraries learn from vary across queries
(mean cosine to their mean), per family.

    .venv/bin/python benchmarks/imagine_probe.py RUN [RUN ...] [--data DIR] [--frames 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from composir.data import load_benchmark
from composir.data.media import load_media
from composir.methods.prototypes import mean_pairwise_cosine
from composir.train import load_run

FAMILIES = ("explicit", "multi", "implicit")


@torch.no_grad()
def probe(method, data: Path, frames: int) -> dict[str, dict[str, float]]:
    bench = load_benchmark("synthetic", data, "test")
    enc = method.encoder
    out: dict[str, dict[str, float]] = {}
    for fam in FAMILIES:
        queries = [q for q in bench.queries if q.extra.get("family") == fam]
        batch = torch.stack(
            [
                torch.stack([enc.preprocess(f) for f in load_media(bench.media_item(q.reference_id).path, frames)])
                for q in queries
            ]
        )
        res = method.compose(batch, enc.tokenize([q.text for q in queries]))
        f, fc, m = res["composed"], res["concrete"], res["m"]
        row = {
            "rel_change": float(((f - fc).norm(dim=-1) / fc.norm(dim=-1)).mean()),
            "cos_f_fc": float(F.cosine_similarity(f, fc, dim=-1).mean()),
            "m_cos_to_mean": float(F.cosine_similarity(m, m.mean(0, keepdim=True), dim=-1).mean()),
            # Spread of the global features the libraries are built from: near 1, the batch-softmax
            # attention of the update is near uniform and every prototype drifts to the batch mean.
            "g_visual_cos": float(F.cosine_similarity(res["g_visual"], res["g_visual"].mean(0, keepdim=True)).mean()),
            "g_text_cos": float(F.cosine_similarity(res["g_text"], res["g_text"].mean(0, keepdim=True)).mean()),
            "visual_sets": len({tuple(sorted(r)) for r in res["visual_index"].tolist()}),
            "text_sets": len({tuple(sorted(r)) for r in res["text_index"].tolist()}),
            "n": len(queries),
        }
        if "confidence" in res:
            c = res["confidence"].squeeze(-1).tolist()
            row["c_mean"], row["c_std"] = statistics.mean(c), statistics.pstdev(c)
        out[fam] = row
    out["libraries"] = {
        "visual_spread": mean_pairwise_cosine(method.visual_library.prototypes),
        "text_spread": mean_pairwise_cosine(method.text_library.prototypes),
        "fusion_weights": [round(w, 3) for w in torch.softmax(method.fusion_logits, 0).tolist()],
    }
    return out


@torch.no_grad()
def replay_text_library(
    name: str, method, cfg, data: Path, taus: list[float], steps: int = 300, batch: int = 32
) -> None:
    """Re-run the text library's momentum update from its initialisation (the query tokens) on the
    trained run's text features of the training split, and print the prototypes' mean pairwise
    cosine as it goes: how fast, and at which update temperature, the library collapses."""
    from composir.methods.imagine import PrototypeLibrary

    texts = [q.text for q in load_benchmark("synthetic", data, cfg.data.train_split).queries]
    g = torch.cat([method.text_global(method.encoder.tokenize(texts[i : i + 256])) for i in range(0, len(texts), 256)])
    init = method.encoder.model.query_tokens.detach()[0]
    print(
        f"\ntext library replay on {name}: query-token norm {float(init.norm(dim=-1).mean()):.2f}, "
        f"text feature norm {float(g.norm(dim=-1).mean()):.2f}, text features' cos to their mean "
        f"{float(F.cosine_similarity(g, g.mean(0, keepdim=True)).mean()):.3f}"
    )
    marks = [1, 10, 50, steps]
    print("| update temperature | " + " | ".join(f"spread after {m}" for m in marks) + " |")
    print("|---|" + "---|" * len(marks))
    for tau in taus:
        library = PrototypeLibrary(init, method.config.momentum, tau, "momentum")
        generator = torch.Generator().manual_seed(0)
        spreads = {}
        for step in range(1, steps + 1):
            library.update(g[torch.randint(len(g), (batch,), generator=generator)])
            if step in marks:
                spreads[step] = mean_pairwise_cosine(library.prototypes)
        print(f"| {tau} | " + " | ".join(f"{spreads[m]:.3f}" for m in marks) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", default=None, help="the synthetic benchmark (default: the run's data.root)")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--replay", type=float, nargs="*", default=None, help="update temperatures to replay")
    args = parser.parse_args()
    print(
        "| run | family | n | c mean ± sd | ‖f−f_c‖/‖f_c‖ | cos(f, f_c) | cos(m, mean m) "
        "| cos(g, mean g) visual / text "
        "| top-k sets visual / text |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in map(Path, args.runs):
        method, cfg = load_run(run)
        res = probe(method, Path(args.data or cfg.data.root), args.frames)
        if args.replay and run == Path(args.runs[0]):
            first = (run.name, method, cfg)
        for fam in FAMILIES:
            r = res[fam]
            conf = f"{r['c_mean']:.3f} ± {r['c_std']:.3f}" if "c_mean" in r else "—"
            print(
                f"| {run.name} | {fam} | {r['n']} | {conf} | {r['rel_change']:.3f} | {r['cos_f_fc']:.3f} | "
                f"{r['m_cos_to_mean']:.3f} | {r['g_visual_cos']:.3f} / {r['g_text_cos']:.3f} | "
                f"{r['visual_sets']} / {r['text_sets']} |"
            )
        lib = res["libraries"]
        print(
            f"| {run.name} | libraries | | prototype mean cosine: visual {lib['visual_spread']:.3f}, "
            f"text {lib['text_spread']:.3f}; fusion weights (visual, text) {lib['fusion_weights']} | | | | | |"
        )
    if args.replay:
        name, method, cfg = first
        replay_text_library(name, method, cfg, Path(args.data or cfg.data.root), args.replay)


if __name__ == "__main__":
    main()
