"""What the peers' own inference code computes, restated from it on a random BLIP-2 in the hub's
layout, against composir's methods: SPRC (chunmeifeng/SPRC ``Blip2QformerCirAlignPrompt.inference``
and ``extract_target_features``) and CoVR-2 (lucas-ventura/CoVR ``src/test/blip2/cirr_val.py``).

The restatements call the transformers model's own modules in the order the peers' code calls
LAVIS's (LAVIS ``Qformer.bert(ids, query_embeds=...)`` = transformers ``embeddings`` then
``qformer``; ``ln_vision(visual_encoder(x))`` = ``vision_model(x).last_hidden_state`` with the
post-LayerNorm at LAVIS's eps 1e-5, for the converted peers), never composir's encoder helpers.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from composir.encoders import build_encoder
from composir.methods import build_method
from composir.methods.scoring import similarity
from helpers import _hub_blip2

TEXTS = ["make it red", "add a cat", "make the dog blue", "a night"]


def _ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.long)


def _fused(model, reference_embeds, ids, mask):
    """LAVIS ``Qformer.bert(ids, query_embeds=query_tokens, attention_mask, encoder_hidden_states=...)``."""
    queries = model.query_tokens.expand(len(ids), -1, -1)
    return model.qformer(
        query_embeds=model.embeddings(input_ids=ids, query_embeds=queries),
        query_length=queries.shape[1],
        attention_mask=torch.cat([_ones(queries), mask], dim=1),
        encoder_hidden_states=reference_embeds,
        encoder_attention_mask=_ones(reference_embeds),
    ).last_hidden_state


def _target_tokens(model, images):
    """``extract_target_features``: unit vision_proj of the query outputs, (B, 32, D)."""
    embeds = model.vision_model(pixel_values=images).last_hidden_state
    queries = model.query_tokens.expand(len(images), -1, -1)
    out = model.qformer(query_embeds=queries, encoder_hidden_states=embeds, encoder_attention_mask=_ones(embeds))
    return F.normalize(model.vision_projection(out.last_hidden_state), dim=-1)


def sprc_inference(model, references, targets, ids, mask):
    """SPRC's ``inference``: the fused pass, a second pass of [its query outputs; text] with no
    image (every position through the text feed-forward), the text's first token projected; the
    score is the best of the target's query tokens."""
    q = model.config.num_query_tokens
    fused = _fused(model, model.vision_model(pixel_values=references).last_hidden_state, ids, mask)
    second = model.qformer(
        query_embeds=model.embeddings(input_ids=ids, query_embeds=fused[:, :q]),
        query_length=0,
        attention_mask=torch.cat([_ones(fused[:, :q]), mask], dim=1),
    ).last_hidden_state
    query = F.normalize(model.text_projection(second[:, q]), dim=-1)
    target = _target_tokens(model, targets)
    return query, target, torch.einsum("nd,mkd->nmk", query, target).amax(-1)


def covr2_cirr_scores(model, references, targets, ids, mask):
    """CoVR-2's ``ValCirr``: unit text_proj of the fused query tokens against the unit target
    tokens, the maximum over every (query token, target token) pair."""
    q = model.config.num_query_tokens
    fused = _fused(model, model.vision_model(pixel_values=references).last_hidden_state, ids, mask)
    query = F.normalize(model.text_projection(fused[:, :q]), dim=-1)
    target = _target_tokens(model, targets)
    return torch.einsum("iqe,jke->ijqk", query, target).amax(-1).amax(-1)


def _setup(tmp_path, **config):
    model, hub = _hub_blip2(tmp_path)
    encoder = build_encoder("blip2", pretrained=str(hub), config={"max_text_length": 32})
    method = build_method("qformer_fusion", encoder, config).eval()
    g = torch.Generator().manual_seed(3)
    references, targets = torch.randn(4, 3, 32, 32, generator=g), torch.randn(6, 3, 32, 32, generator=g)
    tokens = encoder.tokenize(TEXTS)
    return model.eval(), method, references, targets, tokens


