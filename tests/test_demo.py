"""`composir demo` end to end at a small size: every stage runs and leaves its outputs."""

from __future__ import annotations

import json

from composir.cli import main


def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "400", "--steps", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "composir serve --index"):
        assert stage in printed
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["benchmark"] == "synthetic" and set(metrics["per_family"]) == {"explicit", "multi", "implicit"}
    assert (out / "run" / "training.png").is_file() and (out / "contact_sheet.png").is_file()
    assert (out / "index" / "CURRENT").is_file()
    # Re-running resumes the finished run instead of training again.
    assert main(["demo", "--size", "400", "--steps", "4", "--out", str(out)]) == 0
