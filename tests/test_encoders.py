"""Encoders built from small random configs offline: shapes, dtypes, determinism, save/load."""

from __future__ import annotations

import torch
from PIL import Image

from composir.encoders import build_encoder
from helpers import BLIP2_TINY, OPENCLIP_TINY, WORDS, _hub_blip2


def _images(n=2, size=40):
    return [Image.new("RGB", (size, size), (30 * i, 100, 200 - 30 * i)) for i in range(n)]


def _check_encoder(enc, make_again, tmp_path):
    enc.eval()
    frames = torch.stack([enc.preprocess(im) for im in _images()]).unsqueeze(1)  # (B, T=1, 3, H, W)
    video = frames.repeat(1, 3, 1, 1, 1)
    tokens = enc.tokenize(["make the red circle blue", "add a cat"])
    with torch.no_grad():
        img, vid, txt = enc.encode_image(frames), enc.encode_image(video), enc.encode_text(tokens)
    assert img.shape == (2, enc.embed_dim) and txt.shape == (2, enc.embed_dim) and vid.shape == img.shape
    assert img.dtype == torch.float32 and txt.dtype == torch.float32
    # A video of identical frames pools to the image's feature.
    torch.testing.assert_close(vid, img, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(enc.encode_image(frames), img)  # deterministic in eval mode
    again = make_again()
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(frames), img)
        torch.testing.assert_close(again.encode_text(tokens), txt)
    return frames, tokens


def test_openclip_random_config_save_load(tmp_path):
    cfg = {"model": "composir-test-vit", "model_config": OPENCLIP_TINY}
    torch.manual_seed(0)
    enc = build_encoder("openclip", config=cfg)
    assert enc.embed_dim == 32 and enc.image_size == 32
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": enc.model.state_dict()}, path)
    _check_encoder(enc, lambda: build_encoder("openclip", pretrained=str(path), config=cfg), tmp_path)
    assert not enc.has_fusion


def test_blip2_random_config_save_load_and_fusion(tmp_path):
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS + [f"w{i}" for i in range(64 - len(WORDS))]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    enc = build_encoder(
        "blip2", config={"model_config": BLIP2_TINY, "tokenizer": str(tmp_path / "tok"), "max_text_length": 12}
    )
    assert enc.embed_dim == 16 and enc.num_query_tokens == 4 and enc.image_size == 32
    enc.save(tmp_path / "saved")
    frames, tokens = _check_encoder(enc, lambda: build_encoder("blip2", pretrained=str(tmp_path / "saved")), tmp_path)
    assert tokens.shape == (2, 12)
    assert enc.has_fusion
    with torch.no_grad():
        fused = enc.encode_query(frames, tokens)
        per_token = enc.image_query_features(frames)
    assert fused.shape == (2, 16) and per_token.shape == (2, 4, 16)
    # The fusion depends on the text and on the reference.
    with torch.no_grad():
        other_text = enc.encode_query(frames, tokens[[1, 0]])
        other_image = enc.encode_query(frames.flip(0), tokens)
    assert not torch.allclose(fused, other_text) and not torch.allclose(fused, other_image)


