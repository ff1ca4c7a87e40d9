"""Pictures of results: the query grid (ground truth framed green, explanations) and recall curves."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from composir.cli import main
from composir.data import load_benchmark
from composir.eval.evaluate import EvalResult
from composir.eval.pictures import GREEN, render_grid, render_recall_curves, sample_queries


def _green_pixels(path) -> int:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    target = np.array([int(GREEN[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(-1) < 30).sum())


def _result(bench) -> EvalResult:
    """Each of 4 queries with its target at rank 1, then other gallery images."""
    queries = bench.queries[:4]
    others = [g.id for g in bench.gallery if all(g.id not in q.target_ids for q in queries)]
    ranked = [[q.target_ids[0], *others[:5]] for q in queries]
    return EvalResult(bench.name, bench.split, {}, [q.query_id for q in queries], ranked, None)


def test_the_grid_frames_the_ground_truth_and_shows_explanations(synth_root, tmp_path):
    bench = load_benchmark("synthetic", synth_root, "val")
    asked = []

    def explain(positions):
        asked.append(positions)
        return [{"chain": {"caption": "a red circle", "conclusion": "a blue circle"}}] * len(positions)

    result = _result(bench)
    hit = render_grid(bench, result, tmp_path / "hit.png", n=3, k=4, explain=explain)
    for query in bench.queries[:4]:  # the same pictures, but the targets are now other images
        query.target_ids = ["not-ranked"]
    miss = render_grid(bench, result, tmp_path / "miss.png", n=3, k=4, explain=explain)
    assert asked[0] == sample_queries(result, 3) and len(asked[0]) == 3
    assert _green_pixels(hit) - _green_pixels(miss) > 1000  # three green frames (miss: only its notes)
    assert Image.open(hit).size == Image.open(miss).size


def test_recall_curves_and_the_eval_command(synth_root, tiny_run, tmp_path, capsys):
    path = render_recall_curves({"R@1": 10.0, "R@10": 50.0}, {"explicit": {"R@1": 20.0, "R@10": 60.0}},
                                tmp_path / "curves.png")  # fmt: skip
    assert Image.open(path).size[0] > 300
    grid = tmp_path / "out" / "grid.png"
    argv = ["eval", "--benchmark", "synthetic", "--root", str(synth_root), "--split", "val", "--run", str(tiny_run)]
    assert main([*argv, "--grid", str(grid), "--grid-queries", "3", "--grid-k", "3"]) == 0
    printed = capsys.readouterr().out
    assert grid.is_file() and (tmp_path / "out" / "grid-recall_at_k.png").is_file()  # named after its grid
    assert f"grid: {grid}" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--grid-queries", "100000"], "argument --grid-queries"), (["--json", "."], "is a folder")],
)
def test_grid_and_json_arguments_are_bounded(synth_root, tiny_run, tmp_path, capsys, extra, message):
    argv = ["eval", "--benchmark", "synthetic", "--root", str(synth_root), "--split", "val", "--run", str(tiny_run)]
    try:
        code = main([*argv, "--grid", str(tmp_path / "g.png"), *extra])
    except SystemExit as exit_:  # argparse's own refusal
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
