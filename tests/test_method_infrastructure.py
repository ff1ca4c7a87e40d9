"""What new methods build on: their own batches (collators), captioned targets, protocols as data,
structured tokens, hooks after the optimizer step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from composir.data import PROTOCOLS, load_benchmark, protocol_of
from composir.eval.evaluate import evaluate, score
from composir.methods.base import MethodConfig, RetrievalMethod
from composir.methods.batch import TripletCollator
from composir.methods.registry import register_method, unregister_method
from composir.train import load_config, train
from helpers import CONFIG, SMALL


class _CaptionCollator(TripletCollator):
    def extend(self, batch, items):
        batch["target_caption"] = self.tokenize([f"caption of {x['target_id']}" for x in items])


@dataclass
class _ProbeConfig(MethodConfig):
    pass


class _Probe(RetrievalMethod):
    """Reads a batch field its own collator adds; its targets read their captions; counts hooks."""

    config_class = _ProbeConfig
    target_text = True
    seen_batches: ClassVar[list[dict]] = []
    steps: ClassVar[list[int]] = []
    target_captions: ClassVar[list[torch.Tensor]] = []

    def __init__(self, encoder, config=None):
        super().__init__(encoder, config)
        self.proj = torch.nn.Linear(encoder.embed_dim, encoder.embed_dim)

    def collator(self):
        return _CaptionCollator(self.encoder.tokenize)

    def encode_query(self, frames, tokens):
        return F.normalize(self.proj(self.encoder.encode_image(frames) + self.encoder.encode_text(tokens)), dim=-1)

    def encode_target(self, frames, tokens=None):
        if tokens is not None:
            _Probe.target_captions.append(tokens.ids.clone())
        return F.normalize(self.encoder.encode_image(frames), dim=-1)

    def losses(self, batch):
        _Probe.seen_batches.append({k: batch[k] for k in ("target_caption", "target_id", "extra", "size")})
        query = self.encode_query(batch["reference"], batch["tokens"])
        target = self.encode_target(batch["target"], batch["target_caption"])
        return {"contrastive": self.contrastive(query, target)}

    def after_step(self, step):
        _Probe.steps.append(step)


@pytest.fixture(autouse=True)
def _probe_registered():
    """The probe method exists only while this module's tests run (no other test sees it)."""
    register_method("test_probe")(_Probe)
    yield
    unregister_method("test_probe")


def test_a_method_owns_its_batches_and_hooks(synth_root, tmp_path):
    _Probe.seen_batches.clear()
    _Probe.steps.clear()
    overrides = [f"data.root={synth_root}", f"output_dir={tmp_path}", *SMALL, "method.name=test_probe"]
    overrides += ["method.config=null", "train.max_steps=3", "train.eval_every=3", "train.save_every=3"]
    cfg = load_config(CONFIG, [*overrides, "train.num_workers=0"])
    train(cfg, progress=False)
    assert len(_Probe.seen_batches) == 3 and _Probe.steps == [1, 2, 3]
    first = _Probe.seen_batches[0]
    assert first["target_caption"].ids.shape[0] == first["size"] == 8
    assert all(isinstance(e, dict) and "family" in e for e in first["extra"])


def test_evaluation_gives_targets_their_captions(synth_root):
    from composir.encoders import build_encoder
    from composir.methods import build_method

    bench = load_benchmark("synthetic", synth_root, "val")
    bench.queries = bench.queries[:6]
    for item in bench.gallery:
        item.caption = f"caption of {item.id}"
    torch.manual_seed(0)
    method = build_method("test_probe", build_encoder("tiny", config={"width": 32, "embed_dim": 16, "heads": 2}))
    _Probe.target_captions.clear()
    evaluate(method, bench, batch_size=64, num_frames=1, progress=False)
    seen = torch.cat(_Probe.target_captions)
    expected = method.encoder.tokenize([g.caption for g in bench.gallery]).ids
    assert torch.equal(seen, expected)


@pytest.mark.parametrize("name", ["cirr", "synthetic", "fashioniq-dress", "circo", "webvid-covr"])
def test_protocols_are_data_and_report_what_they_name(name):
    protocol = protocol_of(name)
    assert protocol is PROTOCOLS["fashioniq" if name.startswith("fashioniq") else name]
    from composir.data.records import Triplet

    queries = [
        Triplet("q0", "r", "t", ["a", "b"], subset_ids=["a", "c", "r"], extra={"target_img_id": "a"}),
        Triplet("q1", "r", "t", ["c"], subset_ids=["a", "c", "r"], extra={"target_img_id": "c"}),
    ]
    ranked = [["b", "a", "c"], ["a", "c", "b"]]
    out = score(protocol, queries, ranked, [["a", "c"], ["a", "c"]])
    assert list(out) == protocol.metric_names()
    if name == "circo":  # R@K on target_img_id only; AP over both ground truths of q0
        assert out["R@5"] == 100.0 and out["mAP@5"] == pytest.approx(100 * (1.0 + 0.5) / 2)
    else:
        assert out["R@1"] == 50.0  # q0's "b" is a ground truth, q1's "a" is not


def test_fashioniq_training_texts_come_from_the_reader(realdata):
    bench = load_benchmark("fashioniq-dress", realdata / "fashioniq", "val")
    q = bench.queries[0]
    assert q.train_texts == [
        "Is shiny and silver with shorter sleeves and fit and flare",
        "Fit and flare and is shiny and silver with shorter sleeves",
    ]
