"""`composir demo` end to end at a small size: every stage runs and leaves its outputs, and a demo
interrupted during training and run again gives exactly what an uninterrupted one gives."""

from __future__ import annotations

import json
import re

import yaml

import composir.demo as demo
import composir.train.loop as loop
from composir.cli import main

ARGS = ["demo", "--size", "400", "--steps", "4"]


def _searches(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if re.match(r"\s+\[(explicit|implicit|multi)\]", line)]


def test_demo_small_and_its_resume_equals_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    # The demo's config with a checkpoint every step, so an interruption has one to resume from.
    config = yaml.safe_load(demo.CONFIG.read_text())
    config["train"].update(save_every=1, log_every=1)
    patched = tmp_path / "demo.yaml"
    patched.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(demo, "CONFIG", patched)

    straight = tmp_path / "straight"
    assert main([*ARGS, "--out", str(straight)]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "composir serve --index"):
        assert stage in printed
    metrics = json.loads((straight / "test_metrics.json").read_text())
    assert metrics["benchmark"] == "synthetic" and set(metrics["per_family"]) == {"explicit", "multi", "implicit"}
    assert (straight / "run" / "training.png").is_file() and (straight / "contact_sheet.png").is_file()
    assert (straight / "index" / "CURRENT").is_file()

    # Ctrl-C after step 2's log line, i.e. inside step 3's work: step 2 is the last checkpoint.
    real = loop._log_window

    def interrupt_at_step_3(metrics_log, state, *rest):
        if state["step"] == 3:
            raise KeyboardInterrupt
        return real(metrics_log, state, *rest)

    monkeypatch.setattr(loop, "_log_window", interrupt_at_step_3)
    resumed = tmp_path / "resumed"
    assert main([*ARGS, "--out", str(resumed)]) == 130
    assert "interrupted at step 3 of 4; the last checkpoint is step-0000002" in capsys.readouterr().err
    assert not (resumed / "test_metrics.json").exists()
    monkeypatch.setattr(loop, "_log_window", real)
    assert main([*ARGS, "--out", str(resumed)]) == 0
    printed_resumed = capsys.readouterr().out
    assert json.loads((resumed / "test_metrics.json").read_text()) == metrics
    assert _searches(printed_resumed) == _searches(printed) and len(_searches(printed)) == 3


def test_composir_starts_openmp_with_a_passive_wait_policy():
    """Spinning OpenMP threads made training 6-10x slower on a busy 2-core machine; composir sets
    PASSIVE before torch loads libgomp, and keeps a policy the user chose."""
    import os
    import subprocess
    import sys

    code = "import composir, os, torch; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
