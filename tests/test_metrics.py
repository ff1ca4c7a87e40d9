"""Metrics against small cases computed by hand."""

from __future__ import annotations

import pytest

from composir.eval import metrics as M


def test_recall_at_k_hand_cases():
    ranked = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"], ["x", "y", "z"]]
    targets = [["a"], ["a"], ["a"], ["missing"]]  # the 4th target is not in the gallery: always a miss
    assert M.recall_at_k(ranked, targets, 1) == pytest.approx(25.0)
    assert M.recall_at_k(ranked, targets, 2) == pytest.approx(50.0)
    assert M.recall_at_k(ranked, targets, 3) == pytest.approx(75.0)
    assert M.recall_at_k(ranked, targets, 50) == pytest.approx(75.0)


def test_recall_several_ground_truths_counts_once():
    assert M.recall_at_k([["a", "b"]], [["a", "b"]], 2) == 100.0
    assert M.recall_at_k([["c", "b"]], [["a", "b"]], 1) == 0.0


def test_recall_subset_removes_reference_and_non_members():
    # Gallery ranking: ref first (must be dropped), a non-member, then members.
    ranked = [["ref", "other", "m2", "t", "m1"]]
    members = [["ref", "m1", "m2", "t"]]
    assert M.recall_subset_at_k(ranked, [["t"]], members, ["ref"], 1) == 0.0  # m2 ranks first
    assert M.recall_subset_at_k(ranked, [["t"]], members, ["ref"], 2) == 100.0


def test_average_precision_hand_case():
    # Hits at ranks 1 and 3 with 2 ground truths: (1/1 + 2/3) / min(5, 2).
    assert M.average_precision_at_k(["g1", "x", "g2", "y"], ["g1", "g2"], 5) == pytest.approx((1 + 2 / 3) / 2)
    # Five ground truths, K=2: denominator is min(K, |gt|) = 2.
    assert M.average_precision_at_k(["x", "g1"], ["g1", "g2", "g3", "g4", "g5"], 2) == pytest.approx(0.5 / 2)
    assert M.map_at_k([["g1"], ["x"]], [["g1"], ["g1"]], 5) == pytest.approx(50.0)


def test_cirr_averages_as_published():
    # IMAGINE's CIRR table: the mean of all seven numbers is 84.66.
    values = dict(
        zip(
            ["R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"],
            [52.25, 82.39, 90.34, 98.12, 80.14, 92.43, 96.92],
        )
    )
    assert round(M.mean_of(values, list(values)), 2) == 84.66


def test_cirr_avg_is_computed_from_its_own_recalls():
    # 4 queries: R@5 = 75 (three targets in the top 5), Rsubset@1 = 25 (one subset ranking starts
    # with its target): the two published averages follow from these, computed by cirr_metrics.
    ranked = [["t0"], ["x", "t1"], ["x", "x", "x", "x", "t2"], ["x"] * 6 + ["t3"]]
    subset = [["t0", "m"], ["m", "t1"], ["m", "t2"], ["m", "t3"]]
    targets = [["t0"], ["t1"], ["t2"], ["t3"]]
    members = [["t0", "m", "r"], ["t1", "m", "r"], ["t2", "m", "r"], ["t3", "m", "r"]]
    out = M.cirr_metrics(ranked, subset, targets, members, ["r"] * 4)
    assert (out["R@1"], out["R@5"], out["Rsubset@1"], out["Rsubset@2"]) == (25.0, 75.0, 25.0, 100.0)
    assert out["Avg(R@5,Rsubset@1)"] == 50.0
    assert out["Mean(all7)"] == pytest.approx((25 + 75 + 100 + 100 + 25 + 100 + 100) / 7)


def test_cirr_metrics_keys_are_named_apart():
    out = M.cirr_metrics([["t", "x"]], [["t"]], [["t"]], [["r", "t"]], ["r"])
    assert out["R@1"] == 100.0 and out["Rsubset@1"] == 100.0
    assert "Avg(R@5,Rsubset@1)" in out and "Mean(all7)" in out


def test_fashioniq_average():
    # IMAGINE: per-category means 52.39 / 61.61 / 63.27 -> 59.09.
    per = {
        "dress": {"R@10": 42.39, "R@50": 62.39},
        "shirt": {"R@10": 51.61, "R@50": 71.61},
        "toptee": {"R@10": 53.27, "R@50": 73.27},
    }
    out = M.fashioniq_metrics(per)
    assert round(out["Avg"], 2) == 59.09
    assert out["Avg R@10"] == pytest.approx((42.39 + 51.61 + 53.27) / 3)


def test_webvid_mean():
    ranked = [["t"] + ["x"] * 60]
    out = M.recall_metrics(ranked, [["t"]])
    assert out == {"R@1": 100.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0, "Mean": 100.0}
    vals = {"R@1": 63.51, "R@5": 87.26, "R@10": 92.72, "R@50": 99.03}
    assert round(M.mean_of(vals, list(vals)), 2) == 85.63


def test_circo_recall_uses_first_target():
    ranked = [["g2", "g1"]]
    out = M.circo_metrics(ranked, [["g1", "g2"]], ["g1"])
    assert out["R@5"] == 100.0
    assert out["mAP@5"] == pytest.approx(100.0)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 rankings but 1"):
        M.recall_at_k([["a"], ["b"]], [["a"]], 1)


def test_atomic_write_keeps_old_file_on_error_and_normal_permissions(tmp_path):
    import os

    from composir.utils.io import atomic_open, atomic_write_json

    path = tmp_path / "out.json"
    atomic_write_json(path, {"a": 1})
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)
    with pytest.raises(RuntimeError), atomic_open(path, "w") as handle:
        handle.write("partial")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == '{"a": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_average_precision_never_exceeds_one_and_divides_by_the_ground_truths_as_given():
    # A ranking that lists the target twice counts it once (it used to give 2.0).
    assert M.average_precision_at_k(["5", "5", "7"], ["5"], 5) == 1.0
    # The official denominator: min(k, len(gt_img_ids)) with the list as given.
    assert M.average_precision_at_k(["5", "9"], ["5", "5"], 5) == 0.5
    assert M.average_precision_at_k(["1", "5", "2", "7"], ["5", "7", "8"], 2) == pytest.approx((1 / 2) / 2)
