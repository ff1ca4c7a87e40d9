from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import CONFIG, SMALL

# Copies of the published annotation files (CIRCO: slices), with their licences: tests/data/realdata/README.md.
REALDATA = Path(__file__).resolve().parent / "data" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    return REALDATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic image benchmark shared by the tests that need pixels."""
    from composir.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(out=root, seed=3, size=400, workers=1), progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(synth_root, tmp_path_factory) -> Path:
    """A 2-step run of the tiny set-up (a model to index and search with)."""
    from composir.train import load_config, train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        CONFIG,
        [
            f"data.root={synth_root}",
            f"output_dir={out}",
            *SMALL,
            "train.max_steps=2",
            "train.eval_every=2",
            "train.save_every=2",
            "train.num_workers=0",
        ],
    )
    train(cfg, resume=False, progress=False)
    return out


@pytest.fixture(scope="session")
def searcher(synth_root, tiny_run, tmp_path_factory):
    """A Searcher over an index of 24 synthetic val images (read-only: tests must not change it)."""
    from composir.cli import main
    from composir.search import Searcher

    media = tmp_path_factory.mktemp("media")
    for p in sorted((synth_root / "val").glob("*.png"))[:24]:
        shutil.copy(p, media / p.name)
    out = tmp_path_factory.mktemp("index")
    assert main(["index", "--run", str(tiny_run), "--media", str(media), "--out", str(out)]) == 0
    return Searcher(out)
