"""Training: exact resume after SIGKILL, DDP with 2 CPU processes, config errors, checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from composir.errors import ConfigError
from composir.train import load_config, load_run
from composir.train.metrics_log import MetricsLog
from helpers import CONFIG, SMALL, torchrun


def _cmd(root: Path, out: Path, *extra: str, launcher: tuple[str, ...] = (sys.executable,)) -> list[str]:
    """`composir train` on the small set-up, run by ``launcher`` (the interpreter, or torchrun)."""
    return [
        *launcher,
        "-m",
        "composir.cli",
        "train",
        "--config",
        str(CONFIG),
        "--out",
        str(out),
        "--set",
        f"data.root={root}",
        *SMALL,
        *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def _rows(run: Path) -> list[tuple]:
    return [
        (r["step"], r["split"], r["metric"], r["value"])
        for r in MetricsLog(run / "metrics.csv").rows()
        if r["metric"] not in ("triplets_per_s", "data_fraction")
    ]


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(synth_root, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(_cmd(synth_root, straight, "train.num_workers=0"), check=True, env=ENV, capture_output=True)

    killed = tmp_path / "killed"
    # The interrupted run loads data with 2 worker processes: the order must not depend on it.
    proc = subprocess.Popen(  # its own process group: the kill takes its data-loader workers too
        _cmd(synth_root, killed, "train.num_workers=2"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pointer = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (pointer.is_file() and pointer.read_text().strip() >= "step-0000006"):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = pointer.read_text().strip()
    assert "step-0000006" <= at_kill < "step-0000012", f"kill landed at {at_kill}"
    subprocess.run(_cmd(synth_root, killed, "train.num_workers=2"), check=True, env=ENV, capture_output=True)

    a, b = _final_state(straight), _final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"weights differ at {k}")
    rows_a, rows_b = _rows(straight), _rows(killed)
    assert [r[:3] for r in rows_a] == [r[:3] for r in rows_b]  # no duplicated or missing log rows
    for ra, rb in zip(rows_a, rows_b):
        assert float(ra[3]) == pytest.approx(float(rb[3]), rel=1e-4, abs=1e-5), ra
    assert (killed / "training.png").stat().st_size > 1000
    _, cfg = load_run(killed)
    assert cfg.method.name == "combiner"


def test_a_resume_between_two_log_steps_logs_the_same_losses(synth_root, tmp_path):
    """A checkpoint that falls inside a logging window (saved every 3 steps, logged every 2): the
    window's sums up to the checkpoint are restored with it, so the resumed run logs what the
    uninterrupted one did."""
    from composir.train import train

    def config(out: Path):
        steps = ["train.max_steps=8", "train.save_every=3", "train.log_every=2", "train.eval_every=100"]
        return load_config(
            CONFIG, [f"data.root={synth_root}", *SMALL, *steps, "train.num_workers=0", f"output_dir={out}"]
        )

    train(config(tmp_path / "straight"), progress=False)
    train(config(tmp_path / "resumed"), progress=False, stop_after=4)  # checkpoint at 3, log row at 4 dropped
    train(config(tmp_path / "resumed"), progress=False)
    losses = {}
    for name in ("straight", "resumed"):
        rows = MetricsLog(tmp_path / name / "metrics.csv").rows()
        timing = ("triplets_per_s", "data_fraction")
        losses[name] = [
            (r["step"], r["metric"], float(r["value"]))
            for r in rows
            if r["split"] == "train" and r["metric"] not in timing
        ]
    assert [row[:2] for row in losses["straight"]] == [row[:2] for row in losses["resumed"]]
    for a, b in zip(losses["straight"], losses["resumed"]):
        assert a[2] == pytest.approx(b[2], rel=1e-5, abs=1e-6), (a, b)


def test_the_encoder_can_be_held_still_for_the_first_steps(synth_root, tmp_path):
    """``train.encoder_frozen_steps``: the method's own modules train from the first step while
    the encoder's weights stay as built; once the steps are past, the encoder trains too."""
    from composir.runs import build_from_config
    from composir.train import train

    def encoder_moved(frozen: int) -> tuple[bool, bool]:
        out = tmp_path / f"frozen{frozen}"
        steps = [
            "train.max_steps=3",
            "train.save_every=3",
            "train.eval_every=100",
            f"train.encoder_frozen_steps={frozen}",
        ]
        cfg = load_config(
            CONFIG, [f"data.root={synth_root}", *SMALL, *steps, "train.num_workers=0", f"output_dir={out}"]
        )
        start = build_from_config(cfg).state_dict()
        train(cfg, progress=False)
        end = load_file(str(out / "checkpoints" / "step-0000003" / "model.safetensors"))
        moved = {k: not torch.equal(start[k], v) for k, v in end.items() if k in start}
        return (any(m for k, m in moved.items() if k.startswith("encoder.")),
                any(m for k, m in moved.items() if not k.startswith("encoder.")))  # fmt: skip

    assert encoder_moved(3) == (False, True)
    assert encoder_moved(2) == (True, True)


