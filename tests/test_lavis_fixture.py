"""composir's LAVIS -> transformers conversion against LAVIS's own classes, through fixtures made
with salesforce-lavis 1.0.2 (tests/fixtures/lavis/make_fixture.py says how): the full-size
``Blip2Qformer`` key and shape set (EVA ViT-g, bert-base Q-Former), and a tiny random
``Blip2Qformer`` with what LAVIS's ``extract_features`` computed from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from composir.encoders.base import Tokens
from composir.runs.convert import _blip2_run, blip2_architecture, lavis_to_transformers
from helpers import _hub_blip2

FIXTURES = Path(__file__).parent / "fixtures" / "lavis"


def _full_size_lavis() -> dict[str, torch.Tensor]:
    shapes = json.loads((FIXTURES / "blip2_qformer_keys.json").read_text())
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("peer", ["sprc", "covr2"])
def test_full_size_lavis_keys_convert_onto_transformers_blip2(peer):
    """Every key of LAVIS's full-size Blip2Qformer finds its transformers parameter with the same
    shape (``_blip2_run`` checks both ways); SPRC's file adds prompt tokens, CoVR-2's lacks the ITM head."""
    lavis = _full_size_lavis()
    if peer == "sprc":
        lavis["prompt_tokens"] = torch.empty(1, 32, 768, device="meta")
    else:
        del lavis["itm_head.weight"], lavis["itm_head.bias"]
    encoder, state, _ = _blip2_run(lavis, peer, "Salesforce/blip2-itm-vit-g", (16, 12), {})
    config = encoder["config"]["model_config"]
    # Salesforce/blip2-itm-vit-g's own config.json, for the values a shape can show
    assert config["vision_config"] == {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
                                       "num_attention_heads": 16, "image_size": 224, "patch_size": 14}  # fmt: skip
    q = config["qformer_config"]
    assert (q["hidden_size"], q["intermediate_size"], q["num_hidden_layers"], q["vocab_size"]) == (768, 3072, 12, 30523)
    assert (q["max_position_embeddings"], q["encoder_hidden_size"], q["cross_attention_frequency"]) == (512, 1408, 2)
    assert (config["num_query_tokens"], config["image_text_hidden_size"]) == (32, 256)
    assert len(state) == len(lavis) - 39 - sum(k.startswith("Qformer.cls.") for k in lavis) - 2 - (peer == "sprc") + (
        2 if peer == "covr2" else 0
    )  # 39 q/v bias pairs fused; the LM head, position ids and temp dropped; SPRC's prompts dropped; ITM filled


@torch.no_grad()
def test_converted_tiny_lavis_model_computes_what_lavis_extract_features_did(tmp_path):
    """A tiny LAVIS Blip2Qformer's weights, converted, give LAVIS's own outputs to 1e-5: the frozen
    ViT tokens after ln_vision, the image query outputs and their unit projections, the text [CLS]
    projection, and the fused (multimodal) query outputs."""
    from safetensors.torch import load_file

    from composir.encoders import build_encoder

    data = load_file(str(FIXTURES / "blip2_qformer_tiny.safetensors"))
    lavis = {k[len("model.") :]: v for k, v in data.items() if k.startswith("model.")}
    _, hub = _hub_blip2(tmp_path)  # a tokenizer folder; the fixture's token ids are used as they are
    section, state, _ = _blip2_run(lavis, "fixture", str(hub), (2, 2), {"ln_vision_eps": 1e-5})
    encoder = build_encoder("blip2", pretrained=None, config={**section["config"]}).eval()
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in state.items()}, strict=True)
    image = data["image"][:, None]
    tokens = Tokens(data["input_ids"], data["attention_mask"], [[] for _ in data["input_ids"]])
    torch.testing.assert_close(encoder.vision_tokens(image), data["image_embeds_frozen"], atol=1e-5, rtol=1e-5)
    hidden = encoder.image_query_outputs(image)
    torch.testing.assert_close(hidden, data["image_embeds"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.normalize(encoder.project_image(hidden), dim=-1), data["image_embeds_proj"],
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    torch.testing.assert_close(encoder.text_hidden(tokens), data["text_embeds"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(F.normalize(encoder.encode_text(tokens), dim=-1), data["text_embeds_proj"][:, 0],
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    q = data["multimodal_embeds"].shape[1]
    fused = encoder.fusion_hidden(image, tokens)[:, :q]
    torch.testing.assert_close(fused, data["multimodal_embeds"], atol=1e-5, rtol=1e-5)


def test_architecture_read_from_the_tiny_lavis_shapes():
    from safetensors.torch import load_file

    data = load_file(str(FIXTURES / "blip2_qformer_tiny.safetensors"))
    state, dropped = lavis_to_transformers({k[6:]: v for k, v in data.items() if k.startswith("model.")}, "fixture")
    config = blip2_architecture(state, (2, 2))
    assert config["qformer_config"]["cross_attention_frequency"] == 1 and config["num_query_tokens"] == 4
    assert "temp" in dropped and any(k.startswith("Qformer.cls.") for k in dropped)
