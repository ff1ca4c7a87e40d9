"""Data parallelism is exact: two processes give the loss and gradients of one process on the same
global batch (with negatives gathered across ranks); every trainable parameter gets a gradient
unless the method declares otherwise; training lowers the loss."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import CONFIG, SMALL, free_port, torchrun

SCRIPT = Path(__file__).with_name("ddp_gradients.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


def _run(out: Path, method: str, gather: bool, launcher: tuple[str, ...]) -> dict:
    cmd = [*launcher, str(SCRIPT), str(out), method, "1" if gather else "0"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["qformer_fusion", "combiner", "csmcir"])
def test_two_processes_equal_one_on_the_global_batch(tmp_path, method):
    one = _run(tmp_path / "one.pt", method, True, (sys.executable,))
    two = _run(tmp_path / "two.pt", method, True, torchrun(2, free_port()))
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    assert one["grads"].keys() == two["grads"].keys()
    for name, grad in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    # A memory bank is filled with every rank's targets (gathered): the same bank as one process's.
    assert one["bank"].keys() == two["bank"].keys()
    if method == "csmcir":
        assert int(one["bank"]["count"]) == 8
    for name, value in one["bank"].items():
        torch.testing.assert_close(two["bank"][name], value, rtol=1e-4, atol=1e-6, msg=f"bank {name}")
    # Without gathering, each rank contrasts within its half: another loss (the test can fail).
    local = _run(tmp_path / "local.pt", method, False, torchrun(2, free_port()))
    assert abs(float(local["loss"]) - float(one["loss"])) > 1e-3


def _unused_after_one_step(method_name: str, **config) -> list[str]:
    from composir.encoders import build_encoder
    from composir.methods import build_method

    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_gradients import SMALL as TINY
    from ddp_gradients import TEXTS

    torch.manual_seed(0)
    encoder = build_encoder("tiny", config=TINY)
    method = build_method(method_name, encoder, config).train()
    batch = {
        "reference": torch.randn(len(TEXTS), 1, 3, 64, 64),
        "target": torch.randn(len(TEXTS), 1, 3, 64, 64),
        "tokens": encoder.tokenize(TEXTS),
        "target_caption": encoder.tokenize(TEXTS[::-1]),
        "target_id": [f"t{i}" for i in range(len(TEXTS))],
        "reference_id": [f"r{i}" for i in range(len(TEXTS))],
    }
    sum(method(batch).values()).backward()
    unused = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    return unused if not method.ddp_find_unused_parameters else []


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("imagine", {"composition": "add"}),
        ("imagine", {"composition": "cross_attention"}),
        ("imagine", {"composition": "cross_attention", "schema_weight": 0.0}),
        ("imagine", {"composition": "none"}),
        ("imagine", {"schema_target": "concrete"}),
        ("imagine", {"use_sic": False}),
        ("csmcir", {"target_side": "image", "bank": "fifo"}),
        ("csmcir", {"shared": False, "bank": "none"}),
        ("csmcir", {"shared": False, "target_side": "image"}),
        ("context_cir", {"reference_negative": False, "cc_weight": 0.0}),
    ],
)
def test_every_ablation_switch_keeps_every_trainable_parameter_in_the_graph(method, config):
    # Each method's default config is covered for every registered method in test_registries.py.
    # DDP runs without find_unused_parameters unless the method declares it needs the search.
    assert _unused_after_one_step(method, **config) == []


def test_training_lowers_the_loss(synth_root, tmp_path):
    from composir.train import load_config, train
    from composir.train.metrics_log import MetricsLog

    out = tmp_path / "run"
    overrides = [f"data.root={synth_root}", f"output_dir={out}", *SMALL, "train.num_workers=0"]
    overrides += ["train.max_steps=60", "train.eval_every=60", "train.save_every=60", "train.log_every=5"]
    # 16 triplets seen 30 times: a model that learns fits them below chance (ln 8 = 2.08 for batches of 8).
    overrides += ["data.augment=none", "train.warmup_steps=5", "data.max_train_queries=16", "data.group_by_set=false"]
    overrides += ["train.lr=2e-3", "method.config={projection_dim: 32, hidden_dim: 64, dropout: 0.0}"]
    train(load_config(CONFIG, overrides), progress=False)
    losses = [float(r["value"]) for r in MetricsLog(out / "metrics.csv").rows() if r["metric"] == "loss"]
    assert len(losses) == 12
    chance = math.log(8)
    assert losses[0] > chance and sum(losses[-2:]) / 2 < 0.85 * chance, losses


@pytest.mark.slow
def test_a_batch_empty_on_one_rank_is_skipped_by_all(tmp_path):
    import json

    out = tmp_path / "answers.json"
    cmd = [*torchrun(2, free_port()), str(SCRIPT.with_name("ddp_skip.py")), str(out)]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Rank 0 had data every time, but skips the round where rank 1 had none (no hang, no desync).
    assert json.loads(out.read_text()) == [True, False, True]
