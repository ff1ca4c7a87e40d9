"""The claims board's statistics (per-query hits, paired two-level bootstrap, verdicts) and registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from composir.errors import ConfigError
from composir.experiments.verdicts import (
    BASELINE,
    check_precondition,
    contrast,
    difference,
    judge,
    judge_claim,
    query_hits,
    verdict,
)
from composir.methods.claims import (
    Claim,
    Engaged,
    Gain,
    HasRange,
    Headroom,
    LosesGain,
    Parity,
    RecoversGap,
    Retrieves,
    Shrinks,
    Variant,
    registered_claims,
)

REPO = Path(__file__).resolve().parents[1]


def _run(hits: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """One run's per-query hits: bucket name -> R@1 values (the buckets in that order)."""
    buckets = [b for b, values in hits.items() for _ in values]
    values = [v for vs in hits.values() for v in vs]
    r1 = np.asarray(values, dtype=float)
    return {"bucket": np.asarray(buckets, dtype=object), "R@1": r1, "Rsubset@1": r1}


def _coin(rng, n: int, p: float = 0.5) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def test_query_hits_average_to_the_evaluation_metrics(synth_root, tiny_run):
    from composir.data import load_benchmark
    from composir.eval.evaluate import evaluate
    from composir.train import load_run

    method, _ = load_run(tiny_run)
    bench = load_benchmark("synthetic", synth_root, "test")
    res = evaluate(method, bench, batch_size=64, num_frames=1, progress=False)
    hits = query_hits(bench, res)
    assert set(hits["bucket"]) == {"explicit", "multi", "implicit"}
    for family, metrics in res.per_family.items():
        rows = hits["bucket"] == family
        for name in ("R@1", "R@10", "R@50", "Rsubset@1"):
            assert 100 * hits[name][rows].mean() == pytest.approx(metrics[name]), (family, name)
    assert 0 < hits["R@50"].mean() < 1  # not a degenerate ranking


def test_contrast_is_paired_over_queries():
    """The variant wins 20 of 200 queries the baseline misses and changes nothing else: paired, the
    interval excludes 0 although both sit near 50% (unpaired, the interval would be about ±10)."""
    rng = np.random.default_rng(0)
    hits = {BASELINE: [], "v": []}
    for _ in range(3):
        base = _coin(rng, 200)
        better = base.copy()
        better[np.flatnonzero(base == 0)[:20]] = 1.0
        hits[BASELINE].append(_run({"a": base.tolist()}))
        hits["v"].append(_run({"a": better.tolist()}))
    c = difference(hits, "v", ("a",), "R@1")
    assert c.estimate == pytest.approx(10.0)
    assert 6.0 < c.low < 10.0 < c.high < 14.0


def test_contrast_resamples_seeds():
    """Each seed's difference is sharp (+20 or -20 on every query) but they disagree: the interval
    must include 0 (resampling queries alone would give two narrow, contradicting intervals)."""
    hits = {BASELINE: [], "v": []}
    for sign in (1, -1, 1, -1):
        base = np.zeros(100)
        base[:50] = 1.0
        other = base.copy()
        if sign > 0:
            other[50:70] = 1.0
        else:
            other[:20] = 0.0
        hits[BASELINE].append(_run({"a": base.tolist()}))
        hits["v"].append(_run({"a": other.tolist()}))
    c = difference(hits, "v", ("a",), "R@1")
    assert c.estimate == pytest.approx(0.0)
    assert c.low <= -15 and c.high >= 15


def test_contrast_weights_and_bucket_groups():
    base = _run({"a": [0, 0, 0, 0], "b": [1, 1, 1, 1]})
    var = _run({"a": [1, 1, 0, 0], "b": [1, 1, 1, 1]})
    hits = {BASELINE: [base], "v": [var]}
    # Gain on a (+50) minus gain on b (0); and a gain on a, b pooled (+25).
    terms = [("v", ("a",), 1.0), (BASELINE, ("a",), -1.0), ("v", ("b",), -1.0), (BASELINE, ("b",), 1.0)]
    assert contrast(hits, terms, "R@1").estimate == pytest.approx(50.0)
    assert difference(hits, "v", ("a", "b"), "R@1").estimate == pytest.approx(25.0)
    with pytest.raises(ValueError, match="no test queries"):
        difference(hits, "v", ("c",), "R@1")


