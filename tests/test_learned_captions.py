"""Captions from a trained captioning run (CIR-CoT's caption stage): `composir caption --captioner`
writes the cache a served LLM would, and a benchmark loaded with it carries those captions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from composir.cli import main
from composir.data import load_benchmark
from composir.data.captions import read_captions
from helpers import CIR_COT_CONFIG, cir_cot_overrides

LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
      "num_key_value_heads": 2}  # fmt: skip


@pytest.fixture(scope="module")
def captioner(synth_root, tmp_path_factory) -> Path:
    from composir.train import load_config, train

    out = tmp_path_factory.mktemp("captioner")
    config = {"lm_config": LM, "stage": "caption", "decode_section_tokens": 10}
    train(load_config(CIR_COT_CONFIG, cir_cot_overrides(synth_root, out, config, steps=3)), progress=False)
    return out


def test_a_captioning_run_writes_the_caption_cache(captioner, synth_root, tmp_path, capsys):
    from composir.annotate.captions import target_items
    from composir.annotate.learned import load_captioner
    from composir.data.media import load_media

    out = tmp_path / "learned.jsonl"
    argv = ["caption", "--captioner", str(captioner), "--benchmark", "synthetic", "--root", str(synth_root),
            "--split", "val", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    items = target_items(load_benchmark("synthetic", synth_root, "val"))
    written = read_captions(out)
    assert set(written) == {item.id for item in items}
    # What the run's own decoder says of each image, and a caption benchmark loads in place of the generator's.
    method = load_captioner(captioner)
    some = items[:5]
    frames = torch.stack([torch.stack([method.encoder.preprocess(f) for f in load_media(i.path, 1)]) for i in some])
    assert method.caption_images(frames) == [written[i.id] for i in some]
    bench = load_benchmark("synthetic", synth_root, "val", captions=out)
    assert all(item.caption == written[item.id] for item in bench.gallery)
    assert main(argv) == 0 and f"0 captioned, 0 failed (recorded; re-run to retry), {len(items)} already done" in (
        capsys.readouterr().out
    )


def test_the_captioner_choice_is_checked(captioner, tiny_run, synth_root, tmp_path, capsys):
    base = ["caption", "--benchmark", "synthetic", "--root", str(synth_root), "--out", str(tmp_path / "c.jsonl")]
    cases = [
        (["--captioner", str(tiny_run)], "writes no captions"),
        (["--captioner", str(captioner), "--url", "http://x/v1", "--model", "m"], "not both"),
        ([], "name the captioner"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c.jsonl").exists()
