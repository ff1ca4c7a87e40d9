"""IMAGINE: prototype momentum math, top-k selection, confidence range, every switch matters."""

from __future__ import annotations

import pytest
import torch

from composir.encoders import build_encoder
from composir.errors import ConfigError
from composir.methods import build_method
from composir.methods.imagine import PrototypeLibrary

ENC = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 8, "vision_layers": 1, "qformer_layers": 1}


def _model(**config):
    torch.manual_seed(0)
    return build_method("imagine", build_encoder("tiny", config=ENC), {"hidden_dim": 24, "top_k": 3, **config})


def _batch(n=4, frames=1):
    gen = torch.Generator().manual_seed(1)
    enc = build_encoder("tiny", config=ENC)
    texts = ["make it night", "add a red circle", "freeze everything", "move the cat"][:n]
    return {
        "reference": torch.randn(n, frames, 3, 64, 64, generator=gen),
        "target": torch.randn(n, frames, 3, 64, 64, generator=gen),
        "tokens": enc.tokenize(texts),
    }


OLD_RULE = {"assignment": "batch_softmax", "centre": False, "init_mode": "query_tokens"}


def test_batch_softmax_rule_by_hand():
    """The first implementation's rule (kept for the ablation), computed by hand."""
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lib = PrototypeLibrary(protos, momentum=0.9, temperature=0.5, update="momentum", **OLD_RULE)
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # cos(g_i, p_j): [[1, 0], [0, 1], [0.7071, 0.7071]]; softmax over the batch (dim 0) of cos / 0.5.
    cos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2**-0.5, 2**-0.5]])
    a = torch.softmax(cos / 0.5, dim=0)
    expected = 0.9 * protos + 0.1 * (a.T @ g)
    lib.update(g)
    torch.testing.assert_close(lib.prototypes, expected)
    # Prototype 0 moves towards the sample it matches best (g_0 = [2, 0]).
    assert lib.prototypes[0, 0] > 1.0
    replace = PrototypeLibrary(protos, 0.9, 0.5, "replace", **OLD_RULE)
    replace.update(g)
    torch.testing.assert_close(replace.prototypes, a.T @ g)
    static = PrototypeLibrary(protos, 0.9, 0.5, "static", **OLD_RULE)
    static.update(g)
    torch.testing.assert_close(static.prototypes, protos)


def test_topk_selects_highest_scores_and_weights_sum_to_one():
    model = _model()
    lib = model.visual_library
    g = lib.prototypes[[5, 2]] * 2.0  # each sample points exactly along one prototype
    index, weights = model.select(lib, g)
    assert index.shape == (2, 3)
    scores = lib.scores(g)
    for row in range(2):
        assert set(index[row].tolist()) == set(scores[row].topk(3).indices.tolist())
    assert index[0, 0] == 5 and index[1, 0] == 2
    torch.testing.assert_close(weights.sum(1), torch.ones(2))


def test_confidence_in_open_unit_interval_and_initial_near_identity():
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        out = model.compose(batch["reference"], batch["tokens"])
    c = out["confidence"]
    assert c.shape == (4, 1) and ((c > 0) & (c < 1)).all()
    # A small modulation at start: f stays close to the unit f_c, but not equal (the gate gets a gradient).
    unit = torch.nn.functional.normalize(out["concrete"], dim=-1)
    diff = (out["composed"] - unit).norm() / unit.norm()
    assert 0 < diff < 0.05
    exact = _model(modulation_init=0.0).eval()
    with torch.no_grad():
        out = exact.compose(batch["reference"], batch["tokens"])
    torch.testing.assert_close(out["composed"], torch.nn.functional.normalize(out["concrete"], dim=-1))


def test_the_modulation_of_the_unit_concrete_feature_does_not_depend_on_its_scale(monkeypatch):
    """f_c ten times larger (a LayerNorm-scale feature, say): modulating the unit f_c composes the
    same query; modulating f_c as it is lets the shift move it ten times less, relatively."""
    batch = _batch()
    for normalize in (True, False):
        model = _model(normalize_concrete=normalize, modulation_init=0.05).eval()
        with torch.no_grad():
            plain = model.encode_query(batch["reference"], batch["tokens"])
            composed = model._composed  # the baseline's query, f_c
            monkeypatch.setattr(model, "_composed", lambda *args, composed=composed: 10 * composed(*args))
            scaled = model.encode_query(batch["reference"], batch["tokens"])
            monkeypatch.undo()
        if normalize:
            torch.testing.assert_close(scaled, plain, atol=1e-5, rtol=1e-5)
        else:
            assert not torch.allclose(scaled, plain, atol=1e-3)