def _gain_hits(gain: int, ablation_gain: int, n: int = 400, seeds: int = 3) -> dict:
    """Baseline at 30%; the variant and the ablation add hits on queries the baseline misses."""
    rng = np.random.default_rng(1)
    hits = {BASELINE: [], "v": [], "abl": []}
    for _ in range(seeds):
        base = np.zeros(n)
        base[rng.choice(n, int(0.3 * n), replace=False)] = 1
        misses = np.flatnonzero(base == 0)
        for name, g in (("v", gain), ("abl", ablation_gain)):
            runs = base.copy()
            runs[misses[: g * n // 100]] = 1
            hits[name].append(_run({"few": runs.tolist(), "many": base.tolist()}))
        hits[BASELINE].append(_run({"few": base.tolist(), "many": base.tolist()}))
    return hits


def test_judge_outcomes():
    big, none = _gain_hits(10, 0), _gain_hits(0, 0)
    gain = Gain("v", ("few",), "R@1", 4.0)
    assert judge(gain, big).outcome == "holds"
    assert judge(gain, none).outcome == "fails"
    assert judge(Gain("v", ("few",), "R@1", 10.5), big).outcome == "inconclusive"  # +10 measured, 10.5 claimed

    assert judge(Parity("v", ("many",), "R@1", 1.0), big).outcome == "holds"
    assert judge(Parity("v", ("few",), "R@1", 1.0), big).outcome == "fails"

    assert judge(Shrinks("v", ("few",), ("many",), "R@1"), big).outcome == "holds"
    assert judge(Shrinks("v", ("many",), ("few",), "R@1"), big).outcome == "fails"

    assert judge(LosesGain("abl", "v", ("few",), "R@1"), _gain_hits(10, 0)).outcome == "holds"
    assert judge(LosesGain("abl", "v", ("few",), "R@1"), _gain_hits(10, 10)).outcome == "fails"
    assert judge(LosesGain("abl", "v", ("few",), "R@1"), _gain_hits(10, 8)).outcome == "fails"


def _gap_hits(gain: int, n: int = 400) -> dict:
    """The baseline at 30 % on ``few`` and 60 % on ``many`` (a 30-point gap); ``v`` adds ``gain``
    points on ``few``. Three seeds."""
    rng = np.random.default_rng(1)
    hits: dict[str, list] = {BASELINE: [], "v": []}
    for _ in range(3):
        few, many = np.zeros(n), np.zeros(n)
        few[rng.choice(n, int(0.3 * n), replace=False)] = 1
        many[rng.choice(n, int(0.6 * n), replace=False)] = 1
        better = few.copy()
        better[np.flatnonzero(few == 0)[: gain * n // 100]] = 1
        hits[BASELINE].append(_run({"few": few.tolist(), "many": many.tolist()}))
        hits["v"].append(_run({"few": better.tolist(), "many": many.tolist()}))
    return hits


def test_recovers_gap_is_relative_to_the_baseline_shot_curve():
    check = RecoversGap("v", ("few",), ("many",), "R@1", 0.25)
    # +15 of a 30-point gap (50 %) holds; +2 (7 %) fails; a gap-sized claim of +7.5 is the threshold.
    assert judge(check, _gap_hits(15)).outcome == "holds"
    assert judge(check, _gap_hits(2)).outcome == "fails"
    result = judge(check, _gap_hits(15))
    assert result.contrast.estimate == pytest.approx(15 - 0.25 * 30, abs=0.5)
    assert "recovers ≥ 25% of the baseline's R@1 gap from few to many" in result.text


def test_verdict():
    class R:
        def __init__(self, outcome):
            self.outcome = outcome

    assert verdict([R("holds"), R("holds")]) == "reproduced"
    assert verdict([R("holds"), R("fails"), R("inconclusive")]) == "not reproduced"
    assert verdict([R("holds"), R("inconclusive")]) == "inconclusive"


def _with_top1(hits, name: str, changed: float):
    """``name``'s runs given top-1 ids that differ from the baseline's on a ``changed`` fraction."""
    for base, run in zip(hits[BASELINE], hits[name]):
        n = len(base["bucket"])
        base["top1"] = np.asarray([f"item{i}" for i in range(n)], dtype=object)
        run["top1"] = np.asarray([f"item{i}" if i >= changed * n else "other" for i in range(n)], dtype=object)
    return hits


def test_a_failed_precondition_makes_the_verdict_untestable_never_not_reproduced():
    """The baseline's few -> many range is 0 in these runs: a claimed +4 cannot be told from the
    set-up, so neither "not reproduced" (no gain: checks fail) nor "reproduced" (+10) is said."""
    for gain, checks_say in ((0, "not reproduced"), (10, "reproduced")):
        hits = _gain_hits(gain, 0)
        claim = Claim("X", "v helps", Variant("base"), {"v": Variant("m"), "abl": Variant("m", {"off": 1})},
                      (Gain("v", ("few",), "R@1", 4.0),))  # fmt: skip
        assert judge_claim(claim, hits)[0] == checks_say  # the implied headroom (70 points) is there
        ranged = Claim(**{**claim.__dict__, "preconditions": (HasRange("R@1", ("few",), ("many",), 4.0),)})
        said, _, pres = judge_claim(ranged, hits)
        assert said.startswith("untestable here (baseline R@1 range ≥ 4 points from few to many: 0)"), said
        assert [p.met for p in pres] == [False, True]  # the range; the headroom the Gain implies


def test_preconditions_measure_range_headroom_and_engagement():
    hits = _gain_hits(10, 0)  # baseline 30 % on few and many
    assert check_precondition(Headroom("R@1", ("few",), 4.0), hits).value == pytest.approx(70.0)
    assert not check_precondition(Headroom("R@1", ("few",), 80.0), hits).met
    assert check_precondition(HasRange("R@1", ("few",), ("many",), 4.0), hits).value == pytest.approx(0.0)
    floor = check_precondition(Retrieves("R@1", ("few",), 5.0), hits)  # the baseline retrieves 30 %
    assert floor.met and floor.value == pytest.approx(30.0) and floor.text == "baseline R@1 ≥ 5 on few"
    assert not check_precondition(Retrieves("R@1", ("few",), 35.0), hits).met
    missing = check_precondition(HasRange("R@1", ("few",), ("schema-64shot",), 4.0), hits)
    assert missing.value is None and not missing.met and "not in these runs" in missing.text
    hits[BASELINE] = [dict(run) for run in hits[BASELINE]]
    engaged = Engaged("v", BASELINE, 0.05)
    assert check_precondition(engaged, hits).value is None  # top-1s not recorded: not measured, not met
    assert check_precondition(engaged, _with_top1(hits, "v", 0.02)).met is False
    result = check_precondition(engaged, _with_top1(hits, "v", 0.20))
    assert result.met and result.value == pytest.approx(0.20, abs=0.01)


def test_a_sub_task_precondition_reads_the_recorded_number():
    from composir.methods.claims import SubTask

    hits = _gain_hits(10, 0)
    pre = SubTask("v", "conclusion attributes", 80.0)
    assert check_precondition(pre, hits).value is None  # not recorded: not measured, not met
    for run, value in zip(hits["v"], (70.0, 80.0, 90.0)):
        run["subtasks"] = {"conclusion attributes": value}
    assert check_precondition(pre, hits).value == pytest.approx(80.0) and check_precondition(pre, hits).met
    hits["v"][2]["subtasks"] = {"conclusion attributes": 60.0}
    result = check_precondition(pre, hits)
    assert not result.met and result.text == "v's conclusion attributes ≥ 80"
    claim = Claim("X", "v helps", Variant("base"), {"v": Variant("m")}, (Gain("v", ("few",), "R@1", 4.0),),
                  preconditions=(pre,))  # fmt: skip
    assert judge_claim(claim, hits)[0].startswith("untestable here (v's conclusion attributes ≥ 80: 70")
    assert {type(p).__name__ for p in registered_claims()["CIR-CoT"].preconditions} == {"SubTask"}


def test_imagine_registers_its_preconditions_and_an_inference_only_ablation():
    claim = registered_claims()["IMAGINE"]
    kinds = {type(p).__name__ for p in claim.preconditions}
    assert kinds == {"HasRange", "Engaged", "Decodes"}
    off, on = claim.variants["no modulation at test"], claim.variants["IMAGINE"]
    assert off.training_key == on.training_key and off.key != on.key  # scored from the same trained model


@torch.no_grad()
def test_imagine_without_modulation_at_test_is_the_concrete_feature():
    from composir.encoders import build_encoder
    from composir.methods import build_method
    from helpers import TEXTS

    torch.manual_seed(0)
    encoder = build_encoder("tiny", config={"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4})
    method = build_method("imagine", encoder, {"hidden_dim": 16, "top_k": 2, "modulation_init": 0.5}).eval()
    frames = torch.randn(len(TEXTS), 1, 3, 64, 64)
    tokens = encoder.tokenize(TEXTS)
    modulated = method.encode_query(frames, tokens)
    method.config.modulate_at_test = False
    plain = method.encode_query(frames, tokens)
    concrete = torch.nn.functional.normalize(method.compose(frames, tokens)["concrete"], dim=-1)
    torch.testing.assert_close(plain, concrete)
    assert not torch.allclose(plain, modulated, atol=1e-4)
    method.eval()
    diagnosed = method.diagnostics(frames, tokens)  # the imagery is still computed (not applied)
    assert diagnosed["relative change f vs f_c"] == pytest.approx(0.0, abs=1e-6) and "gate c" in diagnosed


def test_claims_are_registered_by_method_files():
    claims = registered_claims()
    imagine, first = claims["IMAGINE"], claims["IMAGINE (first update rule)"]
    assert imagine.baseline == Variant("qformer_fusion")
    assert {"IMAGINE", "static prototypes", "random selection", "no schema loss"} <= set(imagine.variants)
    assert imagine.variants["static prototypes"].config["update"] == "static"
    # The first-rule claim changes only IMAGINE's variants, and shares the baseline (same runs).
    assert first.baseline.key == imagine.baseline.key
    assert first.variants["static prototypes"].config["assignment"] == "batch_softmax"
    assert first.variants["static prototypes"].config["update"] == "static"
    assert "assignment" not in imagine.variants["IMAGINE"].config
    keys = [v.key for c in (imagine, first) for v in c.variants.values()]
    assert len(set(keys)) == len(keys)
    assert (
        Variant("csmcir", {"bank": "fifo", "max_age": 3}).key == Variant("csmcir", {"max_age": 3, "bank": "fifo"}).key
    )
    # The whole config counts, defaults filled in: a default spelled out is the same run, and a
    # run made under another default is not reused (it would be a stale result).
    assert Variant("csmcir", {}).key == Variant("csmcir", {"bank_keys": "momentum"}).key
    assert Variant("csmcir", {}).key != Variant("csmcir", {"bank_keys": "online"}).key


@pytest.mark.parametrize("paper", sorted(registered_claims()))
def test_every_registered_variant_builds_with_the_boards_encoder(paper):
    """A variant the board cannot build is a claim with no runs: each one, built as its run is."""
    from composir.experiments import board
    from composir.runs.config import load_config
    from composir.runs.factory import build_from_config

    claim = registered_claims()[paper]
    for variant in (claim.baseline, *claim.variants.values()):
        spec = board.RunSpec(variant, 0, "data", "backbone", "out", 1, 1e-3)
        config = load_config(board.CONFIG, [o for o in spec.overrides() if not o.startswith("train.init_from")])
        assert build_from_config(config).name == variant.method


def test_claim_rejects_checks_on_unknown_variants():
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        Claim("P", "s", Variant("qformer_fusion"), {"m": Variant("imagine")}, (Gain("nope", ("a",), "R@1", 1.0),))


def test_imagine_diagnostics_read_the_libraries():
    from composir.encoders import build_encoder
    from composir.methods import build_method

    torch.manual_seed(0)
    enc = build_encoder("tiny", config={"width": 32, "embed_dim": 16, "num_query_tokens": 4, "vision_layers": 1})
    method = build_method("imagine", enc, {"hidden_dim": 16, "top_k": 2}).eval()
    frames = torch.rand(6, 1, 3, 64, 64)
    tokens = enc.tokenize(["add a red circle", "make it blue", "remove it", "x", "night", "birthday"])
    width = method.visual_library.prototypes.shape[1]
    method.visual_library.prototypes.copy_(torch.eye(4, width))
    method.text_library.prototypes.copy_(torch.ones(4, width))
    stats = method.diagnostics(frames, tokens)
    assert stats["visual prototype cos"] == pytest.approx(0.0, abs=1e-6)
    assert stats["text prototype cos"] == pytest.approx(1.0, abs=1e-6)
    assert -1.0 <= stats["cos(m, mean m)"] <= 1.0 and 0.0 < stats["gate c"] < 1.0


def test_board_renders_a_claim(tmp_path):
    from composir.experiments import board

    claim = Claim(
        "Paper X", "v helps on few", Variant("base"), {"v": Variant("m"), "abl": Variant("m", {"off": True})},
        (Gain("v", ("schema-1shot",), "R@1", 4.0), LosesGain("abl", "v", ("schema-1shot",), "R@1")),
    )  # fmt: skip
    hits = _gain_hits(10, 0)
    rename = {"few": "schema-1shot", "many": "explicit"}
    results = {}
    for name, variant in (("baseline", claim.baseline), ("v", claim.variants["v"]), ("abl", claim.variants["abl"])):
        for seed, run in enumerate(hits[name]):
            run = {**run, "bucket": np.asarray([rename[b] for b in run["bucket"]], dtype=object)}
            results[(variant.key, seed)] = {"hits": run, "diagnostics": {}, "seconds": 1.0}
    doc = tmp_path / "claims.md"
    budget = board.Budget(board.FULL.steps, 5e-4, 2000)
    board.write_board(doc, ["# board", ""], {"Paper X": claim}, results, (0, 1, 2), tmp_path / "img", budget)
    text = doc.read_text()
    assert "**Verdict: reproduced** (seeds 0, 1, 2)." in text
    assert f"fine-tuned {board.FULL.steps} steps × 32 at lr 0.0005" in text and "Budget-limited" not in text
    short = board.Budget(board.QUICK.steps, 5e-4, 600)  # fewer steps than the full board's: said with the verdict
    board.write_board(doc, ["# board", ""], {"Paper X": claim}, results, (0, 1, 2), tmp_path / "img", short)
    text = doc.read_text()
    assert "**Verdict: reproduced** (budget-limited) (seeds 0, 1, 2)." in text
    assert f"**Budget-limited**: {board.QUICK.steps} of the full board's {board.FULL.steps}" in text
    assert "| baseline R@1 leaves ≥ 4 points of headroom on schema-1shot | 70 | yes |" in text
    assert "| v | 40.0 ± 0.0 (+10.0 [" in text  # R@1 on schema-1shot: 30% + 10 points
    assert (tmp_path / "img" / "claims-paper-x.png").stat().st_size > 10_000
    assert "Sub-tasks the claim relies on" not in text  # none recorded: no table
    for seed, shift in enumerate((4.0, 6.0, 8.0)):  # recorded by the baseline only
        results[(claim.baseline.key, seed)]["hits"]["subtasks"] = {"concept map shift": shift}
    board.write_board(doc, ["# board", ""], {"Paper X": claim}, results, (0, 1, 2), tmp_path / "img", budget)
    text = doc.read_text()
    assert "| variant | concept map shift |" in text and "| baseline | 6.0 ± 2.0 |" in text
    assert "| v |" not in text.split("| variant | concept map shift |")[1].split("\n\n")[0]


def test_conclusions_are_scored_by_the_objects_they_name():
    from composir.experiments.captions import conclusion_quality

    gold = "a small red circle and a large blue cross on a beige background"
    scores = conclusion_quality(
        ["a small red circle and a large green cross on a beige background", gold, "a small red circle"],
        [gold, gold, gold],
    )
    # objects right: 1 of 2 both ways (F1 0.5), all, 1 of 1 said of 2 (P 1, R 0.5: F1 2/3)
    assert scores["conclusion object F1"] == pytest.approx(100 * (0.5 + 1 + 2 / 3) / 3)
    assert scores["conclusion exact"] == pytest.approx(100 / 3)
    assert scores["conclusion attributes"] == pytest.approx(100 * (6 + 7 + 3) / 21)  # 7 gold words each


def test_the_board_adds_the_chain_scores_a_run_did_not_record(tmp_path, monkeypatch):
    """A run that wrote chains before their object F1 was recorded gets it on the next render;
    a run with every number, or one that writes no chains, is not loaded again."""
    import json

    import composir.data
    import composir.train
    from composir.experiments import board

    records = {
        "old": {"conclusion attributes": 55.0},
        "new": {"conclusion attributes": 55.0, "conclusion object F1": 9.0},
        "plain": {"bank entries": 3.0},
    }
    for key, tasks in records.items():
        (tmp_path / f"{key}-s0" / "checkpoints").mkdir(parents=True)
        (tmp_path / f"{key}-s0" / "hits.json").write_text(json.dumps({"subtasks": tasks, "seconds": 1}))
    loaded = []

    def load_run(run):
        loaded.append(Path(run).name)
        return torch.nn.Linear(1, 1), {}

    monkeypatch.setattr(composir.train, "load_run", load_run)
    monkeypatch.setattr(composir.data, "load_benchmark", lambda *a, **k: None)
    monkeypatch.setattr(board, "chain_quality", lambda method, bench: {"conclusion object F1": 12.0})
    results = {(k, 0): {"hits": {"subtasks": dict(t)}, "folder": tmp_path / f"{k}-s0"} for k, t in records.items()}
    board.backfill_chain_quality(tmp_path, results)
    assert loaded == ["old-s0"]
    stored = json.loads((tmp_path / "old-s0" / "hits.json").read_text())["subtasks"]
    assert stored == {"conclusion attributes": 55.0, "conclusion object F1": 12.0}
    assert results[("old", 0)]["hits"]["subtasks"]["conclusion object F1"] == 12.0


def test_the_captioners_encoder_is_frozen_only_when_asked():
    """Starting from the backbone no longer implies a frozen encoder (92% of attribute words with it
    trained, 79% frozen); from scratch a frozen encoder would see nothing and is refused."""
    import json

    from composir.experiments.captioner import CaptionerSpec

    def frozen(spec: CaptionerSpec) -> bool:
        config = [o for o in spec.overrides() if o.startswith("method.config={")]
        return json.loads(config[0].removeprefix("method.config="))["caption_encoder_frozen"]

    assert not frozen(CaptionerSpec("d", "o", 10, 1e-3, init_from="backbone"))
    assert frozen(CaptionerSpec("d", "o", 10, 1e-3, init_from="backbone", encoder_frozen=True))
    assert not frozen(CaptionerSpec("d", "o", 10, 1e-3))
    with pytest.raises(ValueError, match="from scratch"):
        CaptionerSpec("d", "o", 10, 1e-3, encoder_frozen=True)


def test_runs_that_depend_on_the_captioner_are_kept_apart_per_captioner(tmp_path):
    """A run that reads the learned captioner's captions or starts from it lives with that captioner
    (a folder named by its settings); the board draws it only from the captioner it is sized for,
    every other run from the cache's top level."""
    import json
    from dataclasses import replace

    from composir.experiments import board
    from composir.experiments.captioner import depends_on_captioner

    claims = {name: registered_claims()[name] for name in ("CSMCIR", "CIR-CoT")}
    csmcir = claims["CSMCIR"]
    plain, cot = csmcir.baseline, claims["CIR-CoT"].baseline
    reads = next(v for v in csmcir.variants.values() if v.captions == "default" and depends_on_captioner(v))
    oracle = next(v for v in csmcir.variants.values() if v.captions == "oracle")
    assert not depends_on_captioner(plain) and depends_on_captioner(cot) and not depends_on_captioner(oracle)
    trained, frozen = board.FULL, replace(board.FULL, captioner_steps=1500, captioner_encoder_frozen=True)
    assert trained.captioner == "captioner-4500-encoder-trained" != frozen.captioner
    assert board.run_folder(tmp_path, trained, reads.key, reads, 0) == tmp_path / trained.captioner / f"{reads.key}-s0"
    assert board.run_folder(tmp_path, trained, plain.key, plain, 0) == tmp_path / f"{plain.key}-s0"

    def finish(folder: Path, r1: float) -> None:
        folder.mkdir(parents=True)
        (folder / "hits.json").write_text(json.dumps({"R@1": [r1], "bucket": ["explicit"], "seconds": 1}))

    finish(tmp_path / f"{plain.key}-s0", 10)
    finish(tmp_path / f"{reads.key}-s0", 20)  # a stale top-level copy of a captioner-dependent run
    finish(tmp_path / frozen.captioner / f"{reads.key}-s0", 30)
    finish(tmp_path / trained.captioner / f"{reads.key}-s0", 40)
    finish(tmp_path / trained.captioner / f"{cot.key}-s1", 50)
    finish(tmp_path / f"{cot.key}-s1", 60)  # stale too, with no copy under the frozen captioner
    for size, expected in ((trained, 40), (frozen, 30)):
        runs = board.board_runs(tmp_path, size, claims)
        assert runs[(reads.key, 0)]["hits"]["R@1"].tolist() == [expected]
        assert runs[(plain.key, 0)]["hits"]["R@1"].tolist() == [10]
    assert (cot.key, 1) in board.board_runs(tmp_path, trained, claims)
    assert (cot.key, 1) not in board.board_runs(tmp_path, frozen, claims)


def test_the_board_probes_the_runs_a_decodes_precondition_needs_once(tmp_path, monkeypatch):
    """A run of a variant a Decodes precondition names, finished before its probe was recorded, is
    loaded again and probed on its own seed's test split; a probed run, or another variant's, is not."""
    import json

    import composir.data
    import composir.train
    from composir.experiments import board

    claim = registered_claims()["IMAGINE"]
    imagine, baseline = claim.variants["IMAGINE"].key, claim.baseline.key
    probed = {"m -> schema.name": {"accuracy": 30.0, "chance": 4.0}}
    records = {(imagine, 0): {}, (imagine, 1): probed, (baseline, 2): {}}
    results = {}
    for (key, seed), have in records.items():
        folder = tmp_path / "elsewhere" / f"{key}-s{seed}"  # wherever the run lives
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "hits.json").write_text(json.dumps({"probes": have, "seconds": 1}))
        results[(key, seed)] = {"hits": {"probes": dict(have)}, "folder": folder}
    loaded, benchmarks = [], []

    def load_run(run):
        loaded.append(Path(run).name)
        return torch.nn.Linear(1, 1), {}

    def load_benchmark(name, root, split):
        benchmarks.append((Path(root).name, split))

    monkeypatch.setattr(composir.train, "load_run", load_run)
    monkeypatch.setattr(composir.data, "load_benchmark", load_benchmark)
    found = {"m -> schema.name": {"accuracy": 12.5, "chance": 4.0}}
    monkeypatch.setattr(board, "probes", lambda method, bench, pairs: found if ("m", "schema.name") in pairs else {})
    board.backfill_probes(tmp_path, results, {"IMAGINE": claim})
    assert loaded == [f"{imagine}-s0"] and benchmarks == [("schema-data-s0", "test")]
    assert json.loads((tmp_path / "elsewhere" / f"{imagine}-s0" / "hits.json").read_text())["probes"] == found
    assert results[(imagine, 0)]["hits"]["probes"] == found and results[(imagine, 1)]["hits"]["probes"] == probed


def test_the_board_header_says_what_backbone_the_variants_start_from():
    from types import SimpleNamespace

    from composir.experiments import board

    args = SimpleNamespace(quick=False, lr=5e-4, jobs=2)
    scores = {"explicit": 47.625, "multi": 18.5, "implicit": 43.2}
    text = " ".join(board.header_lines(args, board.FULL, None, {}, scores))
    assert (
        f"pretrained {board.FULL.pretrain_steps} steps on a plain synthetic set of {board.FULL.pretrain_size:,} "
        "triplets (its val R@1 explicit 47.6, multi 18.5, implicit 43.2); every variant"
    ) in text
    assert "(its val R@1" not in " ".join(board.header_lines(args, board.FULL, None, {}))


def test_the_backbone_is_measured_again_once_it_has_trained_further(tmp_path):
    import json

    from composir.errors import ComposirError
    from composir.experiments import board

    best = tmp_path / "backbone" / "checkpoints" / "best"
    best.mkdir(parents=True)
    (best / "model.safetensors").write_bytes(b"")
    (best / "trainer_state.json").write_text(json.dumps({"step": 10}))
    record = tmp_path / "backbone" / "val_r1_by_family.json"
    record.write_text(json.dumps({"step": 10, "scores": {"explicit": 47.6}}))
    assert board.backbone_scores(tmp_path / "backbone", tmp_path / "pretrain") == {"explicit": 47.6}
    (best / "trainer_state.json").write_text(json.dumps({"step": 20}))
    with pytest.raises(ComposirError, match=r"no config\.yaml"):  # not the kept scores: it loads the run to measure
        board.backbone_scores(tmp_path / "backbone", tmp_path / "pretrain")


def _compare_module():
    from composir.experiments import compare

    return compare


def test_inference_only_variants_share_one_training_run(tmp_path):
    """CIR-CoT's reason and direct modes train the same model: one run, scored twice; a setting
    that changes training (the chain) is a run of its own."""
    reason, direct = Variant("cir_cot", {}), Variant("cir_cot", {"mode": "direct"})
    no_chain = Variant("cir_cot", {"chain": "none", "mode": "direct"})
    longer = Variant("cir_cot", {"max_chain_tokens": 64})
    assert reason.key != direct.key and reason.training_key == direct.training_key == longer.training_key
    assert no_chain.training_key != reason.training_key
    assert Variant("cir_cot", {"mode": "zero_shot"}).training_key != reason.training_key  # trains on image features
    assert Variant("csmcir", {"bank": "none"}).training_key != Variant("csmcir", {"bank": "fifo"}).training_key
    compare = _compare_module()
    members = {"baseline": no_chain, "reason": reason, "direct": direct, "short": longer}
    args = type("Args", (), {"seeds": [0, 1], "steps": 10, "points": 2, "lr": 1e-3})()
    specs, hits = compare.plan_runs(members, {0: tmp_path / "d0", 1: tmp_path / "d1"}, tmp_path, args)
    assert sorted(specs) == [("baseline", 0), ("baseline", 1), ("reason", 0), ("reason", 1)]
    run = specs[("reason", 1)]
    assert [v for _, v in run.also_scored] == [direct, longer] and run.variant == reason
    assert hits[("reason", 1)] == Path(run.out) / "hits.json"
    assert hits[("direct", 1)].parent == Path(run.out) and hits[("direct", 1)] != hits[("short", 1)]
    assert hits[("baseline", 0)].parent != Path(specs[("reason", 0)].out)


def test_cir_cot_variants_start_from_the_seeds_captioner_on_the_board_and_in_the_compare(tmp_path):
    """The paper's model starts from a multimodal LLM that can describe an image: every CIR-CoT
    variant starts from the seed's learned captioner, a model apart from one that does not."""
    from composir.experiments import board
    from composir.experiments.captioner import needs_captioner

    claim = registered_claims()["CIR-CoT"]
    assert all(v.start == "captioner" for v in (claim.baseline, *claim.variants.values()))
    assert needs_captioner([claim.baseline]) and not needs_captioner([Variant("cir_cot")])
    assert Variant("cir_cot", start="captioner").training_key != Variant("cir_cot").training_key
    with pytest.raises(ConfigError, match="start must be"):
        Variant("cir_cot", start="scratch")
    caches = {0: tmp_path / "captioner-s0" / "learned.jsonl", 1: tmp_path / "captioner-s1" / "learned.jsonl"}
    backbone = tmp_path / "backbone"
    assert board.run_start(claim.baseline, 1, backbone, caches) == str(tmp_path / "captioner-s1")
    assert board.run_start(Variant("qformer_fusion"), 1, backbone, caches) == str(backbone)
    compare = _compare_module()
    members = {"baseline": Variant("qformer_fusion"), "reason": claim.variants["CIR-CoT (reason)"]}
    args = type("Args", (), {"seeds": [0, 1], "steps": 10, "points": 2, "lr": 1e-3})()
    data = {0: tmp_path / "d0", 1: tmp_path / "d1"}
    specs, _ = compare.plan_runs(members, data, tmp_path, args, None, {0: "cap0", 1: "cap1"})
    assert "train.init_from=cap1" in specs[("reason", 1)].overrides()
    assert not any(o.startswith("train.init_from") for o in specs[("baseline", 1)].overrides())


def test_the_nearest_class_mean_probe_reads_separable_features_and_not_noise():
    from composir.experiments.verdicts import nearest_class_mean_accuracy

    rng = np.random.default_rng(0)
    labels = [f"schema{i % 6}" for i in range(120)]
    centres = rng.normal(size=(6, 16))
    separable = np.stack([centres[i % 6] + 0.1 * rng.normal(size=16) for i in range(120)])
    good = nearest_class_mean_accuracy(separable, labels)
    assert good["accuracy"] == 1.0 and good["chance"] == pytest.approx(1 / 6)
    noise = nearest_class_mean_accuracy(rng.normal(size=(120, 16)), labels)
    assert noise["accuracy"] < 0.35  # about chance (1/6): nothing to decode
    shuffled = nearest_class_mean_accuracy(separable, list(rng.permutation(labels)))  # labels no longer match
    assert shuffled["accuracy"] < 0.35


def test_a_mechanism_that_does_not_decode_its_labels_makes_the_claim_untestable():
    from composir.experiments.verdicts import Decodes, check_precondition, judge_claim, probe_key

    gain = Gain("v", ("schema-1shot",), "R@1", 1.0)
    decodes = Decodes("v", "m", "schema.name", 5.0)
    claim = Claim("Paper X", "v helps", Variant("base"), {"v": Variant("m")}, (gain,), preconditions=(decodes,))
    hits = _gain_hits(10, 0)
    hits = {k: runs for k, runs in hits.items() if k in ("baseline", "v")}
    key = probe_key("m", "schema.name")
    rename = {"few": "schema-1shot", "many": "explicit"}
    hits = {k: [{**run, "bucket": np.asarray([rename[b] for b in run["bucket"]], dtype=object)} for run in runs]
            for k, runs in hits.items()}  # fmt: skip
    decoding = {
        k: [{**run, "probes": {key: {"accuracy": 0.30, "chance": 0.05}}} for run in runs] for k, runs in hits.items()
    }
    blind = {
        k: [{**run, "probes": {key: {"accuracy": 0.07, "chance": 0.05}}} for run in runs] for k, runs in hits.items()
    }
    met = check_precondition(claim.preconditions[0], decoding)
    assert met.met and met.value == pytest.approx(25.0)
    failed = check_precondition(claim.preconditions[0], blind)
    assert not failed.met and failed.value == pytest.approx(2.0)
    assert judge_claim(claim, decoding)[0] == "reproduced"
    assert judge_claim(claim, blind)[0].startswith("untestable here (a nearest-class-mean probe on v's m")
    assert "not probed" in check_precondition(claim.preconditions[0], hits).text  # runs without probes


@torch.no_grad()
def test_imagine_exposes_its_imagery_for_the_decoding_probe():
    from composir.encoders import build_encoder
    from composir.methods import build_method
    from helpers import TEXTS

    torch.manual_seed(0)
    encoder = build_encoder("tiny", config={"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4})
    method = build_method("imagine", encoder, {"hidden_dim": 16, "top_k": 2}).eval()
    frames, tokens = torch.randn(len(TEXTS), 1, 3, 64, 64), encoder.tokenize(TEXTS)
    features = method.probe_features(frames, tokens)
    torch.testing.assert_close(features["m"], method.compose(frames, tokens)["m"])
    assert build_method("imagine", encoder, {"use_sic": False}).probe_features(frames, tokens) == {}


def test_a_claim_that_asks_for_more_steps_gets_them_on_the_board_apart_from_the_boards_budget(tmp_path):
    """ConText-CIR's fusion starts from scratch, so its claim asks for 4x the board's steps: every
    run of its variants fine-tunes that long (warm-up and evaluation scaled with it), its runs are
    other runs than the same variants' at the board's budget, and its verdict prints its budget."""
    from dataclasses import replace

    from composir.experiments.board import FULL, QUICK, Budget, plan_runs, sized_claim

    claim = registered_claims()["ConText-CIR"]
    assert claim.steps_factor == 4.0
    longer, plain = sized_claim(claim, FULL.steps), sized_claim(replace(claim, steps_factor=1.0), FULL.steps)

    def specs(c):
        variants = {v.key: v for v in (c.baseline, *c.variants.values())}
        size = replace(FULL, seeds=(0,))
        return plan_runs(variants, size, tmp_path, {0: tmp_path / "data"}, tmp_path / "backbone", {}, 5e-4)

    assert {s.steps for s in specs(longer)} == {2400}
    assert {s.steps for s in specs(plain)} == {600}
    scaled = {"train.max_steps=2400", "train.warmup_steps=240", "train.eval_every=2400"}
    assert scaled <= set(specs(longer)[0].overrides())
    assert not {s.out for s in specs(longer)} & {s.out for s in specs(plain)}
    assert "fine-tuned 2400 steps" in Budget(FULL.steps, 5e-4, 10_000).for_claim(claim).note()
    quick = Budget(QUICK.steps, 5e-4, 600).for_claim(claim)
    assert quick.limited and "800 of the full board's 2400" in quick.note()


def test_the_boards_record_draws_the_same_board_on_a_fresh_cache(tmp_path, monkeypatch):
    """What the board is drawn from (runs' hits, the finished backbone's weights and scores, the
    captioners' accuracy) is kept in its record; a cache restored from it draws the same runs,
    without the runs of variants no claim registers, starts new runs from the same backbone
    without training it again, and does not take a restored captioner for a finished one."""
    import json

    from composir.experiments import board
    from composir.experiments.captioner import finished_captioner, recorded_captioners
    from composir.experiments.records import restore_record, save_record

    claims = {"CSMCIR": registered_claims()["CSMCIR"]}
    plain = claims["CSMCIR"].baseline
    reads = next(v for v in claims["CSMCIR"].variants.values() if v.captions == "default")
    cache, record, fresh = tmp_path / "cache", tmp_path / "record", tmp_path / "fresh"

    def finish(folder: Path, r1: float) -> None:
        folder.mkdir(parents=True)
        (folder / "hits.json").write_text(json.dumps({"R@1": [r1], "bucket": ["explicit"], "seconds": 1}))

    finish(cache / f"{plain.key}-s0", 10)
    finish(cache / board.FULL.captioner / f"{reads.key}-s0", 40)
    finish(cache / "orphan0123456789-s0", 70)  # a run of a variant no claim registers now
    steps = board.FULL.pretrain_steps
    for name in ("best", "step-last"):  # the backbone's weights the runs start from, and its last step
        (cache / "backbone" / "checkpoints" / name).mkdir(parents=True)
        (cache / "backbone" / "checkpoints" / name / "trainer_state.json").write_text(json.dumps({"step": steps}))
        (cache / "backbone" / "checkpoints" / name / "model.safetensors").write_bytes(name.encode())
    (cache / "backbone" / board.BACKBONE_SCORES).write_text(json.dumps({"step": steps, "scores": {"explicit": 47.6}}))
    assert not board.backbone_finished(cache / "backbone", steps)  # no latest checkpoint yet
    (cache / "backbone" / "checkpoints" / "latest").write_text("step-last\n")
    captioner = cache / board.FULL.captioner / "captioner-s0"
    captioner.mkdir()
    (captioner / "accuracy.json").write_text(json.dumps({"attribute_accuracy": 93.0, "exact": 56.0}))
    (captioner / "learned.jsonl").write_text("")

    results = board.board_runs(cache, board.FULL, claims)
    assert set(results) == {(plain.key, 0), (reads.key, 0)}  # the orphan is neither drawn nor recorded
    board.keep_record(record, cache, board.FULL, results)
    assert save_record(cache, record, [cache / f"{plain.key}-s0" / "hits.json"]) == 0  # unchanged: not rewritten
    assert not any("orphan" in p.name for p in record.rglob("*"))

    assert restore_record(record, fresh) == 7
    assert (fresh / "backbone" / "checkpoints" / "best" / "model.safetensors").read_bytes() == b"best"
    assert not (fresh / "backbone" / "checkpoints" / "step-last").exists()  # nor its optimizer: too large to keep

    def no_training(*args, **kwargs):
        raise AssertionError("the recorded backbone was trained again")

    monkeypatch.setattr("composir.train.train", no_training)
    assert board.train_backbone(fresh, fresh / "pretrain-data", steps) == fresh / "backbone"
    assert not board.backbone_finished(fresh / "backbone", steps * 2)  # more steps asked: trained further
    again = board.board_runs(fresh, board.FULL, claims)
    assert {k: r["hits"]["R@1"].tolist() for k, r in again.items()} == {(plain.key, 0): [10], (reads.key, 0): [40]}
    assert board.recorded_backbone_scores(fresh / "backbone", fresh / "pretrain-data") == {"explicit": 47.6}
    assert recorded_captioners(fresh / board.FULL.captioner) == {0: {"attribute_accuracy": 93.0, "exact": 56.0}}
    assert finished_captioner(fresh / board.FULL.captioner / "captioner-s0") is None  # no caption cache: train it
    assert finished_captioner(captioner) is not None

    finish(tmp_path / "mine" / f"{plain.key}-s0", 20)  # a run finished here is never replaced by a recorded one
    assert restore_record(record, tmp_path / "mine") == 6
    assert json.loads((tmp_path / "mine" / f"{plain.key}-s0" / "hits.json").read_text())["R@1"] == [20]
    (record / "backbone" / f"{board.BACKBONE_SCORES}.gz").write_bytes(b"not gzip")
    with pytest.raises(SystemExit, match=r"val_r1_by_family\.json\.gz: not a readable gzip record"):
        restore_record(record, tmp_path / "other")


def test_a_claim_without_runs_keeps_its_previously_drawn_section_said_to_be_carried(tmp_path):
    """Until the recorded runs cover the seeds a section was drawn on, that section is kept, said
    to be carried over (once); a claim never drawn shows that it has no runs."""
    from composir.experiments import board

    drawn = Claim("Paper X", "v helps", Variant("base"), {"v": Variant("m")}, (Gain("v", ("explicit",), "R@1", 1.0),))
    gone = Claim("Paper Y", "w helps", Variant("base"), {"w": Variant("w")}, (Gain("w", ("explicit",), "R@1", 1.0),))
    new = Claim("Paper Z", "u helps", Variant("base"), {"u": Variant("u")}, (Gain("u", ("explicit",), "R@1", 1.0),))
    rng = np.random.default_rng(0)

    def runs(variants, seeds) -> dict:
        return {
            (variant.key, seed): {"hits": _run({"explicit": list(_coin(rng, 200, p))}), "diagnostics": {}, "seconds": 1}
            for variant, p in variants
            for seed in seeds
        }

    results = runs(((drawn.baseline, 0.3), (drawn.variants["v"], 0.6)), (0, 1))
    doc = tmp_path / "claims.md"
    doc.write_text(
        "# board\n\n## Paper Y\n\n**Claim.** w helps\n\n**Verdict: reproduced** (seeds 0, 1).\n\n| w | 9 |\n"
    )
    claims = {"Paper X": drawn, "Paper Y": gone, "Paper Z": new}
    budget = board.Budget(board.FULL.steps, 5e-4, 2000)

    def draw() -> dict[str, str]:
        board.write_board(doc, ["# board", ""], claims, results, (0, 1), tmp_path / "img", budget)
        return {paper: "\n".join(lines) for paper, lines in board.drawn_sections(doc.read_text()).items()}

    for _ in range(2):  # drawn twice: carried once, said once
        sections = draw()
        assert "**Verdict: reproduced** (seeds 0, 1)." in sections["Paper X"]
        assert sections["Paper Y"].count("*Carried over from this document's previous drawing") == 1
        assert "`--papers Paper Y` draws it again from new runs.*" in sections["Paper Y"]
        assert "**Verdict: reproduced** (seeds 0, 1)." in sections["Paper Y"] and "| w | 9 |" in sections["Paper Y"]
        assert board.NO_RUNS in sections["Paper Z"]  # never drawn: nothing to carry
    results.update(runs(((gone.baseline, 0.3), (gone.variants["w"], 0.3)), (0,)))
    sections = draw()  # seed 0 is recorded, the section stood on 0 and 1: still carried
    assert sections["Paper Y"].count("*Carried over") == 1 and "(recorded now: seeds 0).*" in sections["Paper Y"]
    results.update(runs(((gone.baseline, 0.3), (gone.variants["w"], 0.3)), (1,)))
    sections = draw()  # now drawn from the runs
    assert "Carried over" not in sections["Paper Y"] and "| w | 9 |" not in sections["Paper Y"]
    assert "**Verdict: " in sections["Paper Y"] and "(seeds 0, 1)." in sections["Paper Y"]


def test_the_captions_paragraph_is_carried_over_once_when_no_captioner_is_recorded(tmp_path):
    from composir.experiments import board

    doc = tmp_path / "claims.md"
    assert board.carried_caption_note(doc) == []
    doc.write_text("# board\n\n**Captions.** Every variant reads a learned captioner's (93.2 %).\n\n## X\n")
    carried = board.carried_caption_note(doc)
    assert carried[0].startswith("**Captions.** *(Carried over from this document's previous drawing")
    assert carried[0].endswith("Every variant reads a learned captioner's (93.2 %).")
    doc.write_text("# board\n\n" + "\n".join(carried) + "\n## X\n")
    assert board.carried_caption_note(doc) == carried  # carried again: said once