def test_tiny_encoder_and_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    enc = build_encoder("tiny", config={"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4})
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(path))
    _check_encoder(
        enc,
        lambda: build_encoder(
            "tiny", pretrained=str(path), config={"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4}
        ),
        tmp_path,
    )
    tokens = enc.tokenize(["Make the RED circle blue!"])
    ids = tokens.ids
    assert ids[0, 0] == 1 and (ids[0, 1:7] > 1).all() and ids[0, 7] == 0
    assert tokens.mask[0].tolist()[:8] == [1, 1, 1, 1, 1, 1, 1, 0]
    assert enc.fingerprint() == enc.fingerprint()


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4}
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        enc = build_encoder("tiny", config={**cfg, "gradient_checkpointing": checkpointing}).train()
        assert enc.model.is_gradient_checkpointing is checkpointing
        frames = torch.randn(2, 1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        tokens = enc.tokenize(["make the red circle blue", "add a cat"])
        enc.encode_query(frames, tokens).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


# ------------------------------------------------ the real-weights path, proven on random weights


def test_blip2_features_equal_transformers_own_itc_embeddings(tmp_path):
    import torch.nn.functional as F

    model, hub = _hub_blip2(tmp_path)
    enc = build_encoder("blip2", pretrained=str(hub)).eval()  # the path a user with weights takes
    assert not (hub / "composir_blip2.json").exists()
    frames = torch.stack([enc.preprocess(im) for im in _images()]).unsqueeze(1)
    tokens = enc.tokenize(["make the red circle blue", "add a cat"])
    with torch.no_grad():
        theirs = model(
            pixel_values=frames[:, 0],
            input_ids=tokens.ids,
            attention_mask=tokens.mask,
            use_image_text_matching_head=False,
        )
        ours_image = F.normalize(enc.image_query_features(frames), dim=-1)
        ours_text = F.normalize(enc.encode_text(tokens), dim=-1)
    torch.testing.assert_close(ours_image, theirs.image_embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_text, theirs.text_embeds, rtol=1e-5, atol=1e-6)
    # encode_image is the query-token mean of the same projected tokens.
    with torch.no_grad():
        pooled = enc.model.vision_projection(enc.image_query_outputs(frames)).mean(1)
        torch.testing.assert_close(enc.encode_image(frames), pooled)


def test_openclip_features_equal_open_clips_own_and_a_checkpoint_file_loads_them(tmp_path):
    import open_clip

    cfg = {"model": "composir-test-vit", "model_config": OPENCLIP_TINY}
    torch.manual_seed(0)
    enc = build_encoder("openclip", config=cfg).eval()
    model = enc.model
    frames = torch.stack([enc.preprocess(im) for im in _images()]).unsqueeze(1)
    tokens = enc.tokenize(["make the red circle blue", "add a cat"])
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_image(frames), model.encode_image(frames[:, 0]))
        torch.testing.assert_close(
            enc.encode_text(tokens),
            model.encode_text(open_clip.tokenize(["make the red circle blue", "add a cat"], context_length=16)),
        )
    # A bare state dict file, as open_clip's own checkpoints are, loads to the same features.
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = build_encoder("openclip", pretrained=str(path), config=cfg).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(frames), enc.encode_image(frames))
        torch.testing.assert_close(again.encode_text(tokens), enc.encode_text(tokens))


def test_tokens_carry_character_spans_for_every_tokenizer(tmp_path):
    _, hub = _hub_blip2(tmp_path)
    text = "make the red circle blue"
    encoders = {
        "blip2": build_encoder("blip2", pretrained=str(hub)),
        "tiny": build_encoder("tiny"),
        "openclip": build_encoder("openclip", config={"model": "composir-test-vit", "model_config": OPENCLIP_TINY}),
    }
    for name, enc in encoders.items():
        tokens = enc.tokenize([text, "no"])
        start = text.index("circle")
        span = tokens.token_span(0, start, start + len("circle"))
        assert len(span) >= 1, name
        pieces = [text[a:b] for a, b in (tokens.offsets[0][i] for i in span)]
        assert "".join(pieces) == "circle", (name, pieces)
        assert tokens.mask.shape == tokens.ids.shape and tokens.mask[1].sum() < tokens.mask[0].sum(), name
        assert tokens[[1]].offsets == [tokens.offsets[1]] and tokens[0:1].ids.shape[0] == 1, name


def test_fusion_returns_its_cross_attention_maps_on_request():
    torch.manual_seed(0)
    enc = build_encoder("tiny", config={"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4}).eval()
    frames = torch.stack([enc.preprocess(im) for im in _images()]).unsqueeze(1)
    tokens = enc.tokenize(["make the red circle blue", "add a cat"])
    with torch.no_grad():
        plain = enc.fusion_hidden(frames, tokens)
        hidden, maps = enc.fusion_hidden(frames, tokens, return_attentions=True)
        _, other_maps = enc.fusion_hidden(frames.flip(0), tokens, return_attentions=True)
        image_only = enc.fusion_hidden(frames, None)
        image_only_maps = enc.fusion_hidden(frames, None, return_attentions=True)
    torch.testing.assert_close(hidden, plain)  # asking for the maps changes nothing else
    n_vision = enc.vision_tokens(frames).shape[1]
    assert len(maps) == 2 and maps[0].shape == (2, 2, 4, n_vision)  # layers; (B, heads, queries, vision tokens)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 4))  # each query's attention sums to 1
    assert not torch.allclose(maps[0], other_maps[0])  # they follow the reference
    torch.testing.assert_close(image_only, enc.image_query_outputs(frames))  # no text: the query tokens alone
    torch.testing.assert_close(image_only_maps[0], image_only, rtol=1e-4, atol=1e-5)
    assert image_only_maps[1][0].shape == maps[0].shape
