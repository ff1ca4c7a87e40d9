"""Feature cache: same training from cache as from pixels, stale caches refused, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from composir.cli import main
from composir.data import load_benchmark
from composir.data.feature_cache import DONE, FAILED, FeatureCache, StaleCacheError, build_cache, frame_tokens
from composir.errors import ComposirError, ConfigError
from composir.train import build_from_config, load_config, train
from composir.train.metrics_log import MetricsLog
from helpers import CONFIG, SMALL


def _cfg(root, out, *extra):
    return load_config(
        CONFIG,
        [
            f"data.root={root}",
            f"output_dir={out}",
            *SMALL,
            "encoder.freeze_vision=true",
            "data.augment=none",
            "train.max_steps=6",
            "train.eval_every=3",
            "train.num_workers=0",
            *extra,
        ],
    )


def _losses(run):
    return [float(r["value"]) for r in MetricsLog(run / "metrics.csv").rows() if r["metric"] == "loss"]


def _evals(run):
    return [
        float(r["value"])
        for r in MetricsLog(run / "metrics.csv").rows()
        if r["split"] == "val" and r["metric"] in ("R@1", "R@10", "Rsubset@1")
    ]


def test_cached_training_matches_pixel_training(synth_root, tmp_path):
    cache_dir = tmp_path / "cache"
    rc = main(
        [
            "cache",
            "--config",
            str(CONFIG),
            "--set",
            f"data.root={synth_root}",
            *SMALL,
            "encoder.freeze_vision=true",
            "--out",
            str(cache_dir),
        ]
    )
    assert rc == 0
    train(_cfg(synth_root, tmp_path / "pixels"), resume=False, progress=False)
    train(_cfg(synth_root, tmp_path / "cached", f"data.feature_cache={cache_dir}"), resume=False, progress=False)
    a, b = _losses(tmp_path / "pixels"), _losses(tmp_path / "cached")
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(a, b, rtol=2e-3)  # fp16 rows on disk vs fp32 tokens
    np.testing.assert_allclose(_evals(tmp_path / "pixels"), _evals(tmp_path / "cached"), atol=1.0)


def test_stale_cache_is_refused(synth_root, tmp_path):
    cfg = _cfg(synth_root, tmp_path / "run")
    method = build_from_config(cfg)
    bench = load_benchmark("synthetic", synth_root, "val")
    build_cache(method.encoder, bench.gallery[:10], tmp_path / "cache", progress=False)
    other = _cfg(synth_root, tmp_path / "run2", "train.seed=1", f"data.feature_cache={tmp_path / 'cache'}")
    with pytest.raises(StaleCacheError, match="different vision tower"):
        train(other, resume=False, progress=False)
    needs_frozen = _cfg(
        synth_root, tmp_path / "run3", "encoder.freeze_vision=false", f"data.feature_cache={tmp_path / 'cache'}"
    )
    with pytest.raises(ConfigError, match="freeze_vision"):
        train(needs_frozen, resume=False, progress=False)


def test_cache_resumes_and_skips_bad_media(synth_root, tmp_path):
    cfg = _cfg(synth_root, tmp_path / "run")
    encoder = build_from_config(cfg).encoder
    items = load_benchmark("synthetic", synth_root, "val").gallery[:12]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items[3] = type(items[3])(id=items[3].id, path=broken)
    out = tmp_path / "cache"
    build_cache(encoder, items[:6], out, batch_size=4, progress=False)
    with pytest.raises(ComposirError, match="different list of media"):
        build_cache(encoder, items, out, progress=False)
    # Simulate a kill after the first batch: rows 4.. were never marked done.
    status = np.memmap(out / "done.u8", dtype=np.uint8, mode="r+")
    status[4:] = 0
    status.flush()
    cache = build_cache(encoder, items[:6], out, batch_size=4, progress=False)
    assert cache.status().tolist() == [DONE, DONE, DONE, FAILED, DONE, DONE]
    with pytest.raises(KeyError, match="no features"):
        cache.get(items[3].id)
    frames = torch.stack(
        [encoder.preprocess(__import__("composir.data.media", fromlist=["x"]).load_image(items[5].path))]
    )
    expected = frame_tokens(encoder.eval(), frames[:, None], per_frame=False)[0]
    torch.testing.assert_close(cache.get(items[5].id), expected, atol=2e-3, rtol=2e-3)
    assert FeatureCache.open(out).shape == tuple(expected.shape)
