"""Every field of every registered method's config, fed values that make no sense: each is one
``error:`` line before anything is built or written, or a value the method really trains with."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from composir.cli import main
from composir.encoders import build_encoder
from composir.errors import ConfigError
from composir.methods import available_methods, build_method
from composir.methods.registry import method_class, resolved_config
from helpers import CONFIG, method_batch

BAD = [0, -1, 1e30, math.nan, math.inf, "", None, [1]]
TINY = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4}


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf"
    return repr(value) if not isinstance(value, str) else '""'


@pytest.mark.parametrize("name", available_methods())
def test_every_config_field_refuses_nonsense_or_trains_with_it(name, tmp_path, capsys):
    checked = 0
    for field in dataclasses.fields(method_class(name).config_class):
        for value in BAD:
            try:
                resolved_config(name, {field.name: value})
            except ConfigError as exc:
                assert "\n" not in str(exc), str(exc)
                out = tmp_path / f"{field.name}-{checked}"
                code = main(["train", "--config", str(CONFIG), "--out", str(out), "--set", f"method.name={name}",
                             "method.config=null", f"method.config={{{field.name}: {_yaml(value)}}}"])  # fmt: skip
                err = capsys.readouterr().err
                assert code == 2 and "Traceback" not in err, (field.name, value, err)
                assert [line for line in err.splitlines() if line.startswith("error:")], err
                assert not out.exists(), f"{field.name}={value!r}: a run folder was written"
            else:  # accepted: the method builds and trains a step with it
                torch.manual_seed(0)
                encoder = build_encoder("tiny", config=TINY)
                method = build_method(name, encoder, {field.name: value}).train()
                total = sum(method(method_batch(method, encoder)).values())
                assert torch.isfinite(total), f"{name}.{field.name}={value!r}: loss {float(total)}"
                total.backward()
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize(
    ("contents", "message"),
    [("", "the config is empty"), ("- a\n- b\n", "expected a mapping of sections"),
     (b"data:\n  root: caf\xe9\n", "not UTF-8"), ("data: [\n", "not valid YAML")],
)  # fmt: skip
def test_a_config_file_that_is_not_a_config_is_one_line(tmp_path, capsys, contents, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [("train=null", "a section cannot be null"), ("method=null", "a section cannot be null"),
     ("train.seed=1e30", "train.seed"), ("train.lr=.nan", "train.lr"), ("data.root=[", "not valid YAML"),
     ("encoder.pretrained=/nowhere/w.safetensors", "does not exist"), ("data.chains=/nowhere.jsonl", "does not exist")],
)  # fmt: skip
def test_overrides_that_make_no_sense_are_one_line(tmp_path, capsys, override, message):
    assert main(["train", "--config", str(CONFIG), "--out", str(tmp_path / "run"), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