@torch.no_grad()
def test_sprc_query_target_and_scores_are_sprcs(tmp_path):
    model, method, references, targets, tokens = _setup(tmp_path, query_pool="sprc", scoring="max_target_tokens")
    method.use_scoring("cirr")
    query = method.encode_query(references[:, None], tokens)
    target = method.encode_target(targets[:, None])
    want_query, want_target, want_scores = sprc_inference(model, references, targets, tokens.ids, tokens.mask)
    torch.testing.assert_close(query, want_query, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target, want_target, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(similarity(query, target), want_scores, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_sprc_second_pass_never_uses_the_query_feed_forward(tmp_path):
    """SPRC's BERT runs its query feed-forward only when image states are given; changing those
    weights must not move the query, changing the text feed-forward must."""
    _, method, references, _, tokens = _setup(tmp_path, query_pool="sprc", scoring="max_target_tokens")
    before = method.encode_query(references[:, None], tokens)
    fused = method.encoder.fusion_hidden(references[:, None], tokens)
    second = method.encoder.refine_with_text(fused[:, :4], tokens)
    for layer in method.encoder.model.qformer.encoder.layer:
        layer.intermediate_query.dense.weight.data.mul_(3.0)
    torch.testing.assert_close(method.encoder.refine_with_text(fused[:, :4], tokens), second)
    for layer in method.encoder.model.qformer.encoder.layer:
        layer.intermediate.dense.weight.data.mul_(3.0)
    assert not torch.allclose(method.encoder.refine_with_text(fused[:, :4], tokens), second, atol=1e-4)
    assert before.shape == (4, 16)


@torch.no_grad()
def test_covr2_ranks_cirr_by_the_best_token_pair(tmp_path):
    model, method, references, targets, tokens = _setup(
        tmp_path, token_norm=True, renormalize_mean=False, scoring_per_benchmark={"cirr": "max_token_pairs"}
    )
    assert method.use_scoring("cirr") == "max_token_pairs"
    scores = similarity(method.encode_query(references[:, None], tokens), method.encode_target(targets[:, None]))
    torch.testing.assert_close(
        scores, covr2_cirr_scores(model, references, targets, tokens.ids, tokens.mask), atol=1e-5, rtol=1e-5
    )
    # Elsewhere CoVR-2 scores the means of the unit tokens (src/test/blip2/webvid_covr.py).
    assert method.use_scoring("webvid-covr") == "vector"
    q = method.encode_query(references[:, None], tokens)
    assert q.shape == (4, 16)
    assert not torch.allclose(similarity(q, method.encode_target(targets[:, None])), scores, atol=1e-3)


def test_evaluation_ranks_each_benchmark_with_its_declared_scoring(synth_root):
    from composir.data import load_benchmark
    from composir.data.media import load_media
    from composir.eval.evaluate import evaluate

    bench = load_benchmark("synthetic", synth_root, "val")
    bench.queries = bench.queries[:12]
    torch.manual_seed(0)
    config = {"token_norm": True, "renormalize_mean": False, "scoring_per_benchmark": {"synthetic": "max_token_pairs"}}
    method = build_method("qformer_fusion", build_encoder("tiny", config={"num_query_tokens": 4}), config)
    result = evaluate(method, bench, batch_size=5, num_frames=1, progress=False)
    assert result.scoring == "max_token_pairs" and result.to_json()["scoring"] == "max_token_pairs"

    def frames(item):
        return torch.stack([method.encoder.preprocess(f) for f in load_media(item.path, 1, item.media_type)])[None]

    with torch.no_grad():
        gallery = torch.cat([method.encode_target(frames(g)) for g in bench.gallery])
        assert gallery.shape[1] == 4  # unit tokens, not their mean
        for q, ranking in zip(bench.queries, result.ranked_ids):
            query = method.encode_query(frames(bench.media_item(q.reference_id)), method.encoder.tokenize([q.text]))
            best = torch.einsum("qd,mkd->mqk", query[0], gallery).amax(dim=(1, 2))
            if bench.exclude_reference:
                best[[g.id for g in bench.gallery].index(q.reference_id)] = float("-inf")
            assert ranking[0] == bench.gallery[int(best.argmax())].id


# ---------------------------------------------------------------- preprocessing, restated
class _TargetPad:
    """CLIP4Cir's data_utils.TargetPad, restated."""

    def __init__(self, ratio):
        self.ratio = ratio

    def __call__(self, image):
        import torchvision.transforms.functional as TF

        w, h = image.size
        if max(w, h) / min(w, h) < self.ratio:
            return image
        scaled = max(w, h) / self.ratio
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        return TF.pad(image, [hp, vp, hp, vp], 0, "constant")


def _targetpad_transform(ratio, dim):
    """CLIP4Cir's (and SPRC's) ``targetpad_transform``."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    return Compose([_TargetPad(ratio), Resize(dim, interpolation=InterpolationMode.BICUBIC), CenterCrop(dim),
                    lambda im: im.convert("RGB"), ToTensor(), Normalize(mean, std)])  # fmt: skip


def _photos():
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    sizes = [(97, 40), (40, 97), (60, 50), (50, 50), (200, 161)]  # wide, tall, under 1.25, square, at 1.24
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()) for w, h in sizes]


def test_clip4cir_preprocessing_is_targetpad_then_clip(tmp_path):
    from helpers import OPENCLIP_TINY

    encoder = build_encoder("openclip", config={"model": "peer-vit", "model_config": OPENCLIP_TINY, "target_pad": 1.25})
    want = _targetpad_transform(1.25, 32)
    for photo in _photos():
        torch.testing.assert_close(encoder.preprocess(photo), want(photo), atol=1e-6, rtol=0)


def test_sprc_preprocessing_pads_resizes_the_shorter_side_and_crops(tmp_path):
    _, hub = _hub_blip2(tmp_path)
    encoder = build_encoder("blip2", pretrained=str(hub), config={"target_pad": 1.25, "resize": "shorter_side"})
    want = _targetpad_transform(1.25, 32)
    for photo in _photos():
        torch.testing.assert_close(encoder.preprocess(photo), want(photo), atol=1e-6, rtol=0)


def _blip_pre_caption(caption, max_words):
    """LAVIS's BlipCaptionProcessor.pre_caption, restated."""
    import re

    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def test_blip_texts_go_through_pre_caption(tmp_path):
    _, hub = _hub_blip2(tmp_path)
    encoder = build_encoder("blip2", pretrained=str(hub), config={"caption_words": 4})
    texts = ["Make it RED!!  (now)", "add a cat: the dog; night ~ blue", "  a   dog.  "]
    tokens = encoder.tokenize(texts)
    assert tokens.texts == [_blip_pre_caption(t, 4) for t in texts]
    plain = build_encoder("blip2", pretrained=str(hub)).tokenize([_blip_pre_caption(t, 4) for t in texts])
    assert torch.equal(tokens.ids, plain.ids)


def test_the_tiny_encoder_takes_the_same_preprocessing_switches():
    """Every registered encoder (blip2, openclip above; tiny here) pads, resizes and cleans texts
    as the peers do when asked: the tiny one's pixels through TargetPad then the shorter side, and
    its texts through pre_caption, equal those done by hand first."""
    from composir.encoders.preprocessing import target_pad

    size = {"width": 32, "embed_dim": 16, "heads": 2, "image_size": 32}
    plain = build_encoder("tiny", config=size)
    padded = build_encoder("tiny", config={**size, "target_pad": 1.25, "resize": "shorter_side", "caption_words": 4})
    by_hand = build_encoder("tiny", config={**size, "resize": "shorter_side"})
    for photo in _photos():
        torch.testing.assert_close(padded.preprocess(photo), by_hand.preprocess(target_pad(photo, 1.25)))
    wide = _photos()[0]
    assert not torch.allclose(padded.preprocess(wide), plain.preprocess(wide))
    texts = ["Make it RED!!  (now)", "add a cat: the dog; night ~ blue"]
    assert torch.equal(padded.tokenize(texts).ids, plain.tokenize([_blip_pre_caption(t, 4) for t in texts]).ids)


# ---------------------------------------------------------------- converting published checkpoints
class _CLIP4CirCombiner(torch.nn.Module):
    """ABaldrati/CLIP4Cir ``combiner.Combiner``, restated (its layout and its ``combine_features``)."""

    def __init__(self, dim, projection, hidden):
        super().__init__()
        self.text_projection_layer = torch.nn.Linear(dim, projection)
        self.image_projection_layer = torch.nn.Linear(dim, projection)
        self.combiner_layer = torch.nn.Linear(projection * 2, hidden)
        self.output_layer = torch.nn.Linear(hidden, dim)
        self.dynamic_scalar = torch.nn.Sequential(
            torch.nn.Linear(projection * 2, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.5),
            torch.nn.Linear(hidden, 1), torch.nn.Sigmoid(),
        )  # fmt: skip

    def combine_features(self, image, text):
        t = F.relu(self.text_projection_layer(text))
        i = F.relu(self.image_projection_layer(image))
        raw = torch.cat((t, i), -1)
        lam = self.dynamic_scalar(raw)
        return F.normalize(self.output_layer(F.relu(self.combiner_layer(raw))) + lam * text + (1 - lam) * image, dim=-1)


@torch.no_grad()
def test_clip4cir_checkpoints_convert_and_rank_as_clip4cir(tmp_path):
    import open_clip

    from composir.runs import load_run
    from composir.runs.convert import convert_clip4cir, write_run
    from helpers import OPENCLIP_TINY

    torch.manual_seed(0)
    encoder_config = {"model": "peer-rn", "model_config": OPENCLIP_TINY}
    clip = build_encoder("openclip", config={**encoder_config, "quick_gelu": True}).model.eval()
    state = {k: v.half() for k, v in clip.state_dict().items()}  # CLIP4Cir's files hold fp16 CLIP weights
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(49408))
    torch.save({"epoch": 3, "CLIP": state}, tmp_path / "clip.pt")
    combiner = _CLIP4CirCombiner(32, 64, 96).eval()
    torch.save({"epoch": 3, "Combiner": combiner.state_dict()}, tmp_path / "combiner.pt")

    run = write_run(
        convert_clip4cir(tmp_path / "clip.pt", tmp_path / "combiner.pt", encoder_config), tmp_path / "run", "test"
    )
    method, _ = load_run(run)
    assert isinstance(method.encoder.model.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)
    clip.load_state_dict({k: v.float() for k, v in state.items() if k in clip.state_dict()})
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = method.encoder.tokenize(TEXTS)
    want = combiner.combine_features(clip.encode_image(images), clip.encode_text(tokens.ids))  # raw features in
    torch.testing.assert_close(method.encode_query(images[:, None], tokens), want, atol=1e-5, rtol=1e-5)
    targets = F.normalize(clip.encode_image(images.flip(0)), dim=-1)
    torch.testing.assert_close(method.encode_target(images.flip(0)[:, None]), targets, atol=1e-5, rtol=1e-5)
    assert method.logit_scale.exp().item() == pytest.approx(100.0)
    assert method.encoder.target_pad == 1.25


def _lavis_layout(model, with_itm: bool) -> dict:
    """transformers' BLIP-2 weights in LAVIS's ``Blip2Base`` names, written from LAVIS's module
    tree (the inverse direction of composir's converter, written separately): EVA keeps q and v
    biases apart and has no k bias, so the k third of ``qkv.bias`` is zeroed in ``model`` first."""
    out = {}
    g = torch.Generator().manual_seed(11)
    for p in model.parameters():  # no zero biases or unit norms left: a swapped key must show
        p.data.add_(torch.randn(p.shape, generator=g) * 0.05)
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        k = key
        if ".self_attn.qkv.bias" in k:
            third = value.shape[0] // 3
            value[third : 2 * third] = 0
            layer = k.split(".")[3]
            out[f"visual_encoder.blocks.{layer}.attn.q_bias"] = value[:third].clone()
            out[f"visual_encoder.blocks.{layer}.attn.v_bias"] = value[2 * third :].clone()
            continue
        for a, b in [("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
                     ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
                     ("vision_model.embeddings.patch_embedding", "visual_encoder.patch_embed.proj"),
                     ("vision_model.post_layernorm", "ln_vision"),
                     ("vision_model.encoder.layers", "visual_encoder.blocks"),
                     (".layer_norm1", ".norm1"), (".layer_norm2", ".norm2"), (".self_attn.qkv", ".attn.qkv"),
                     (".self_attn.projection", ".attn.proj"),
                     ("qformer.layernorm", "Qformer.bert.embeddings.LayerNorm"),
                     ("embeddings.word_embeddings", "Qformer.bert.embeddings.word_embeddings"),
                     ("embeddings.position_embeddings", "Qformer.bert.embeddings.position_embeddings"),
                     ("qformer.encoder", "Qformer.bert.encoder"), ("attention.attention.", "attention.self."),
                     ("vision_projection", "vision_proj"), ("text_projection", "text_proj")]:  # fmt: skip
            if k.startswith(a) or (a.startswith((".", "attention.")) and a in k):
                k = k.replace(a, b, 1)
        if k.startswith("itm_head") and not with_itm:
            continue
        out[k] = value.clone()
    out["Qformer.bert.embeddings.position_ids"] = torch.arange(32)[None]
    out["Qformer.cls.predictions.bias"] = torch.zeros(64)
    out["temp"] = torch.tensor(0.05)
    for k in [k for k in out if k.startswith("visual_encoder.") and out[k].dim() > 1]:
        out[k] = out[k].half()  # the published files keep the ViT's linear and conv weights in fp16
    return out


def _fp16_vision(model):
    """The model as the peer's file holds it and LAVIS runs it: ViT matrices through fp16, and
    ``ln_vision`` a plain LayerNorm (eps 1e-5, where transformers' post_layernorm has 1e-6)."""
    for p in model.vision_model.parameters():
        if p.dim() > 1:
            p.data = p.data.half().float()
    model.vision_model.post_layernorm.eps = 1e-5
    return model


@torch.no_grad()
def test_sprc_checkpoint_converts_and_scores_as_sprc(tmp_path):
    from composir.runs import load_run
    from composir.runs.convert import convert_sprc, write_run

    model, hub = _hub_blip2(tmp_path)
    lavis = _lavis_layout(model, with_itm=True)
    lavis["prompt_tokens"] = torch.randn(1, 4, 32)
    torch.save({"epoch": 2, "Blip2QformerCirAlignPrompt": lavis}, tmp_path / "sprc.pt")
    run = write_run(convert_sprc(tmp_path / "sprc.pt", str(hub), heads=(2, 2)), tmp_path / "run", "test")
    method, _ = load_run(run)
    method.use_scoring("cirr")
    model = _fp16_vision(model.eval())
    g = torch.Generator().manual_seed(3)
    references, targets = torch.randn(4, 3, 32, 32, generator=g), torch.randn(6, 3, 32, 32, generator=g)
    tokens = method.encoder.tokenize(TEXTS)
    query, target = method.encode_query(references[:, None], tokens), method.encode_target(targets[:, None])
    want_query, want_target, want_scores = sprc_inference(model, references, targets, tokens.ids, tokens.mask)
    torch.testing.assert_close(query, want_query, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(target, want_target, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(similarity(query, target), want_scores, atol=1e-5, rtol=1e-5)
    assert method.logit_scale.exp().item() == pytest.approx(20.0)
    assert method.encoder.options.target_pad == 1.25 and method.encoder.options.max_text_length == 32


def _covr_scheduler():
    """A plain object pickled under CoVR's own import path, as its .ckpt files carry one."""
    import sys
    import types

    module = types.ModuleType("src.tools.scheduler")

    class CosineSchedule:
        def __init__(self):
            self.min_lr, self.init_lr, self.decay_rate, self.max_epochs = 0.0, 1e-5, 1.0, 5

    CosineSchedule.__module__, CosineSchedule.__qualname__ = "src.tools.scheduler", "CosineSchedule"
    module.CosineSchedule = CosineSchedule
    for name in ("src", "src.tools", "src.tools.scheduler"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["src.tools.scheduler"] = module
    return CosineSchedule()


def _converted_covr2(tmp_path):
    """A random CoVR-2 ``.ckpt`` in its published container, converted; with the LAVIS-layout
    model (ViT weights through fp16, as the file keeps them) and the COCO target model."""
    import sys

    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    from composir.runs.convert import convert_covr2, write_run
    from helpers import BLIP2_TINY

    model, hub = _hub_blip2(tmp_path)
    torch.manual_seed(7)
    coco = Blip2ForImageTextRetrieval(Blip2Config(**BLIP2_TINY)).eval()
    coco.query_tokens.data.normal_(0, 0.5)
    coco.save_pretrained(tmp_path / "coco")
    coco.vision_model.post_layernorm.eps = 1e-5  # CoVR-2 embedded its targets with LAVIS's ln_vision
    schedule = _covr_scheduler()
    try:
        torch.save({"epoch": 4, "model": _lavis_layout(model, with_itm=False), "optimizer": {}, "scheduler": schedule},
                   tmp_path / "covr2.ckpt")  # fmt: skip
    finally:
        for name in ("src.tools.scheduler", "src.tools", "src"):
            sys.modules.pop(name, None)
    converted = convert_covr2(tmp_path / "covr2.ckpt", str(hub), str(tmp_path / "coco"), heads=(2, 2))
    return write_run(converted, tmp_path / "run", "test"), _fp16_vision(model.eval()), coco


@torch.no_grad()
def test_covr2_checkpoint_converts_with_coco_targets_and_ranks_as_covr2(tmp_path):
    from safetensors.torch import load_file

    from composir.runs import load_run

    run, model, coco = _converted_covr2(tmp_path)
    method, _ = load_run(run)
    g = torch.Generator().manual_seed(3)
    references, targets = torch.randn(4, 3, 32, 32, generator=g), torch.randn(6, 3, 32, 32, generator=g)
    tokens = method.encoder.tokenize(TEXTS)
    assert method.use_scoring("cirr") == "max_token_pairs"
    scores = similarity(method.encode_query(references[:, None], tokens), method.encode_target(targets[:, None]))
    q = model.config.num_query_tokens
    fused = _fused(model, model.vision_model(pixel_values=references).last_hidden_state, tokens.ids, tokens.mask)
    query_tokens = F.normalize(model.text_projection(fused[:, :q]), dim=-1)
    target_tokens = _target_tokens(coco, targets)  # the original COCO BLIP-2's, not the fine-tuned model's
    want = torch.einsum("iqe,jke->ijqk", query_tokens, target_tokens).amax(-1).amax(-1)
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=1e-5)
    assert method.use_scoring("webvid-covr") == "vector"
    torch.testing.assert_close(
        similarity(method.encode_query(references[:, None], tokens), method.encode_target(targets[:, None])),
        query_tokens.mean(1) @ target_tokens.mean(1).T, atol=1e-5, rtol=1e-5,
    )  # fmt: skip
    saved = load_file(str(run / "checkpoints/best/model.safetensors"))
    assert not any(key.startswith("target_encoder.") for key in saved)  # rebuilt from the COCO model, not stored


def _covr_sample_frames(vlen: int, frames_per_video: int = 15) -> list[int]:
    """CoVR's ``sample_frames`` (src/data/embs.py): integer-cast linspace bounds, middle of each segment."""
    import numpy as np

    bounds = np.linspace(start=0, stop=vlen, num=min(vlen, frames_per_video) + 1).astype(int)
    return [(int(a) + int(b) - 1) // 2 for a, b in itertools.pairwise(bounds)]


def _webvid_covr(root, lengths: dict[str, int], rows: list[tuple[str, str, str, list[float]]]):
    """A WebVid-CoVR split on disk: videos of the given frame counts, the CSV with its scores column."""
    import csv

    import numpy as np

    from composir.data.media import write_video

    rng = np.random.default_rng(5)
    for vid, n in lengths.items():
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.float32)
        frames = [np.kron(np.clip(base + rng.normal(0, 40, base.shape), 0, 255), np.ones((8, 8, 1))) for _ in range(n)]
        (root / "videos" / vid).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / "videos" / f"{vid}.mp4", [f.astype(np.uint8) for f in frames])
    with open(root / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["pth1", "pth2", "edit", "txt1", "txt2", "scores"])
        for ref, target, edit, scores in rows:
            writer.writerow([ref, target, edit, "", "", str(scores) if scores else ""])


def _all_frames(path):
    """Every decoded frame, in order (PyAV), as CoVR's OpenCV seeks read them."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]


def covr2_webvid_scores(model, coco, preprocess, tokenize, bench):
    """CoVR-2 on WebVid-CoVR restated (src/test/blip2/webvid_covr.py with its dataset and
    tools/embs): the query fuses the reference's frame N // 2; a target's 15 frames are embedded by
    the COCO model, weighted by softmax(scores / 0.1) (equal without scores), each token made unit
    again, then the means of the unit tokens are compared; a query's own reference scores -10."""
    q = model.config.num_query_tokens
    queries, targets = [], []
    for triplet in bench.queries:
        frames = _all_frames(bench.media_item(triplet.reference_id).path)
        image = preprocess(frames[len(frames) // 2])[None]
        tokens = tokenize([triplet.text])
        fused = _fused(model, model.vision_model(pixel_values=image).last_hidden_state, tokens.ids, tokens.mask)
        queries.append(F.normalize(F.normalize(model.text_projection(fused[:, :q]), dim=-1), dim=-1)[0])
    row_scores = {t.target_ids[0]: t.extra["scores"] for t in bench.queries}  # the CSV's column, one row per target
    for item in bench.gallery:
        frames = _all_frames(item.path)
        stored = _target_tokens(coco, torch.stack([preprocess(frames[i]) for i in _covr_sample_frames(len(frames))]))
        scores = row_scores[item.id] or [1.0] * len(stored)
        weights = (torch.tensor(scores) / 0.1).softmax(dim=0)
        targets.append(torch.einsum("f,fqe->qe", weights, stored))
    sim = torch.stack(queries).mean(1) @ F.normalize(torch.stack(targets), dim=-1).mean(1).T
    for i, triplet in enumerate(bench.queries):
        for j, item in enumerate(bench.gallery):
            if item.id == triplet.reference_id:
                sim[i, j] = -10
    return torch.stack(queries).mean(1), F.normalize(torch.stack(targets), dim=-1).mean(1), sim


@torch.no_grad()
def test_covr2_run_ranks_webvid_covr_as_covr2(tmp_path):
    """Reference = the exact middle frame, not the middle of the sampled frames (23 frames: frame 11,
    where the middle of 15 segment centres is frame 10); targets = 15 score-weighted frames."""
    from composir.data import load_benchmark
    from composir.eval.evaluate import encode_media, evaluate
    from composir.runs import load_run

    run, model, coco = _converted_covr2(tmp_path)
    method, cfg = load_run(run)
    assert cfg.data.num_frames == 15
    g = torch.Generator().manual_seed(1)
    lengths = {"a/r1": 23, "a/r2": 31, "b/t1": 40, "b/t2": 23, "b/t3": 17, "b/t4": 60}
    rows = [("a/r1", "b/t1", "make it red", torch.randn(15, generator=g).tolist()),
            ("a/r2", "b/t2", "add a cat", torch.randn(15, generator=g).tolist()),
            ("b/t3", "b/t3", "a night", []),  # a target without scores: equal weights
            ("b/t2", "b/t4", "make the dog blue", torch.randn(15, generator=g).tolist())]  # fmt: skip
    _webvid_covr(tmp_path / "webvid", lengths, rows)
    bench = load_benchmark("webvid-covr", tmp_path / "webvid", "test")
    want_queries, want_targets, want = covr2_webvid_scores(
        model, coco, method.encoder.preprocess, method.encoder.tokenize, bench
    )
    method.use_scoring("webvid-covr")
    gallery = encode_media(bench.gallery, method.encode_target, method.encoder.preprocess, 15, frame_scores=True,
                           progress=False)  # fmt: skip
    torch.testing.assert_close(gallery.features, want_targets, atol=1e-5, rtol=1e-5)

    seen: dict[str, list[torch.Tensor]] = {"queries": [], "targets": []}  # what evaluation computes, in order
    encode_queries, encode_target = method.encode_queries, method.encode_target
    method.encode_queries = lambda *a: seen["queries"].append(encode_queries(*a)) or seen["queries"][-1]
    method.encode_target = lambda *a, **k: seen["targets"].append(encode_target(*a, **k)) or seen["targets"][-1]
    result = evaluate(method, bench, k=len(bench.gallery), num_frames=cfg.data.num_frames, batch_size=1, progress=False)
    torch.testing.assert_close(torch.cat(seen["queries"]), want_queries, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(seen["targets"]), want_targets, atol=1e-5, rtol=1e-5)
    expected = [[bench.gallery[j].id for j in row.argsort(descending=True).tolist()] for row in want]
    assert result.ranked_ids == expected  # the query's own reference last, as CoVR's -10 puts it


def test_conversion_errors_are_one_line(tmp_path, capsys):
    from composir.cli import main

    assert main(["convert", "sprc", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt does not exist" in err and "github.com/chunmeifeng/SPRC" in err
    torch.save(
        {"epoch": 1, "Blip2QformerCirAlignPrompt": {"visual_encoder.mystery": torch.zeros(2)}}, tmp_path / "bad.pt"
    )
    assert main(["convert", "sprc", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "visual_encoder.mystery" in err
    torch.save({"Blip2QformerCirAlignPrompt": {}}, tmp_path / "empty.pt")
    assert main(["convert", "sprc", str(tmp_path / "empty.pt"), "--out", str(tmp_path / "run")]) == 2
    assert "not a BLIP-2 state dict" in capsys.readouterr().err
    torch.save({"Blip2QformerCirAlignPrompt": {}, "evil": __import__("os").getcwd}, tmp_path / "code.pt")
    assert main(["convert", "sprc", str(tmp_path / "code.pt"), "--out", str(tmp_path / "run")]) == 2
    assert "can open safely" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@torch.no_grad()
def test_blip2_zero_shot_scores_as_blip2_itc(tmp_path):
    """Blip2Qformer's ITC: the text's [CLS] output projected and normalised against each unit image
    query token, the best token counting; here the text [CLS] of the fused pass."""
    model, hub = _hub_blip2(tmp_path)
    method = build_method("blip2_zero_shot", build_encoder("blip2", pretrained=str(hub))).eval()
    assert type(method).training_free and method.use_scoring(None) == "max_target_tokens"
    g = torch.Generator().manual_seed(3)
    references, targets = torch.randn(4, 3, 32, 32, generator=g), torch.randn(6, 3, 32, 32, generator=g)
    tokens = method.encoder.tokenize(TEXTS)
    fused = _fused(model.eval(), model.vision_model(pixel_values=references).last_hidden_state, tokens.ids, tokens.mask)
    query = F.normalize(model.text_projection(fused[:, model.config.num_query_tokens]), dim=-1)
    want = torch.einsum("nd,mkd->nmk", query, _target_tokens(model, targets)).amax(-1)
    got = similarity(method.encode_query(references[:, None], tokens), method.encode_target(targets[:, None]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("caption_weight", [0.0, 0.5])  # the plain and the captioned collator
@torch.no_grad()
def test_covr2_training_reads_the_middle_reference_frame_and_the_target_frame_scores(tmp_path, caption_weight):
    from composir.data import load_benchmark
    from composir.train.dataset import TripletDataset

    covr2 = {"token_norm": True, "renormalize_mean": False, "reference_frames": "middle", "target_pooling": "embedding"}
    _, method, *_ = _setup(tmp_path, **covr2, frame_weighting="scores", caption_weight=caption_weight)
    scores = [[float(i % 5) for i in range(15)], [float(-i) for i in range(15)]]
    _webvid_covr(tmp_path / "webvid", {"a/r1": 23, "a/r2": 20, "b/t1": 30, "b/t2": 16},
                 [("a/r1", "b/t1", "make it red", scores[0]), ("a/r2", "b/t2", "add a cat", scores[1])])  # fmt: skip
    bench = load_benchmark("webvid-covr", tmp_path / "webvid", "test")
    data = TripletDataset(bench, method.encoder.preprocess, 15, reference_sampling=method.reference_sampling)
    items = [data[0], data[1]]
    reference_frames = _all_frames(bench.media_item("a/r1").path)
    torch.testing.assert_close(items[0]["reference"], method.encoder.preprocess(reference_frames[11])[None])
    assert items[0]["target"].shape[0] == 15
    from composir.search.encode import load_query_frames  # search reads the same reference frame

    torch.testing.assert_close(
        load_query_frames(method, bench.media_item("a/r1").path, 15), items[0]["reference"][None]
    )
    batch = method.collator()(items)
    torch.testing.assert_close(batch["target_frame_scores"], torch.tensor(scores))
    weighted = method.eval().losses(batch)["contrastive"]  # eval: no dropout between the two
    batch["target_frame_scores"] = torch.zeros(2, 15)  # equal weights
    assert not torch.isclose(method.losses(batch)["contrastive"], weighted, atol=1e-6)