@pytest.mark.slow
def test_ddp_two_cpu_processes(synth_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = _cmd(
        synth_root,
        out,
        "train.max_steps=4",
        "train.eval_every=4",
        "train.save_every=4",
        "train.num_workers=0",
        launcher=torchrun(2, 29517),
    )
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = _final_state(out)
    assert all(torch.isfinite(v).all() for v in state.values())
    losses = [float(r["value"]) for r in MetricsLog(out / "metrics.csv").rows() if r["metric"] == "loss"]
    assert losses and all(x == x for x in losses)
    evals = [r for r in MetricsLog(out / "metrics.csv").rows() if r["split"] == "val" and r["metric"] == "R@1"]
    assert len(evals) == 1  # only rank 0 evaluates and logs


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train: unknown key\(s\) \['max_stepz'\]"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    cfg = load_config(CONFIG, ["train.max_steps=7", "method.config={dropout: 0.0}"])
    # Nested overrides merge into the file's mapping; null replaces it.
    assert cfg.train.max_steps == 7 and cfg.method.config["dropout"] == 0.0
    assert cfg.method.config["projection_dim"] == 256
    assert load_config(CONFIG, ["method.config=null"]).method.config == {}
    # Overrides apply in order: null then a mapping gives just that mapping.
    assert load_config(CONFIG, ["method.config=null", "method.config={dropout: 0.2}"]).method.config == {"dropout": 0.2}
    # YAML 1.1 reads 1e-3 as a string; a float field takes it as a number.
    assert load_config(CONFIG, ["train.lr=1e-3"]).train.lr == 0.001
    assert load_config(CONFIG, ["train.encoder_lr=1e-5"]).train.encoder_lr == 1e-5
    with pytest.raises(ConfigError, match=r"train.max_steps: expected an integer, got 'many'"):
        load_config(CONFIG, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(CONFIG, ["data.group_by_set=3"])


def test_unknown_method_config_key():
    from composir.encoders import build_encoder
    from composir.methods import build_method

    with pytest.raises(ConfigError, match=r"method.config: unknown key\(s\) \['projection'\]"):
        build_method("combiner", build_encoder("tiny"), {"projection": 3})


def test_init_from_another_method_run(synth_root, tmp_path):
    """A fresh IMAGINE run starts from a Q-Former-fusion run's encoder; frozen weights it took are kept."""
    from composir.runs import build_from_config
    from composir.runs.checkpoint import init_weights_from
    from composir.train import train

    tiny = SMALL[0].replace("vision_layers: 1", "vision_layers: 1, vision: vit")
    common = [f"data.root={synth_root}", tiny, *SMALL[3:], "train.max_steps=2", "data.max_val_queries=8"]
    source = tmp_path / "fusion"
    train(
        load_config(CONFIG, [*common, "method.name=qformer_fusion", "method.config=null", f"output_dir={source}"]),
        progress=False,
    )
    source_state = load_file(str(source / "checkpoints" / "best" / "model.safetensors"))

    imagine = [*common, "method.name=imagine", "method.config=null", "method.config={hidden_dim: 16, top_k: 2}"]
    cfg = load_config(CONFIG, [*imagine, f"output_dir={tmp_path / 'imagine'}", f"train.init_from={source}"])
    method = build_from_config(cfg)
    loaded = init_weights_from(method, source)
    state = method.state_dict()
    assert any(k.startswith("encoder.") for k in loaded)
    for name in loaded:
        assert torch.equal(state[name], source_state[name]), name
    # Libraries the source had none of start afresh from the query tokens it brought (normalised:
    # the default library lives on the unit sphere) and are placed on the first features seen.
    queries = torch.nn.functional.normalize(source_state["encoder.model.query_tokens"][0], dim=-1)
    for library in (method.visual_library, method.text_library):
        torch.testing.assert_close(library.prototypes, queries)
        assert int(library.state) == 0

    # Frozen vision taken from the source is saved, so load_run gives it back (not a fresh tower).
    frozen = load_config(
        CONFIG,
        [*imagine, "encoder.freeze_vision=true", f"output_dir={tmp_path / 'frozen'}", f"train.init_from={source}"],
    )
    # Rows of an earlier attempt killed before its first checkpoint do not survive a fresh start.
    (tmp_path / "frozen").mkdir()
    (tmp_path / "frozen" / "metrics.csv").write_text("step,split,metric,value\n999,train,loss,1.0\n")
    train(frozen, progress=False)
    assert max(int(r["step"]) for r in MetricsLog(tmp_path / "frozen" / "metrics.csv").rows()) == 2
    reloaded, _ = load_run(tmp_path / "frozen")
    vision = "encoder.model.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(reloaded.state_dict()[vision], source_state[vision])

    # Another architecture is refused with the weight's name.
    wider = load_config(CONFIG, [*imagine, SMALL[0].replace("width: 32", "width: 64"), f"output_dir={tmp_path / 'w'}"])
    with pytest.raises(ConfigError, match=r"init_from .*another shape.*encoder\."):
        init_weights_from(build_from_config(wider), source)
    with pytest.raises(ConfigError, match="neither a checkpoint folder nor a run folder"):
        init_weights_from(method, tmp_path / "nowhere")


def test_leftovers_of_killed_checkpoint_writes_are_removed_on_resume(synth_root, tmp_path):
    from composir.train import train

    out = tmp_path / "run"
    overrides = [f"data.root={synth_root}", f"output_dir={out}", *SMALL, "train.num_workers=0"]
    train(load_config(CONFIG, overrides), progress=False, stop_after=4)
    checkpoints = out / "checkpoints"
    leftovers = [
        checkpoints / ".step-0000006.k2j3h4",  # a checkpoint folder being written when killed
        checkpoints / ".best.x8y9",
        checkpoints / ".step-0000004.old",
        checkpoints / ".latest.abc.tmp",
        out / ".config.yaml.q1w2.tmp",
        out / ".training.png.e3r4.tmp",
    ]
    for path in leftovers:
        if path.suffix == ".tmp":
            path.write_bytes(b"\0" * 1000)
        else:
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"\0" * 1000)
    keep = out / "notes.txt"
    keep.write_text("the user's own file")
    summary = train(load_config(CONFIG, overrides), progress=False)
    assert summary["step"] == 12
    assert [p for p in leftovers if p.exists()] == []
    assert keep.read_text() == "the user's own file"


def test_a_non_finite_loss_stops_the_run_with_one_clear_error(synth_root, tmp_path, monkeypatch, capsys):
    """A loss that turns NaN stops training at that step, naming the terms and the last checkpoint;
    the checkpoints written before it stay."""
    from composir.cli import main
    from composir.methods.combiner import Combiner

    real = Combiner.losses
    calls = {"n": 0}

    def losses(self, batch):
        calls["n"] += 1
        out = real(self, batch)
        return {k: v * float("nan") for k, v in out.items()} if calls["n"] > 4 else out

    monkeypatch.setattr(Combiner, "losses", losses)
    out = tmp_path / "run"
    sets = [f"data.root={synth_root}", f"output_dir={out}", *SMALL, "train.num_workers=0"]
    code = main(["train", "--config", str(CONFIG), "--set", *sets])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: step 5: the loss is not a finite number (contrastive=nan")
    assert "step-0000004" in err[-1]
    assert (out / "checkpoints" / "step-0000004" / "model.safetensors").is_file()
    assert not (out / "checkpoints" / "step-0000006").exists()
