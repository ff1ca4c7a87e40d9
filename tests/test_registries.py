"""Every registered method, encoder, benchmark and index store, found through its registry: a new
one is covered here without editing a list."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from composir.data import BENCHMARKS, benchmark_spec, load_benchmark, readable_benchmarks, register_benchmark
from composir.encoders import available_encoders, build_encoder, example_encoder, register_encoder
from composir.errors import ComposirError
from composir.index import STORES, register_store
from composir.methods import available_methods, build_method
from composir.methods.registry import register_method
from helpers import TEXTS, method_batch


def _images() -> list[Image.Image]:
    colours = ("red", "blue", "green", "white")
    return [Image.new("RGB", (40, 40), c) for c in colours]


@pytest.mark.parametrize("name", available_encoders())
def test_every_encoder_embeds_what_it_sees(name, tmp_path):
    torch.manual_seed(0)
    encoder = example_encoder(name, tmp_path).eval()
    frames = torch.stack([encoder.preprocess(im) for im in _images()]).unsqueeze(1)
    tokens = encoder.tokenize(TEXTS)
    with torch.no_grad():
        images, again = encoder.encode_image(frames), encoder.encode_image(frames)
        texts = encoder.encode_text(tokens)
    assert images.shape == (4, encoder.embed_dim) and texts.shape == (4, encoder.embed_dim)
    torch.testing.assert_close(images, again)  # deterministic in eval mode
    assert not torch.allclose(images[0], images[1], atol=1e-4)  # different pixels, different features
    assert not torch.allclose(texts[0], texts[1], atol=1e-4)  # different words, different features
    assert encoder.fingerprint() == encoder.fingerprint()


@pytest.mark.parametrize("name", available_methods())
def test_every_method_trains_every_parameter_it_declares_trainable(name):
    torch.manual_seed(0)
    encoder = build_encoder("tiny", config={"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4})
    method = build_method(name, encoder).train()
    losses = method(method_batch(method, encoder))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    unused = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    # DDP runs without find_unused_parameters unless the method declares it needs the search.
    assert method.ddp_find_unused_parameters or unused == []
    with torch.no_grad():
        method.eval()
        query = method.encode_query(method_batch(method, encoder)["reference"], encoder.tokenize(TEXTS))
    assert query.shape[0] == len(TEXTS)


@pytest.mark.parametrize("name", readable_benchmarks())
def test_every_benchmark_reader_names_what_is_missing_in_one_line(name, tmp_path):
    with pytest.raises(ComposirError) as error:
        load_benchmark(name, tmp_path / "nowhere", "val")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "\n" not in message


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_has_a_protocol_with_recall(name):
    spec = benchmark_spec(name)
    assert any(m.startswith(("R@", "Avg", "mAP@")) for m in spec.protocol.metric_names())
    for part in spec.parts:
        assert benchmark_spec(part).reader is not None


def test_a_name_is_registered_once_in_every_registry():
    with pytest.raises(ValueError, match="registered twice"):
        register_method("sum")(type("Another", (), {}))
    with pytest.raises(ValueError, match="registered twice"):
        register_encoder("tiny", example=lambda workdir: None)(lambda **kw: None)
    with pytest.raises(ValueError, match="registered twice"):
        register_benchmark(BENCHMARKS["cirr"].__class__("cirr", BENCHMARKS["cirr"].protocol, lambda r, s: None))
    with pytest.raises(ValueError, match="registered twice"):
        register_store("faiss", lambda root: False, "another")(type("Another", (), {}))


def test_the_stores_are_registered():
    assert {"faiss", "milvus"} <= set(STORES)


def test_methods_lists_what_each_needs(capsys):
    from composir.cli import main

    assert main(["methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert set(available_methods()) <= set(lines) and set(available_encoders()) <= set(lines)
    assert "no training" in lines["sum"] and "trained" in lines["imagine"] and "Q-Former" in lines["imagine"]


def test_a_method_refuses_an_encoder_without_the_capability_it_needs(tmp_path):
    encoder = example_encoder("openclip", tmp_path)  # token features, no Q-Former
    with pytest.raises(ComposirError, match="qformer_fusion needs an encoder with a Q-Former fusion"):
        build_method("qformer_fusion", encoder)
    build_method("context_cir", encoder)  # token features are what context_cir needs
