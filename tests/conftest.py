from __future__ import annotations

from pathlib import Path

import pytest

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
