"""Bad input on the command line: one line naming the key or file and what was wrong, before any
work starts (no run folder written, no training), never a traceback."""

from __future__ import annotations

import json

import pytest

from composir.cli import main
from composir.data import load_benchmark
from composir.errors import AnnotationError
from helpers import CONFIG, SMALL


def _one_line_error(capsys, *fragments: str) -> str:
    printed = capsys.readouterr().err
    assert "Traceback" not in printed, printed
    # Only the progress bar (redrawn with \r) may come before the one error line.
    lines = [line for line in printed.replace("\r", "\n").splitlines() if line.strip()]
    assert not lines[-1].startswith("train:"), printed
    err = lines[-1]
    assert err.startswith("error:") and [ln for ln in lines if not ln.startswith("train:")] == [err], printed
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.root=", ["data.root", "expected a string, got None"]),
        ("data.root=''", ["data.root", "must name"]),
        ("train.batch_size=0", ["train.batch_size", "at least 1, got 0"]),
        ("train.batch_size=-4", ["train.batch_size", "at least 1, got -4"]),
        ("train.max_steps=null", ["train.max_steps", "expected an integer, got None"]),
        ("train.max_steps=-5", ["train.max_steps", "at least 1, got -5"]),
        ("train.lr=null", ["train.lr", "expected a number"]),
        ("train.lr=0", ["train.lr", "positive"]),
        ("encoder.name=nope", ["encoder.name", "unknown encoder 'nope'"]),
        ("encoder.config.bogus=1", ["encoder.config", "bogus"]),
        ("method.config.projection_dim=abc", ["method.config.projection_dim", "expected an integer, got 'abc'"]),
        ("data.augment=heavy", ["data.augment", "unknown 'heavy'"]),
        ("train.device=tpu", ["train.device", "'tpu'"]),
        ("train.device=cuda", ["train.device", "no usable CUDA GPU"]),
        ("data.val_splits=[]", ["data.val_splits", "at least one split"]),
        ("data.val_splits=val", ["data.val_splits", "expected a list of a string, got 'val'"]),
        ("data.val_splits=[nosuchsplit]", ["cap.rc2.nosuchsplit.json", "not found"]),
        ("train.eval_metric=bogus", ["train.eval_metric", "'bogus'", "Rsubset@1"]),
        ("data.benchmark=foo", ["data.benchmark", "unknown benchmark 'foo'"]),
        ("train.amp=fp8", ["train.amp", "'fp8'"]),
        ("train.init_from=.", ["train.init_from", "neither a checkpoint folder nor a run folder"]),
        ("data.num_frames=1000000", ["data.num_frames", "at most 256"]),
    ],
)
def test_bad_training_settings_stop_before_any_work(synth_root, tmp_path, capsys, override, fragments):
    run = tmp_path / "run"
    argv = ["train", "--config", str(CONFIG), "--out", str(run), "--set", f"data.root={synth_root}", *SMALL, override]
    assert main(argv) == 2
    _one_line_error(capsys, *fragments)
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--benchmark", "foo"], ["unknown benchmark 'foo'"]),
        (["--benchmark", "fashioniq-hat"], ["unknown benchmark 'fashioniq-hat'"]),
        (["--split", "val-foo"], ["unknown synthetic family 'foo'"]),
        (["--split", "nope"], ["cap.rc2.nope.json", "not found"]),
        (["--run", "/nonexistent"], ["/nonexistent", "not a training run folder"]),
        (["--device", "tpu"], ["--device", "'tpu'"]),
    ],
)
def test_bad_evaluation_arguments(synth_root, tiny_run, capsys, args, fragments):
    argv = ["eval", "--benchmark", "synthetic", "--root", str(synth_root), "--split", "val", "--run", str(tiny_run)]
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == 2
    _one_line_error(capsys, *fragments)


@pytest.mark.parametrize("k", ["0", "-3", "two"])
def test_search_k_must_be_a_positive_integer(searcher, capsys, k):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(searcher.index.root), "--text", "x", "--k", k])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --k" in err and "Traceback" not in err


def test_deeply_nested_json_is_an_annotation_error(tmp_path):
    root = tmp_path / "cirr"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "captions" / "cap.rc2.val.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "image_splits" / "split.rc2.val.json").write_text("{}")
    with pytest.raises(AnnotationError, match=r"cap\.rc2\.val\.json: JSON nested too deeply"):
        load_benchmark("cirr", root, "val")


def test_ctrl_c_in_training_says_where_it_stopped_and_how_to_resume(synth_root, tmp_path, capsys, monkeypatch):
    import composir.train.loop as loop

    calls = []
    real = loop._log_window

    def interrupt_on_the_third_log(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(loop, "_log_window", interrupt_on_the_third_log)
    run = tmp_path / "run"
    argv = ["train", "--config", str(CONFIG), "--out", str(run), "--set", f"data.root={synth_root}", *SMALL]
    argv.append("train.num_workers=0")
    assert main(argv) == 130
    err = _one_line_error(capsys, "interrupted at step 6 of 12", "last checkpoint is step-0000004", "resume")
    assert str(run) in err
    monkeypatch.setattr(loop, "_log_window", real)
    assert main(argv) == 0  # and it does resume
    assert "finished at step 12" in capsys.readouterr().out
    assert json.loads((run / "checkpoints" / "step-0000012" / "trainer_state.json").read_text())["step"] == 12


def test_missing_media_are_counted_before_any_work(synth_root, tiny_run, tmp_path, capsys):
    import shutil

    root = tmp_path / "partial"
    shutil.copytree(synth_root, root)
    gone = sorted((root / "val").glob("*.png"))[:3] + sorted((root / "train").glob("*.png"))[:2]
    for path in gone:
        path.unlink()
    evaluate = ["eval", "--benchmark", "synthetic", "--root", str(root), "--split", "val", "--run", str(tiny_run)]
    assert main(evaluate) == 2
    err = _one_line_error(capsys, "synthetic/val: 3 of", "media files are missing", gone[0].name, "--allow-missing")
    assert str(root) in err
    out = tmp_path / "metrics.json"
    assert main([*evaluate, "--allow-missing", "--json", str(out)]) == 0  # skipped and listed, as before
    capsys.readouterr()
    skipped = {s["id"] for s in json.loads(out.read_text())["skipped_media"]}
    assert {p.stem for p in gone[:3]} <= {s.split()[-1] for s in skipped} | skipped

    run = tmp_path / "run"
    train = ["train", "--config", str(CONFIG), "--out", str(run), "--set", f"data.root={root}", *SMALL]
    assert main(train) == 2
    _one_line_error(capsys, "synthetic/train: 2 of", "data.allow_missing=true")
    assert not (run / "config.yaml").exists()  # stopped before the run folder was made


def test_repeated_set_options_all_apply_and_out_is_a_path_not_yaml(synth_root, tmp_path):
    """``--set a=1 --set b=2`` applies both (the second used to replace the first), and an --out path
    with YAML syntax in it (": ", braces) is that folder, not a mapping."""
    run = tmp_path / "run {x: 1}"
    argv = ["train", "--config", str(CONFIG), "--out", str(run), "--set", f"data.root={synth_root}", *SMALL,
            "--set", "train.max_steps=2", "--set", "train.eval_every=2"]  # fmt: skip
    assert main(argv) == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["output_dir"] == str(run) and saved["data"]["root"] == str(synth_root)
    assert saved["train"]["max_steps"] == 2 and saved["train"]["eval_every"] == 2
