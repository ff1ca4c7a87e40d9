"""ConText-CIR: noun phrases, their token spans, the concept-consistency loss, the reference negative."""

from __future__ import annotations

import pytest
import torch

from composir.data.noun_phrases import NounPhrases
from composir.encoders import build_encoder
from composir.methods import build_method
from composir.methods.context_cir import concept_consistency

ENC = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4, "vision_layers": 1, "qformer_layers": 1}
TEXTS = [
    "make the dress red and add a small blue circle",
    "remove it",  # no noun phrase that names anything (a pronoun)
    "turn the red triangle into a circle and use a pink background",
]


def _method(**config):
    torch.manual_seed(0)
    return build_method("context_cir", build_encoder("tiny", config=ENC), {"layers": 2, "heads": 2, **config})


def _items(texts, refs=None, targets=None):
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "index": i,
            "reference": torch.randn(1, 3, 64, 64, generator=gen),
            "target": torch.randn(1, 3, 64, 64, generator=gen),
            "text": t,
            "query_id": str(i),
            "reference_id": (refs or [f"r{j}" for j in range(len(texts))])[i],
            "target_id": (targets or [f"t{j}" for j in range(len(texts))])[i],
            "extra": {},
        }
        for i, t in enumerate(texts)
    ]


def test_noun_phrases_by_character_span_and_cached(tmp_path):
    cache = tmp_path / "spans.json"
    phrases = NounPhrases(cache_file=cache)
    spans = phrases(TEXTS)
    assert [[TEXTS[0][a:b] for a, b in spans[0]]] == [["the dress", "a small blue circle"]]
    assert spans[1] == []  # "it" names nothing
    assert [TEXTS[2][a:b] for a, b in spans[2]] == ["the red triangle", "a circle", "a pink background"]
    phrases.save()
    again = NounPhrases(model="no-such-pipeline", cache_file=cache)  # never loads a pipeline: all cached
    assert again(TEXTS) == spans


def test_concept_consistency_loss():
    a = torch.tensor([[0.1, 0.5, 0.4], [0.2, 0.2, 0.6]])
    assert float(concept_consistency(a, a.clone(), 0.05)) == 0.0
    # Differences within the margin (after scaling each map to max 1) cost nothing...
    assert float(concept_consistency(a, a * 1.0 + torch.tensor([0.0, 0.0, 0.01]), 0.05)) == 0.0
    # ...beyond it they do, by the excess: scaled maps [0.2, 1, 0.8] vs [1, 0.2, 0.8] -> (0.75 + 0.75 + 0) / 3.
    b = torch.tensor([[0.5, 0.1, 0.4]])
    assert float(concept_consistency(a[:1], b, 0.05)) == pytest.approx((0.75 + 0.75) / 3)
    assert float(concept_consistency(a[:0], b[:0], 0.05)) == 0.0  # no concepts


def test_collator_maps_concepts_to_their_tokens():
    method = _method()
    batch = method.collator()(_items(TEXTS))
    assert batch["concept_row"].tolist() == [0, 0, 2, 2, 2]
    tokens = batch["tokens"]
    for row, spans in enumerate(batch["concepts"]):
        for start, end in spans:
            pieces = [TEXTS[row][a:b] for a, b in (tokens.offsets[row][i] for i in tokens.token_span(row, start, end))]
            assert " ".join(pieces) == TEXTS[row][start:end]
    assert batch["concept_tokens"].ids.shape[0] == 5
    capped = _method(max_concepts=1).collator()(_items(TEXTS))
    assert [len(s) for s in capped["concepts"]] == [1, 0, 1] and capped["concept_row"].tolist() == [0, 2]


@pytest.mark.parametrize("name", ["tiny", "openclip", "blip2"])
def test_concept_spans_cover_split_words_in_every_tokenizer(name, tmp_path):
    from helpers import OPENCLIP_TINY, _hub_blip2

    if name == "blip2":
        enc = build_encoder("blip2", pretrained=str(_hub_blip2(tmp_path)[1]))
    elif name == "openclip":
        enc = build_encoder("openclip", config={"model": "composir-test-vit", "model_config": OPENCLIP_TINY})
    else:
        enc = build_encoder("tiny")
    text = "put a turquoise parallelogram beside the circle"
    spans = NounPhrases()([text])[0]
    tokens = enc.tokenize([text])
    for start, end in spans:
        positions = tokens.token_span(0, start, end)
        covered = "".join(text[a:b] for a, b in (tokens.offsets[0][i] for i in positions))
        assert covered == text[start:end].replace(" ", ""), (name, covered)
    assert len(spans) == 2


def test_concept_loss_trains_maps_to_agree():
    method = _method(cc_weight=1.0, margin=0.0).train()
    batch = method.collator()(_items(TEXTS))
    optimizer = torch.optim.Adam(method.fusion.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = method(batch)["concept"]
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0]


