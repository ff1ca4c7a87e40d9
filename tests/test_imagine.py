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


def test_momentum_update_by_hand():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    lib = PrototypeLibrary(protos, momentum=0.9, temperature=0.5, update="momentum")
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # cos(g_i, p_j): [[1, 0], [0, 1], [0.7071, 0.7071]]; softmax over the batch (dim 0) of cos / 0.5.
    cos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2**-0.5, 2**-0.5]])
    a = torch.softmax(cos / 0.5, dim=0)
    expected = 0.9 * protos + 0.1 * (a.T @ g)
    lib.update(g)
    torch.testing.assert_close(lib.prototypes, expected)
    # Prototype 0 moves towards the sample it matches best (g_0 = [2, 0]).
    assert lib.prototypes[0, 0] > 1.0
    replace = PrototypeLibrary(protos, 0.9, 0.5, "replace")
    replace.update(g)
    torch.testing.assert_close(replace.prototypes, a.T @ g)
    static = PrototypeLibrary(protos, 0.9, 0.5, "static")
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


def test_confidence_in_open_unit_interval_and_initial_identity():
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        out = model.compose(batch["reference"], batch["tokens"])
    c = out["confidence"]
    assert c.shape == (4, 1) and ((c > 0) & (c < 1)).all()
    # Zero-initialised modulation: at start the composed feature equals the concrete one.
    torch.testing.assert_close(out["composed"], out["concrete"])


def test_video_input_and_losses():
    model = _model().train()
    losses = model.losses(_batch(frames=3))
    assert set(losses) == {"concrete", "schema"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


SWITCHES = [
    {"selection": "random"},
    {"selection": "all"},
    {"update": "replace"},
    {"update": "static"},
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
        values.append(loss.detach())
    model.eval()
    with torch.no_grad():
        values.append(model.encode_query(batch["reference"], batch["tokens"]).flatten())
        values.append(model.visual_library.prototypes.flatten())
    return values


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_switch_changes_the_computation(switch):
    base = _fingerprint(_model())
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
