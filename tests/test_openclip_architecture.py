"""open_clip weights get the architecture and activation they were trained with: QuickGELU for
OpenAI's, the architecture named by --model, tags checked per architecture, a mismatched
checkpoint named in one line."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from composir.cli import main
from composir.encoders.openclip import _EXAMPLE_CONFIG, load_openclip, quick_gelu_for
from composir.errors import WeightsNotFound
from composir.search import Searcher
from composir.search.searcher import Reference


@pytest.mark.parametrize(
    ("name", "tag", "expected"),
    [("RN50x4", "openai", True), ("ViT-L-14", "openai", True), ("ViT-B-32", "laion2b_s34b_b79k", False),
     ("ViT-B-32-quickgelu", None, True), ("ViT-B-32", None, False)],
)  # fmt: skip
def test_quickgelu_follows_what_the_weights_were_trained_with(name, tag, expected):
    assert quick_gelu_for(name, tag) is expected


def test_the_loader_forces_the_activation_the_tag_needs(monkeypatch):
    import open_clip

    asked = {}

    def fake(name, pretrained=None, **kwargs):
        asked[(name, pretrained)] = kwargs.get("force_quick_gelu")
        raise RuntimeError("offline")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake)
    for name, tag in (("RN50x4", "openai"), ("ViT-B-32", "laion2b_s34b_b79k")):
        with pytest.raises(WeightsNotFound):
            load_openclip(tag, {"model": name})
    assert asked == {("RN50x4", "openai"): True, ("ViT-B-32", "laion2b_s34b_b79k"): False}


def test_a_quickgelu_model_computes_quickgelu():
    import open_clip

    torch.manual_seed(0)
    quick = load_openclip(None, {"model": "composir-example-vit", "model_config": _EXAMPLE_CONFIG, "quick_gelu": True})
    torch.manual_seed(0)
    plain = load_openclip(None, {"model": "composir-example-vit", "model_config": _EXAMPLE_CONFIG})
    assert any(isinstance(m, open_clip.model.QuickGELU) for m in quick.model.modules())
    assert not any(isinstance(m, open_clip.model.QuickGELU) for m in plain.model.modules())
    frames = torch.rand(1, 1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(quick.eval().encode_image(frames), plain.eval().encode_image(frames))


def test_a_tag_of_another_architecture_is_one_line_without_a_download():
    with pytest.raises(WeightsNotFound, match="'laion2b_s34b_b79k' is not a pretrained tag of this architecture"):
        load_openclip("laion2b_s34b_b79k", {"model": "RN50x4"})


def _register(folder, name: str, config: dict) -> None:
    import open_clip

    folder.mkdir(exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(folder))


def test_model_names_the_architecture_of_a_checkpoint_and_a_mismatch_is_one_line(tmp_path, capsys):
    import open_clip

    _register(tmp_path / "archs", "composir-test-small", _EXAMPLE_CONFIG)
    wide = {**_EXAMPLE_CONFIG, "vision_cfg": {**_EXAMPLE_CONFIG["vision_cfg"], "width": 96}}
    _register(tmp_path / "archs", "composir-test-wide", wide)
    torch.manual_seed(0)
    weights = tmp_path / "small.pt"
    torch.save({"state_dict": open_clip.create_model("composir-test-small").state_dict()}, weights)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 20, 200 - 40 * i)).save(photos / f"{i}.png")
    out = tmp_path / "index"
    argv = ["index", "--encoder", "openclip", "--model", "composir-test-small", "--pretrained", str(weights),
            "--media", str(photos), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    searcher = Searcher(out)  # a picture finds itself first (taken as a new one: indexed files leave their results)
    assert searcher.search(Reference(searcher.load_reference(photos / "1.png").frames), None, k=1)[0].id == "1.png"
    argv[4] = "composir-test-wide"
    assert main([*argv[:-1], str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not hold a composir-test-wide model" in err[0] and "--model" in err[0]