def test_no_concepts_no_concept_loss_and_no_crash():
    method = _method()
    batch = method.collator()(_items(["remove it", "do it"]))
    assert batch["concept_tokens"] is None
    out = method(batch)
    assert float(out["concept"]) == 0.0
    sum(out.values()).backward()


def test_reference_is_an_extra_negative_unless_it_is_the_target():
    with_neg, without = _method(cc_weight=0.0).eval(), _method(cc_weight=0.0, reference_negative=False).eval()
    batch = with_neg.collator()(_items(TEXTS[:1]))
    with torch.no_grad():
        assert float(without(batch)["contrastive"]) == pytest.approx(0.0, abs=1e-6)  # one query, one target
        assert float(with_neg(batch)["contrastive"]) > 0.01  # its reference competes with the target
        same = with_neg.collator()(_items(TEXTS[:1], refs=["x"], targets=["x"]))
        assert float(with_neg(same)["contrastive"]) == pytest.approx(0.0, abs=1e-6)  # masked


@pytest.mark.parametrize("name", ["openclip", "blip2"])
def test_trains_on_other_encoders(name, tmp_path):
    from helpers import OPENCLIP_TINY, _hub_blip2

    torch.manual_seed(0)
    if name == "openclip":
        enc = build_encoder("openclip", config={"model": "composir-test-vit", "model_config": OPENCLIP_TINY})
    else:
        enc = build_encoder("blip2", pretrained=str(_hub_blip2(tmp_path)[1]))
    # Margin 0: at init each of CLIP's 77 positions (padding attended) gets ~1/77 of a patch's
    # attention, and map differences stay under the paper's 0.05 until attention sharpens.
    method = build_method("context_cir", enc, {"layers": 1, "heads": 2, "margin": 0.0})
    items = _items(TEXTS)
    for item in items:  # this encoder's image size
        item["reference"] = torch.randn(1, 3, enc.image_size, enc.image_size)
        item["target"] = torch.randn(1, 3, enc.image_size, enc.image_size)
    out = method(method.collator()(items))
    assert float(out["concept"].detach()) > 0
    sum(out.values()).backward()
    assert method.fusion.blocks[0].attention.in_proj_weight.grad.abs().sum() > 0
    _, image = enc.image_tokens(items[0]["reference"][None])
    torch.testing.assert_close(image, enc.encode_image(items[0]["reference"][None]))


def _phrase_map(fusion, text: torch.Tensor, mask: torch.Tensor, patches: torch.Tensor, phrase: slice) -> torch.Tensor:
    """The phrase's concept map (P,): each patch's attention on the phrase's tokens, averaged over
    them (both fusions lay their maps out (B, L, P), per token)."""
    with torch.no_grad():
        _, attention = fusion(text, mask, patches)
    return attention[0, phrase].mean(0)


@pytest.mark.parametrize(("direction", "competes"), [("image_to_text", True), ("text_to_image", False)])
def test_only_in_the_authors_direction_do_other_words_compete_for_a_phrases_attention(direction, competes):
    """The property the concept loss is about: a phrase's map in context differs from its map alone
    when the sentence's other words take part of each patch's attention (image -> text), and cannot
    differ when each token attends to the patches on its own (text -> image). The phrase's token
    features are the same in both texts, so only the fusion's direction is tested."""
    from composir.methods.context_cir import ConceptFusion, ConTextCIRConfig, TextConditionedPatches

    torch.manual_seed(0)
    cfg = ConTextCIRConfig(layers=2, heads=2, direction=direction)
    if direction == "image_to_text":
        fusion = TextConditionedPatches(16, 12, 16, cfg, 8).eval()
    else:
        fusion = ConceptFusion(16, 12, 16, 2, 2, 8).eval()
    phrase, other, patches = torch.randn(1, 3, 16), torch.randn(1, 3, 16), torch.randn(1, 5, 12)
    alone = _phrase_map(fusion, torch.cat([phrase, torch.zeros(1, 3, 16)], 1),
                        torch.tensor([[1, 1, 1, 0, 0, 0]]), patches, slice(0, 3))  # fmt: skip
    in_context = _phrase_map(fusion, torch.cat([phrase, other], 1), torch.ones(1, 6, dtype=torch.long),
                             patches, slice(0, 3))  # fmt: skip
    assert (not torch.allclose(alone, in_context, atol=1e-4)) == competes


def test_with_padding_masked_the_padding_takes_no_attention():
    from composir.methods.context_cir import ConTextCIRConfig, TextConditionedPatches

    torch.manual_seed(1)
    fusion = TextConditionedPatches(16, 12, 16, ConTextCIRConfig(layers=2, heads=2, text_padding="masked"), 8).eval()
    text, patches = torch.randn(1, 4, 16), torch.randn(1, 5, 12)
    padded = torch.cat([text, torch.randn(1, 3, 16)], 1)  # padding positions with features of their own
    with torch.no_grad():
        short, short_maps = fusion(text, torch.ones(1, 4, dtype=torch.long), patches)
        long, long_maps = fusion(padded, torch.tensor([[1, 1, 1, 1, 0, 0, 0]]), patches)
    torch.testing.assert_close(long, short)
    torch.testing.assert_close(long_maps[:, :4], short_maps)
    assert float(long_maps[:, 4:].abs().max()) == 0.0


