"""Named hub weights are checked before any model is built: offline and not cached is one line at
once (no torch import, no retries); cached weights pass and load without a network attempt."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

PROBE = textwrap.dedent(
    """
    import sys
    from composir.cli import main
    code = main(sys.argv[1:])
    print("TORCH_IMPORTED" if "torch" in sys.modules else "TORCH_NOT_IMPORTED", code)
    """
)


def _composir(args: list[str], hub_cache, offline: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache)}
    env.pop("HF_HUB_OFFLINE", None)
    if offline:  # what an unreachable hub looks like to the check, whatever this machine's network
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=300)


def _fake_cached(hub_cache, repo_id: str, files: dict[str, str]) -> None:
    """A hub id in the local cache, laid out as huggingface_hub writes it."""
    folder = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abc")
    for name, text in files.items():
        (snapshot / name).write_text(text)


MODELS = {  # what a zero-shot command names -> the hub repository it needs
    "blip2": (["--encoder", "blip2", "--pretrained", "Salesforce/blip2-itm-vit-g"], "Salesforce/blip2-itm-vit-g"),
    # An open_clip tag: its repository read from open_clip's table without importing open_clip (torch).
    "openclip": (["--encoder", "openclip", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"],
                 "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    "openclip-default-model": (["--encoder", "openclip", "--pretrained", "openai"], "timm/resnet50x4_clip.openai"),
}  # fmt: skip


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("command", ["index", "eval"])
def test_offline_uncached_weights_are_one_line_before_torch_is_imported(tmp_path, synth_root, command, model):
    tail = ["--media", str(tmp_path), "--out", str(tmp_path / "idx")] if command == "index" else [
        "--benchmark", "synthetic", "--root", str(synth_root), "--split", "val"]  # fmt: skip
    args, repo_id = MODELS[model]
    done = _composir([command, *args, *tail], tmp_path / "hub")
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert f"`hf download {repo_id}`" in errors[0] and "not in the local Hugging Face cache" in errors[0]
    assert done.stdout.split() == ["TORCH_NOT_IMPORTED", "2"]
    assert not (tmp_path / "idx").exists()


def test_a_run_naming_an_uncached_hub_model_is_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    target = {"frozen_targets": True, "target_pretrained": "Salesforce/blip2-itm-vit-g-coco"}
    config = {
        "encoder": {"name": "blip2", "pretrained": None, "config": {"tokenizer": "Salesforce/blip2-itm-vit-g"}},
        "method": {"name": "qformer_fusion", "config": target},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _fake_cached(tmp_path / "hub", "Salesforce/blip2-itm-vit-g", {"tokenizer_config.json": "{}"})
    done = _composir(["index", "--run", str(run), "--media", str(tmp_path), "--out", str(tmp_path / "idx")],
                     tmp_path / "hub")  # fmt: skip
    # The tokenizer is cached; the frozen target model is not, and is the one named.
    assert "method.config.target_pretrained: 'Salesforce/blip2-itm-vit-g-coco'" in done.stderr
    assert done.stdout.split() == ["TORCH_NOT_IMPORTED", "2"]


def test_cached_weights_pass_the_check_offline(tmp_path):
    _fake_cached(tmp_path / "hub", "Salesforce/blip2-itm-vit-g", {"config.json": "{}"})
    code = textwrap.dedent(
        """
        import os
        from composir.utils.hub import check_pretrained
        check_pretrained("blip2", "Salesforce/blip2-itm-vit-g")
        print("OK", os.environ.get("HF_HUB_OFFLINE"))
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["OK", "1"], done.stderr


def test_a_cached_open_clip_tag_passes_the_check_offline(tmp_path):
    # The older of the two files open_clip fetches (either one in the cache will do).
    _fake_cached(tmp_path / "hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {"open_clip_pytorch_model.bin": ""})
    code = textwrap.dedent(
        """
        import sys
        from composir.utils.hub import check_pretrained
        check_pretrained("openclip", "laion2b_s34b_b79k", "ViT-B-32")
        print("OK", "torch" in sys.modules)
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["OK", "False"], done.stderr
