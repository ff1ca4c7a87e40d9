"""A learned captioner per seed for the experiments (compare, board): CIR-CoT's caption stage trained
on a seed's training split, then the caption cache it writes for every image of the three splits,
and how many of the generator's attribute words its test-gallery captions carry.

Captions a method reads (CSMCIR's targets, the late-fusion baseline) then come from this cache in
training and at test, as an MLLM's captions would on a real benchmark: with perception errors. The
generator's own captions stay available as an explicit oracle (``Variant.captions: oracle``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from composir.experiments import board
from composir.methods.claims import Variant
from composir.utils.io import atomic_write_json

CAPTIONER_CONFIG = board.REPO / "configs" / "tiny-synthetic-cir-cot.yaml"
CACHE, ACCURACY = "learned.jsonl", "accuracy.json"  # in a captioner's run folder; ACCURACY is written last


@dataclass(frozen=True)
class CaptionerSpec:
    """One seed's captioner: trained ``steps`` at ``lr`` on ``data``'s training split into ``out``,
    from ``init_from`` (a run whose encoder it starts from) or from scratch; ``encoder_frozen``: only
    the visual projection and the decoder learn (from scratch the encoder must learn: it would see
    nothing)."""

    data: str
    out: str
    steps: int
    lr: float
    init_from: str | None = None
    encoder_frozen: bool = False

    def __post_init__(self) -> None:
        if self.encoder_frozen and self.init_from is None:
            raise ValueError("a captioner trained from scratch cannot keep its encoder frozen")

    @property
    def cache(self) -> Path:
        return Path(self.out) / CACHE

    def overrides(self) -> list[str]:
        config = {"stage": "caption", "caption_encoder_frozen": self.encoder_frozen}
        start = [f"train.init_from={self.init_from}"] if self.init_from else []
        return [
            f"data.root={self.data}", "data.num_frames=1", "method.config=null",
            f"method.config={json.dumps(config)}", f"output_dir={self.out}", f"train.max_steps={self.steps}",
            f"train.lr={self.lr}", f"train.warmup_steps={max(1, self.steps // 20)}",
            f"train.eval_every={self.steps}", f"train.save_every={self.steps}", "train.num_workers=0", *start,
        ]  # fmt: skip


def train_captioner(spec: CaptionerSpec) -> Path:
    """Train (resumed), caption every image not yet in the cache, then record the captions'
    attribute accuracy against the generator's on the test gallery (``accuracy.json``, written last)."""
    board.one_thread()
    from composir.annotate.captions import target_items
    from composir.annotate.learned import caption_with_run, load_captioner
    from composir.data import load_benchmark
    from composir.data.captions import read_captions
    from composir.experiments.captions import attribute_accuracy
    from composir.train import load_config, train

    train(load_config(CAPTIONER_CONFIG, spec.overrides()), resume=True, progress=False)
    method = load_captioner(spec.out)
    splits = {split: load_benchmark("synthetic", Path(spec.data), split) for split in ("train", "val", "test")}
    items = [i for b in splits.values() for i in target_items(b)]
    caption_with_run(items, spec.cache, method, f"composir run {spec.out}", progress=False)
    said = read_captions(spec.cache)
    gallery = [item for item in splits["test"].gallery if item.caption]
    accuracy = attribute_accuracy([said.get(i.id, "") for i in gallery], [i.caption for i in gallery])
    exact = 100.0 * float(np.mean([said.get(i.id, "") == i.caption for i in gallery]))
    atomic_write_json(Path(spec.out) / ACCURACY, {"attribute_accuracy": accuracy, "exact": exact})
    return spec.cache


def learned_captions(
    data: dict[int, Path], root: Path, steps: int, jobs: int, init_from: str | None = None, encoder_frozen: bool = False
) -> dict[int, tuple[Path, dict]]:
    """Per seed: the learned captioner's cache and its measured accuracy (trained where missing)."""
    specs = {
        s: CaptionerSpec(str(d), str(root / f"captioner-s{s}"), steps, 1e-3, init_from, encoder_frozen)
        for s, d in data.items()
    }
    board.run_all(list(specs.values()), jobs, run=train_captioner, finished=captioner_finished)
    out = {}
    for s, spec in specs.items():
        found = finished_captioner(Path(spec.out))
        if found is None:
            raise SystemExit(f"the captioner of seed {s} did not finish ({spec.out}); see the error above")
        out[s] = found
    return out


def finished_captioner(out: Path) -> tuple[Path, dict] | None:
    """(caption cache, recorded accuracy) of a captioner run folder, or None while it is unfinished
    (an accuracy restored from the board's record, with no caption cache beside it, is unfinished)."""
    done, cache = out / ACCURACY, out / CACHE
    return (cache, json.loads(done.read_text())) if done.is_file() and cache.is_file() else None


def captioner_finished(spec: CaptionerSpec) -> bool:
    return finished_captioner(Path(spec.out)) is not None


def recorded_captioners(root: Path) -> dict[int, dict]:
    """Per seed, the recorded accuracy of the finished captioners under an experiment's folder
    (``captioner-s<seed>``; their caption caches need not be there)."""
    return {
        int(done.parent.name.removeprefix("captioner-s")): json.loads(done.read_text())
        for done in sorted(root.glob(f"captioner-s*/{ACCURACY}"))
    }


def caption_lines(accuracies: dict[int, dict], steps: int, start: str) -> list[str]:
    """The report's paragraph on where the captions came from and how good they are (per seed, the
    captioner's recorded ``accuracy.json``)."""
    accuracy = [a["attribute_accuracy"] for a in accuracies.values()]
    exact = [a["exact"] for a in accuracies.values()]
    return [
        f"**Captions.** Every variant that reads captions reads a learned captioner's (CIR-CoT's caption "
        f"stage, `cir_cot` with `stage: caption`, trained {steps} steps on each seed's training split, "
        f"{start}) in training and at test, except rows marked *generator's captions* (the oracle). On the "
        f"test gallery its captions carry {board.mean_sd(accuracy)} % of the generator's attribute words "
        f"(colour, shape, size, background; exact captions {board.mean_sd(exact)} %).",
        "",
    ]


def needs_captioner(variants: Iterable[Variant]) -> bool:
    """Whether an experiment over these variants trains a captioner per seed: a model reads target
    captions, or a run starts from the captioner (``Variant.start``)."""
    variants = list(variants)
    return any(v.start == "captioner" for v in variants) or reads_captions(variants)


def depends_on_captioner(variant: Variant) -> bool:
    """Whether a variant's run changes with the learned captioner: its model reads the captioner's
    captions, or its training starts from the captioner."""
    return variant.start == "captioner" or (variant.captions == "default" and reads_captions([variant]))


def reads_captions(variants: Iterable[Variant]) -> bool:
    """Whether any variant's model reads target captions (only then is a captioner trained): each
    built, small, with the experiments' 16 query tokens (which every registered variant fits)."""
    from composir.encoders import build_encoder
    from composir.methods import build_method

    encoder = build_encoder("tiny", config={"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 16})
    return any(build_method(v.method, encoder, v.config).target_text for v in variants)