def test_with_padding_attended_the_padding_positions_take_attention_and_change_the_query():
    """``text_padding: attended`` (the authors' code): patches attend to the padding positions too,
    so their features change the query, and a phrase's map shares each patch's attention with them."""
    from composir.methods.context_cir import ConTextCIRConfig, TextConditionedPatches

    torch.manual_seed(1)
    fusion = TextConditionedPatches(16, 12, 16, ConTextCIRConfig(layers=2, heads=2, text_padding="attended"), 8)
    fusion.eval()
    text, patches = torch.randn(1, 4, 16), torch.randn(1, 5, 12)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        short, short_maps = fusion(text, torch.ones(1, 4, dtype=torch.long), patches)
        long, long_maps = fusion(torch.cat([text, torch.randn(1, 3, 16)], 1), mask, patches)
    assert float(long_maps[:, 4:].sum(0).min()) > 0.0  # every padding position has some patch's attention
    torch.testing.assert_close(long_maps.sum(1), torch.ones(1, 5))  # each patch's attention sums to 1 over all 7
    assert float(long_maps[:, :4].sum()) < float(short_maps.sum())  # the words lose attention to the padding
    assert not torch.allclose(long, short, atol=1e-4)


def test_the_authors_direction_is_the_default_and_its_loss_reads_raw_maps(monkeypatch):
    """The query is the pooled text-conditioned patches (no image feature added); the concept loss
    is computed on the raw maps (max-scaling them changes it)."""
    from composir.methods import context_cir

    context, alone = torch.tensor([[0.02, 0.30, 0.10]]), torch.tensor([[0.10, 0.10, 0.10]])
    raw = context_cir.concept_consistency(context, alone, 0.05, max_scaled=False)
    assert float(raw) == pytest.approx((0.03 + 0.15 + 0.0) / 3)
    assert float(context_cir.concept_consistency(context, alone, 0.05, max_scaled=True)) != pytest.approx(float(raw))
    for direction, scaled in (("image_to_text", False), ("text_to_image", True)):
        method = _method(direction=direction) if direction != "image_to_text" else _method()
        assert method.config.direction == direction
        assert method.config.text_padding == "attended"  # the authors' code masks no padding
        seen: list[bool] = []
        real = context_cir.concept_consistency

        def recorded(*args, seen=seen, real=real, **kwargs):
            seen.append(args[3] if len(args) > 3 else kwargs["max_scaled"])
            return real(*args, **kwargs)

        monkeypatch.setattr(context_cir, "concept_consistency", recorded)
        method.losses(method.collator()(_items(TEXTS)))
        monkeypatch.undo()
        assert seen == [scaled]
        torch.manual_seed(0)
        patches, image = torch.randn(2, 5, method.fusion.patch_in.in_features), torch.randn(2, method.encoder.embed_dim)
        tokens = method.encoder.tokenize(TEXTS[:2])
        method.eval()
        with torch.no_grad():
            with_image = method.compose(patches, image, tokens)[0]
            without = method.compose(patches, torch.zeros_like(image), tokens)[0]
        # The authors' query is the pooled text-conditioned patches: the image feature is not added.
        assert torch.allclose(with_image, without) == (direction == "image_to_text")


def test_concept_map_shift_is_the_distance_between_a_phrases_maps(synth_root, monkeypatch):
    from composir.data import load_benchmark

    method = _method().eval()
    bench = load_benchmark("synthetic", synth_root, "val")
    shift = method.validation_metrics(bench, 1)["concept map shift"]
    assert 0.0 < shift < 100.0  # a real model's phrases attend somewhat differently in their sentence
    maps = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.3, 0.3]])
    monkeypatch.setattr(method, "concept_maps", lambda batch, memory, attention: (maps, maps * 3))
    assert method.validation_metrics(bench, 1)["concept map shift"] == pytest.approx(0.0, abs=1e-4)  # same distribution
    apart = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.3, 0.3]])
    monkeypatch.setattr(method, "concept_maps", lambda batch, memory, attention: (maps, apart))
    assert method.validation_metrics(bench, 1)["concept map shift"] == pytest.approx(50.0)  # one of two disjoint


def test_an_unknown_text_padding_is_one_clear_config_error():
    from composir.errors import ConfigError
    from composir.methods.context_cir import ConTextCIRConfig

    with pytest.raises(ConfigError, match=r"context_cir\.text_padding must be one of"):
        ConTextCIRConfig(text_padding="ignored").validate()
