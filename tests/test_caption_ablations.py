"""Measuring what captions carry: gallery captions changed at test time (empty, shuffled, noisy),
CSMCIR's captionless symmetric tower, and the caption-aware asymmetric baseline (late fusion)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from composir.data import load_benchmark
from composir.encoders import build_encoder
from composir.errors import ConfigError
from composir.experiments.captions import ATTRIBUTE_KINDS, noisy_caption, perturb_gallery_captions
from composir.methods import build_method
from composir.methods.claims import Variant
from helpers import TEXTS, method_batch

ENC = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4, "vision_layers": 1, "qformer_layers": 1}
WORDS = sorted({w for words in ATTRIBUTE_KINDS.values() for w in words}, key=len, reverse=True)


def _attributes(caption: str) -> list[str]:
    return re.findall(r"\b(" + "|".join(map(re.escape, WORDS)) + r")\b", caption)


def test_gallery_captions_empty_shuffled_and_noisy(synth_root):
    bench = load_benchmark("synthetic", synth_root, "test")
    given = [item.caption for item in bench.gallery]
    assert all(given) and len(set(given)) > len(given) // 2
    texts = [q.text for q in bench.queries]

    assert perturb_gallery_captions(bench, "as_given") is bench
    assert {item.caption for item in perturb_gallery_captions(bench, "empty").gallery} == {""}
    shuffled = [item.caption for item in perturb_gallery_captions(bench, "shuffled", seed=1).gallery]
    assert sorted(shuffled) == sorted(given)
    assert all(item.caption is not own for item, own in zip(perturb_gallery_captions(bench, "shuffled").gallery, given))
    assert sum(a == b for a, b in zip(shuffled, given)) < len(given) // 10  # only repeats of a caption stay equal

    flipped = [item.caption for item in perturb_gallery_captions(bench, "noise-1.0", seed=2).gallery]
    for old, new in zip(given, flipped):
        a, b = _attributes(old), _attributes(new)
        assert len(a) == len(b) and all(x != y for x, y in zip(a, b))  # every attribute word changed ...
    some = [item.caption for item in perturb_gallery_captions(bench, "noise-0.2", seed=3).gallery]
    changed = [x != y for old, new in zip(given, some) for x, y in zip(_attributes(old), _attributes(new))]
    assert 0.12 < sum(changed) / len(changed) < 0.28  # ... or about one in five of them
    # The benchmark itself, its queries and their texts are left as they were.
    assert [item.caption for item in bench.gallery] == given and [q.text for q in bench.queries] == texts


def test_noise_keeps_each_word_in_its_kind():
    gen = __import__("numpy").random.default_rng(0)
    out = noisy_caption("a small red circle on a light blue background", 1.0, gen)
    size, colour, shape, background = _attributes(out)
    assert size == "large" and colour in ATTRIBUTE_KINDS["colour"] and colour != "red"
    assert shape in ATTRIBUTE_KINDS["shape"] and shape != "circle"
    assert background in ATTRIBUTE_KINDS["background"] and background != "light blue"


def test_a_test_time_caption_mode_is_scored_apart_but_trained_once():
    given, empty = Variant("csmcir"), Variant("csmcir", gallery_captions="empty")
    assert given.key != empty.key and given.training_key == empty.training_key
    assert Variant("csmcir", gallery_captions="noise-0.2").key != Variant("csmcir", gallery_captions="noise-0.4").key
    for bad in ("noisy", "noise-0", "noise-1.5", "noise-x", "empty-1"):
        with pytest.raises(ConfigError, match="gallery_captions"):
            Variant("csmcir", gallery_captions=bad)


def _frames(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def test_the_captionless_symmetric_tower_reads_no_caption():
    torch.manual_seed(0)
    method = build_method("csmcir", build_encoder("tiny", config=ENC), {"target_side": "image_fused", "bank": "none"})
    method.eval()
    frames, enc = _frames(), method.encoder
    captions = enc.tokenize(TEXTS[:4])
    assert not method.target_text and "target_caption" not in method_batch(method, enc)
    # The query's own fusion of the target with an empty text, whatever caption is offered.
    empty = method.encode_query(frames, enc.tokenize([""] * 4))
    torch.testing.assert_close(method.encode_target(frames, captions), empty)
    torch.testing.assert_close(method.encode_target(frames), empty)
    captioned = build_method("csmcir", enc, {"bank": "none"}).eval()
    assert not torch.allclose(captioned.encode_target(frames, captions), captioned.encode_target(frames))


def test_the_late_fusion_baseline_adds_the_caption_feature():
    torch.manual_seed(0)
    method = build_method("qformer_fusion", build_encoder("tiny", config=ENC), {"target_caption": "late"}).eval()
    frames, enc = _frames(), method.encoder
    captions = enc.tokenize(TEXTS[:4])
    assert method.target_text
    image = build_method("qformer_fusion", enc).eval().encode_target(frames)
    expected = F.normalize(image + F.normalize(enc.encode_text(captions), dim=-1), dim=-1)
    torch.testing.assert_close(method.encode_target(frames, captions), expected)
    assert not torch.allclose(method.encode_target(frames, captions), method.encode_target(frames))
    # Training reads the batch's captions: other captions, another loss.
    batch = method_batch(method, enc)
    assert "target_caption" in batch
    other = {**batch, "target_caption": enc.tokenize(["a green square on a snow background"] * len(TEXTS))}
    assert not torch.allclose(method.losses(batch)["contrastive"], method.losses(other)["contrastive"])


@pytest.mark.parametrize(
    ("method", "config", "message"),
    [
        ("qformer_fusion", {"target_caption": "early"}, "target_caption"),
        ("qformer_fusion", {"target_caption": "late", "scoring": "max_target_tokens"}, "scores tokens"),
        ("imagine", {"target_caption": "late"}, "target_caption must be none"),
        ("csmcir", {"target_side": "caption"}, "target_side"),
    ],
)
def test_caption_settings_are_checked(method, config, message):
    with pytest.raises(ConfigError, match=message):
        build_method(method, build_encoder("tiny", config=ENC), config)


def test_attribute_accuracy_counts_each_gold_word_once():
    from composir.experiments.captions import attribute_accuracy

    gold = ["a large red circle and a large red cross on a light blue background"]
    assert attribute_accuracy(gold, gold) == 100.0
    # 8 gold words (large, red, circle, large, red, cross, light blue); "blue" is not "light blue".
    said = ["a large red circle and a small blue cross on a blue background"]
    assert attribute_accuracy(said, gold) == pytest.approx(100 * 4 / 7)
    assert attribute_accuracy(["a red red red red"], ["a red circle"]) == pytest.approx(50.0)
