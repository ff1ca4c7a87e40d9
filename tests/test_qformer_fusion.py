"""qformer_fusion: the first baseline unchanged by default, and each CoVR-2 switch doing what
CoVR-2's code does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from composir.encoders import build_encoder
from composir.methods import build_method
from composir.runs.checkpoint import model_state

ENC = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4, "vision_layers": 1, "qformer_layers": 1}
TEXTS = ["make it night", "add a red circle", "freeze everything", "move the cat"]


def _method(**config):
    torch.manual_seed(0)
    return build_method("qformer_fusion", build_encoder("tiny", config=ENC), config)


def _video(n=4, frames=3, seed=1):
    return torch.randn(n, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_defaults_are_the_first_baseline():
    method = _method().eval()
    frames, tokens = _video(frames=1), method.encoder.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(
            method.encode_query(frames, tokens), F.normalize(method.encoder.encode_query(frames, tokens), dim=-1)
        )
        torch.testing.assert_close(
            method.encode_target(frames), F.normalize(method.encoder.encode_image(frames), dim=-1)
        )


def test_token_norm_normalises_each_query_token_before_the_mean():
    method = _method(token_norm=True).eval()
    enc = method.encoder
    frames, tokens = _video(frames=1), enc.tokenize(TEXTS)
    with torch.no_grad():
        hidden = enc.fusion_hidden(frames, tokens)
        expected = F.normalize(F.normalize(enc.project_text(hidden[:, :4]), dim=-1).mean(1), dim=-1)
        torch.testing.assert_close(method.encode_query(frames, tokens), expected)
        target = F.normalize(F.normalize(enc.project_image(enc.image_query_outputs(frames)), dim=-1).mean(1), dim=-1)
        torch.testing.assert_close(method.encode_target(frames), target)
        assert not torch.allclose(expected, _method().eval().encode_query(frames, tokens))


def test_covr2_scores_the_mean_of_unit_tokens_without_normalising_it_again():
    method = _method(token_norm=True, renormalize_mean=False).eval()
    enc = method.encoder
    frames, tokens = _video(frames=1), enc.tokenize(TEXTS)
    with torch.no_grad():
        hidden = enc.fusion_hidden(frames, tokens)
        expected = F.normalize(enc.project_text(hidden[:, :4]), dim=-1).mean(1)  # CoVR-2's blip2_cir.py
        query = method.encode_query(frames, tokens)
        torch.testing.assert_close(query, expected)
        target = method.encode_target(frames)
        torch.testing.assert_close(
            target, F.normalize(enc.project_image(enc.image_query_outputs(frames)), dim=-1).mean(1)
        )
        assert (query.norm(dim=-1) < 1 - 1e-4).all()  # a mean of unit vectors, left as it is
        renormalised = _method(token_norm=True).eval()
        renormalised.load_state_dict(method.state_dict())
        assert not torch.allclose(renormalised.encode_target(frames), target)


def test_frozen_targets_stay_put_while_the_query_side_trains_and_are_not_saved():
    method = _method(frozen_targets=True).train()
    frames, tokens = _video(frames=1), method.encoder.tokenize(TEXTS)
    with torch.no_grad():
        method.eval()
        target_before, query_before = method.encode_target(frames), method.encode_query(frames, tokens)
        method.train()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1.0)
    loss = sum(method({"reference": frames, "target": _video(frames=1, seed=2), "tokens": tokens}).values())
    loss.backward()
    assert all(p.grad is None for p in method.target_encoder.parameters())
    opt.step()
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.encode_target(frames), target_before)
        assert not torch.allclose(method.encode_query(frames, tokens), query_before)
    assert not method.target_encoder.training  # eval even while the method trains
    assert not any(k.startswith("target_encoder.") for k in model_state(method, save_frozen=False))
    assert method.ddp_find_unused_parameters


def test_caption_term_uses_the_targets_captions():
    method = _method(caption_weight=0.5).eval()
    collate = method.collator()
    items = [
        {
            "index": i,
            "reference": _video(1, 1, seed=i)[0],
            "target": _video(1, 1, seed=10 + i)[0],
            "text": TEXTS[i],
            "target_id": f"t{i}",
            "extra": {"target_caption": f"a caption number {i}"},
        }
        for i in range(4)
    ]
    batch = collate(items)
    assert torch.equal(
        batch["target_caption"].ids, method.encoder.tokenize([f"a caption number {i}" for i in range(4)]).ids
    )
    with torch.no_grad():
        losses = method.losses(batch)
        other = method.losses({**batch, "target_caption": method.encoder.tokenize(["x", "y", "z", "w"])})
    assert set(losses) == {"contrastive", "caption"}
    assert not torch.isclose(losses["caption"], other["caption"])
    torch.testing.assert_close(losses["contrastive"], other["contrastive"])


def test_middle_reference_frame_and_target_frames_pooled_as_embeddings():
    method = _method(reference_frames="middle", target_pooling="embedding").eval()
    video, tokens = _video(frames=3), method.encoder.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(method.encode_query(video, tokens), method.encode_query(video[:, 1:2], tokens))
        per_frame = torch.stack([method.encode_target(video[:, t : t + 1]) for t in range(3)], 1)
        torch.testing.assert_close(method.encode_target(video), F.normalize(per_frame.mean(1), dim=-1))
        default = _method().eval()
        assert not torch.allclose(default.encode_query(video, tokens), method.encode_query(video, tokens))


def test_bad_switch_values_are_named():
    from composir.errors import ConfigError

    with pytest.raises(ConfigError, match="reference_frames"):
        _method(reference_frames="first")
    with pytest.raises(ConfigError, match="target_pooling"):
        _method(target_pooling="max")