def test_video_input_and_losses():
    model = _model().train()
    losses = model.losses(_batch(frames=3))
    assert set(losses) == {"contrastive", "schema"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# normalize_concrete matters where the baseline's f_c is not unit (CoVR-2's unnormalised token mean).
UNNORMALISED_BASELINE = {"token_norm": True, "renormalize_mean": False}
SWITCHES = [
    {**UNNORMALISED_BASELINE, "normalize_concrete": False},
    {"selection": "random"},
    {"selection": "all"},
    {"update": "replace"},
    {"update": "static"},
    {"update_every": "step"},
    {"aggregation": "average"},
    {"composition": "add"},
    {"composition": "cross_attention"},
    {"composition": "none"},
    {"use_scale": False},
    {"use_shift": False},
    {"schema_metric": "euclidean"},
    {"schema_target": "concrete"},
    {"schema_weight": 0.0},
    {"use_sic": False},
]


def _fingerprint(model, steps=2):
    """Losses and query features over two training steps (so library updates count)."""
    torch.manual_seed(123)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = _batch()
    values = []
    model.train()
    for _ in range(steps):
        losses = model.losses(batch)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_step(0)
        model.after_epoch(0)  # one-batch epochs: the per-epoch update runs every step
        values.append(loss.detach())
    model.eval()
    with torch.no_grad():
        values.append(model.encode_query(batch["reference"], batch["tokens"]).flatten())
        values.append(model.visual_library.prototypes.flatten())
    return values


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_switch_changes_the_computation(switch):
    context = {k: v for k, v in switch.items() if k in UNNORMALISED_BASELINE}
    base = _fingerprint(_model(**context))
    other = _fingerprint(_model(**switch))
    assert any(a.shape != b.shape or not torch.allclose(a, b) for a, b in zip(base, other)), switch


def test_prototypes_are_saved_with_the_model():
    model = _model()
    before = model.visual_library.prototypes.clone()
    model.losses(_batch())
    model.after_step(1)  # the libraries change after the optimizer step, not inside the loss
    assert not torch.equal(before, model.visual_library.prototypes)
    state = model.state_dict()
    assert "visual_library.prototypes" in state and "text_library.prototypes" in state
    fresh = _model()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.visual_library.prototypes, model.visual_library.prototypes)


def test_bad_switch_value():
    with pytest.raises(ConfigError, match=r"imagine\.selection"):
        _model(selection="best")
    with pytest.raises(ConfigError, match="needs an encoder with a Q-Former fusion"):
        build_method(
            "imagine",
            build_encoder(
                "openclip",
                config={
                    "model": "x",
                    "model_config": {
                        "embed_dim": 16,
                        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
                    },
                },
            ),
        )


def test_explain_lists_prototypes():
    model = _model().eval()
    batch = _batch()
    exp = model.explain(batch["reference"], batch["tokens"])
    assert len(exp) == 4 and len(exp[0]["visual_prototypes"]) == 3 and 0 < exp[0]["confidence"] < 1


def test_query_and_explanation_come_from_one_pass(monkeypatch):
    model = _model().eval()
    batch = _batch()
    calls = []
    real = model.compose
    monkeypatch.setattr(model, "compose", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    with torch.no_grad():
        query, explanations = model.encode_query_explained(batch["reference"], batch["tokens"])
        assert len(calls) == 1
        torch.testing.assert_close(query, model.encode_query(batch["reference"], batch["tokens"]))
        assert explanations == model.explain(batch["reference"], batch["tokens"])
    assert len(explanations) == 4 and "confidence" in explanations[0]


# ------------------------------------------------ the prototype update (issue 12) and behaviour
COMPETITIVE = ["competitive_soft", "hard", "sinkhorn"]


def test_competitive_rule_by_hand():
    """Centred, normalised features; softmax over prototypes; a mass-weighted step; a prototype
    that wins no sample stays where it is."""
    protos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    lib = PrototypeLibrary(protos, 0.5, 0.05, assignment="hard", centre=True, init_mode="query_tokens")
    g = torch.tensor([[3.0, 0.1, 0.0], [2.9, -0.1, 0.0], [1.0, 1.0, 0.0], [1.1, 1.0, 0.0]]) + 5.0
    lib.update(g)
    x = torch.nn.functional.normalize(g - g.mean(0), dim=-1)  # the first batch sets the running mean
    owner = (x @ protos.T).argmax(1)
    assert owner.tolist() == [0, 0, 1, 1]
    for j in (0, 1):
        target = x[owner == j].mean(0)
        moved = torch.nn.functional.normalize(protos[j] + 0.5 * (target - protos[j]), dim=0)
        torch.testing.assert_close(lib.prototypes[j], moved)
    torch.testing.assert_close(lib.prototypes[2], protos[2])  # no sample: stays put


def _clustered(n_clusters=16, per=8, dim=32, seed=0):
    """Features like LayerNorm outputs: a strong shared direction plus one of 16 cluster offsets
    (the same for every call), and noise that differs with ``seed``."""
    fixed = torch.Generator().manual_seed(1234)
    shared = torch.randn(dim, generator=fixed) * 4
    centres = torch.randn(n_clusters, dim, generator=fixed)
    labels = torch.arange(n_clusters).repeat_interleave(per)
    noise = 0.1 * torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return shared + centres[labels] + noise, labels, centres


@pytest.mark.parametrize("assignment", COMPETITIVE)
def test_prototypes_stay_spread_on_clustered_features(assignment):
    init = torch.randn(16, 32, generator=torch.Generator().manual_seed(5)) * 0.02  # query-token-like
    lib = PrototypeLibrary(init, 0.9, 0.1, assignment=assignment)
    for step in range(60):
        g, labels, _ = _clustered(seed=step)
        lib.update(g[torch.randperm(len(g), generator=torch.Generator().manual_seed(step))])
    g, labels, _ = _clustered(seed=999)
    owner = lib.scores(g).argmax(1)
    # Each cluster is read off by its own prototype: a probe recovers the cluster from the scores.
    covered = len({int(owner[labels == c].mode().values) for c in range(16)})
    protos = torch.nn.functional.normalize(lib.prototypes, dim=-1)
    off_diagonal = (protos @ protos.T)[~torch.eye(16, dtype=torch.bool)]
    assert covered >= 12 and off_diagonal.mean() < 0.5, (covered, float(off_diagonal.mean()))


def test_the_first_rule_collapses_on_the_same_features():
    """What the competitive rules fix (measured, not assumed): the batch-softmax rule on raw
    features ends with every prototype the same vector."""
    init = torch.randn(16, 32, generator=torch.Generator().manual_seed(5)) * 0.02
    lib = PrototypeLibrary(init, 0.9, 0.1, **OLD_RULE)
    for step in range(60):
        lib.update(_clustered(seed=step)[0])
    protos = torch.nn.functional.normalize(lib.prototypes, dim=-1)
    assert (protos @ protos.T).min() > 0.99


def _distinct_batch():
    """References and targets that differ a lot (solid colours, a bright square in a different
    place): random-noise images all look alike to a small untrained model."""
    batch = _batch()
    frames = torch.zeros(8, 1, 3, 64, 64)
    for i in range(8):
        frames[i, 0, i % 3] = (i - 3.5) / 2
        frames[i, 0, :, 8 * i : 8 * i + 16, 8 * i : 8 * i + 16] = 2.0
    return {**batch, "reference": frames[:4], "target": frames[4:]}


def _trained(assignment="competitive_soft", steps=3, **config):
    model = _model(assignment=assignment, **config).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(steps):
        losses = model.losses(_distinct_batch())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        model.after_step(0)
        model.after_epoch(0)  # one-batch epochs
    return model.eval()


def _libraries_fed(model, batch, updates=5):
    """The libraries after ``updates`` updates on this batch's own (eval-mode) features: an
    untrained tiny model's features differ little between samples, so any drift of the model
    between the update and the check would swamp them."""
    with torch.no_grad():
        visual = torch.cat([model.visual_global(batch["reference"]), model.visual_global(batch["target"])])
        text = model.text_global(batch["tokens"])
        for _ in range(updates):
            model.visual_library.update(visual)
            model.text_library.update(text)
    return model


@pytest.mark.parametrize("assignment", COMPETITIVE)
def test_imagery_varies_with_the_input(assignment):
    batch = _distinct_batch()
    model = _libraries_fed(_model(assignment=assignment).eval(), batch)
    with torch.no_grad():
        m = model.compose(batch["reference"], batch["tokens"])["m"]
        m_text = model.compose(batch["reference"], batch["tokens"][[1, 2, 3, 0]])["m"]
        m_ref = model.compose(batch["reference"].flip(0), batch["tokens"])["m"]
    cos_to_mean = torch.nn.functional.cosine_similarity(m, m.mean(0, keepdim=True)).max()
    assert cos_to_mean < 0.99  # not one constant vector
    assert not torch.allclose(m, m_text, atol=1e-4)  # the text side reaches m
    assert not torch.allclose(m, m_ref, atol=1e-4)  # the reference side reaches m


def test_imagery_is_constant_under_the_first_rule():
    """The probe's finding, reproduced: with the batch-softmax rule on raw features m hardly varies."""
    batch = _distinct_batch()
    config = {"assignment": "batch_softmax", "centre_features": False, "prototype_init": "query_tokens"}
    model = _libraries_fed(_model(**config).eval(), batch, updates=30)
    with torch.no_grad():
        m = model.compose(batch["reference"], batch["tokens"])["m"]
    assert torch.nn.functional.cosine_similarity(m, m.mean(0, keepdim=True)).min() > 0.99


def test_text_imagery_reads_the_text_library_and_both_libraries_move():
    model = _trained(steps=1)
    batch = _batch()
    with torch.no_grad():
        out = model.compose(batch["reference"], batch["tokens"])
        expected = model.text_library.scores(out["g_text"]).topk(model.k, dim=1).indices
    assert torch.equal(out["text_index"].sort(1).values, expected.sort(1).values)
    before_text = model.text_library.prototypes.clone()
    before_visual = model.visual_library.prototypes.clone()
    model.train()
    model.losses(batch)
    model.after_step(1)
    model.after_epoch(0)
    assert not torch.equal(before_text, model.text_library.prototypes)
    assert not torch.equal(before_visual, model.visual_library.prototypes)


def test_the_gate_scales_the_modulation(monkeypatch):
    model = _trained()
    batch = _batch()
    for logit, c in ((-50.0, 0.0), (50.0, 1.0)):
        monkeypatch.setattr(model.confidence[-1].bias, "data", torch.full((1,), logit))
        with torch.no_grad():
            out = model.compose(batch["reference"], batch["tokens"])
            scale, shift = model.modulation(out["m"]).chunk(2, dim=-1)
        base = torch.nn.functional.normalize(out["concrete"], dim=-1)  # normalize_concrete: the unit f_c
        expected = base * (1 + c * scale) + c * shift  # and made unit again: the baseline's length, 1
        torch.testing.assert_close(
            out["composed"], torch.nn.functional.normalize(expected, dim=-1), rtol=1e-4, atol=1e-5
        )
    assert not torch.allclose(scale, torch.zeros_like(scale))  # so c = 0 and c = 1 really differ


def test_the_schema_loss_pulls_m_to_the_targets_imagery():
    batch = _distinct_batch()
    model = _libraries_fed(_model().eval(), batch)  # eval: no dropout, so losses compare exactly
    schema = model.losses(batch)["schema"]
    assert 0 <= float(schema) <= 2 * model.config.schema_weight  # 1 - cos, weighted: never negative
    # The goal comes from the target: other targets change the loss, the reference fixed...
    other = {**batch, "target": batch["target"].flip(0)}
    assert not torch.isclose(model.losses(other)["schema"], schema)
    # ...and the loss is the distance from m to the target's imagery, not to the reference's.
    with torch.no_grad():
        m = model.compose(batch["reference"], batch["tokens"])["m"]
        goal = model.imagery(model.visual_library, model.visual_imagery, model.visual_global(batch["target"]))[0]
    expected = model.config.schema_weight * (1 - torch.nn.functional.cosine_similarity(m, goal, dim=-1)).mean()
    torch.testing.assert_close(schema.detach(), expected)
    model.train()
    # Gradient descent on it alone lowers it (the sign is right), and only m's side moves.
    model._pending_updates.clear()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    values = []
    for _ in range(5):
        loss = model.losses(batch)["schema"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(loss))
    model._pending_updates.clear()
    assert values[-1] < values[0]


def test_no_degenerate_constant_minimum_by_default():
    model = _model()
    assert model.visual_imagery.bias is None and model.text_imagery.bias is None
    assert model.config.detach_schema_target
    # The schema target carries no gradient back into the target's branch.
    batch = _batch()
    model.train()
    losses = model.losses(batch)
    grads = torch.autograd.grad(losses["schema"], model.visual_imagery.weight, retain_graph=True)[0]
    model._pending_updates.clear()
    assert grads.abs().sum() > 0


def test_k_prototypes_need_not_be_the_query_tokens():
    """K = 12 prototypes on an encoder with 8 query tokens: placed by k-means++ on the first
    features, selected and updated like any; query-token placement cannot give 12 and says so."""
    model = _model(num_prototypes=12, top_k=4).train()
    assert model.visual_library.prototypes.shape[0] == model.text_library.prototypes.shape[0] == 12
    model.weights_loaded(set())  # after train.init_from from a run without libraries (the claims board's)
    batch = _batch()
    model.losses(batch)
    model.after_step(1)
    placed = model.visual_library.prototypes.clone()
    with torch.no_grad():
        out = model.eval().compose(batch["reference"], batch["tokens"])
    assert out["visual_index"].shape == (4, 4) and int(out["visual_index"].max()) < 12
    assert torch.isfinite(placed).all() and len({tuple(p.tolist()) for p in placed}) > 1
    with pytest.raises(ConfigError, match="num_prototypes 12 differs from the encoder's 8 query tokens"):
        _model(num_prototypes=12, prototype_init="query_tokens")


def _covr2_method_config() -> dict:
    """configs/covr2-webvid-covr.yaml's method settings (CIRR's token-pair scoring left out: IMAGINE's
    query is one vector, and the config says so)."""
    import yaml

    from helpers import CONFIG

    config = yaml.safe_load((CONFIG.parent / "covr2-webvid-covr.yaml").read_text())["method"]["config"]
    config.pop("scoring_per_benchmark")
    return config


def _covr2_pair(**imagine):
    """The CoVR-2 baseline and IMAGINE built on the same (copied) encoder from the baseline's config."""
    import copy

    torch.manual_seed(0)
    encoder = build_encoder("tiny", config=ENC)
    config = _covr2_method_config()
    baseline = build_method("qformer_fusion", copy.deepcopy(encoder), config)
    torch.manual_seed(1)
    model = build_method("imagine", copy.deepcopy(encoder), {**config, "hidden_dim": 24, "top_k": 3, **imagine})
    return baseline, model


def _covr2_batch(method):
    from helpers import method_batch

    batch = method_batch(method, method.encoder)
    gen = torch.Generator().manual_seed(2)
    batch["reference"] = torch.randn(len(batch["tokens"]), 5, 3, 64, 64, generator=gen)  # 5-frame videos
    batch["target"] = torch.randn(len(batch["tokens"]), 3, 3, 64, 64, generator=gen)
    batch["target_frame_scores"] = torch.randn(len(batch["tokens"]), 3, generator=gen)
    return batch


def test_imagine_accepts_the_covr2_config_and_rejects_token_pair_scoring():
    _, model = _covr2_pair()
    assert model.config.frozen_targets and model.config.token_norm and model.config.reference_frames == "middle"
    with pytest.raises(ConfigError, match="max_token_pairs"):
        _covr2_pair(scoring_per_benchmark={"cirr": "max_token_pairs"})


@torch.no_grad()
def test_imagine_without_its_imagery_is_the_covr2_baseline():
    """IMAGINE = the baseline's exact config + its modules: with the modulation left out at test it
    composes the baseline's query (middle reference frame, unit tokens, their unnormalised mean),
    its targets are the baseline's (frozen model, score-weighted frames), and with the imagery off
    its training losses are the baseline's (hard-negative NCE and the caption term)."""
    baseline, model = _covr2_pair(modulate_at_test=False)
    batch = _covr2_batch(baseline)
    baseline.eval(), model.eval()
    reference, tokens, target = batch["reference"], batch["tokens"], batch["target"]
    expected_query = baseline.encode_query(reference, tokens)
    assert not torch.allclose(expected_query.norm(dim=-1), torch.ones(len(tokens)))  # CoVR-2's mean: not unit
    torch.testing.assert_close(model.encode_query(reference, tokens), expected_query, atol=1e-6, rtol=1e-6)
    scores = batch["target_frame_scores"]
    torch.testing.assert_close(
        model.encode_target(target, frame_scores=scores), baseline.encode_target(target, frame_scores=scores)
    )
    model.config.modulate_at_test = True  # the imagery applied: another query
    assert not torch.allclose(model.encode_query(reference, tokens), expected_query, atol=1e-4)

    baseline, plain = _covr2_pair(use_sic=False)
    baseline.train(), plain.train()
    torch.manual_seed(3)  # the same dropout masks
    expected = baseline.losses(batch)
    torch.manual_seed(3)
    got = plain.losses(batch)
    assert set(got) == set(expected) == {"contrastive", "caption"}
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


def test_imagine_keeps_the_baseline_query_length_when_it_modulates_the_direction():
    """normalize_concrete on CoVR-2's unnormalised token mean: the modulation moves the direction and
    the query keeps the baseline's length (CoVR-2 scores that length)."""
    baseline, model = _covr2_pair(modulation_init=0.05)
    batch = _covr2_batch(baseline)
    baseline.eval(), model.eval()
    with torch.no_grad():
        expected = baseline.encode_query(batch["reference"], batch["tokens"])
        got = model.encode_query(batch["reference"], batch["tokens"])
    torch.testing.assert_close(got.norm(dim=-1), expected.norm(dim=-1))
    assert not torch.allclose(got, expected, atol=1e-4)


def test_the_imagine_webvid_config_is_the_covr2_config_plus_imagines_modules():
    """A real-data IMAGINE vs CoVR-2 comparison differs in IMAGINE's modules only: every other
    section equal, every baseline method setting kept, the rest IMAGINE's own fields."""
    import dataclasses

    import yaml

    from composir.methods.qformer_fusion import QFormerFusionConfig
    from helpers import CONFIG

    covr2 = yaml.safe_load((CONFIG.parent / "covr2-webvid-covr.yaml").read_text())
    imagine = yaml.safe_load((CONFIG.parent / "imagine-webvid-covr.yaml").read_text())
    for section in ("data", "encoder", "train"):
        assert imagine[section] == covr2[section], section
    baseline_fields = {f.name for f in dataclasses.fields(QFormerFusionConfig)}
    own = {k: v for k, v in imagine["method"]["config"].items() if k in baseline_fields}
    assert own == _covr2_method_config()
    assert imagine["method"]["name"] == "imagine"


@pytest.mark.parametrize("assignment", ["competitive_soft", "hard", "batch_softmax"])
def test_the_epoch_update_from_running_sums_is_one_update_with_the_whole_epoch(assignment):
    """Three batches accumulated, then applied: the same prototypes as one update with the three
    batches' features together (nothing of the epoch held but K x width sums)."""
    gen = torch.Generator().manual_seed(4)
    init = torch.randn(5, 6, generator=gen)
    batches = [torch.randn(7, 6, generator=gen) + 2 for _ in range(3)]
    rule = {"assignment": assignment, "centre": False, "init_mode": "query_tokens"}
    streamed = PrototypeLibrary(init, momentum=0.6, temperature=0.3, **rule)
    whole = PrototypeLibrary(init, momentum=0.6, temperature=0.3, **rule)
    for batch in batches:
        streamed.accumulate(batch)
    torch.testing.assert_close(streamed.prototypes, whole.prototypes)  # nothing moves within the epoch
    streamed.apply_epoch()
    whole.update(torch.cat(batches))
    torch.testing.assert_close(streamed.prototypes, whole.prototypes, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(streamed.prototypes, init, atol=1e-3)
    assert int(streamed.epoch_count) == 0 and float(streamed.epoch_mass.abs().sum()) == 0  # the next epoch starts empty


def test_the_epoch_update_centres_with_the_epochs_mean():
    gen = torch.Generator().manual_seed(5)
    library = PrototypeLibrary(torch.randn(4, 6, generator=gen), momentum=0.9, temperature=0.1)
    first = torch.randn(8, 6, generator=gen)
    library.accumulate(first)  # the first features: the mean and the k-means++ placement
    torch.testing.assert_close(library.mean, first.mean(0))
    rest = torch.randn(8, 6, generator=gen) + 3
    library.accumulate(rest)
    library.apply_epoch()
    torch.testing.assert_close(library.mean, torch.cat([first, rest]).mean(0))


def test_imagine_updates_its_libraries_once_per_epoch_by_default():
    model = _model()
    assert model.config.update_every == "epoch"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    snapshots = []
    for _ in range(3):  # an epoch of three steps
        model.train()
        sum(model.losses(_distinct_batch()).values()).backward()
        opt.step()
        opt.zero_grad()
        model.after_step(0)
        assert model._pending_updates == []  # no features held past the step
        snapshots.append(model.text_library.prototypes.clone())
    torch.testing.assert_close(snapshots[1], snapshots[0])  # placed on the first features, then still
    torch.testing.assert_close(snapshots[2], snapshots[0])
    model.after_epoch(0)
    assert not torch.allclose(model.text_library.prototypes, snapshots[0], atol=1e-4)
