"""Constants and helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-synthetic-combiner.yaml"
CIR_COT_CONFIG = CONFIG.parent / "tiny-synthetic-cir-cot.yaml"


def cir_cot_overrides(root, out, method_config: dict, steps: int) -> list[str]:
    """A few CPU steps of the CIR-CoT config on the small synthetic benchmark, with a tiny encoder."""
    import json

    return [
        f"data.root={root}", f"output_dir={out}", "encoder.config={width: 32, embed_dim: 16, heads: 2, "
        "num_query_tokens: 4, vision_layers: 1, qformer_layers: 1}", "method.config=null",
        f"method.config={json.dumps(method_config)}", "train.batch_size=4", f"train.max_steps={steps}",
        f"train.eval_every={steps}", f"train.save_every={steps}", "train.warmup_steps=0", "train.num_workers=0",
        "data.max_val_queries=8",
    ]  # fmt: skip


# A tiny set-up that trains in seconds on a CPU: the small synthetic benchmark, 12 steps.
SMALL = [
    "encoder.config={width: 32, embed_dim: 16, heads: 2, num_query_tokens: 4, vision_layers: 1, qformer_layers: 1}",
    "method.name=combiner",
    "method.config={projection_dim: 32, hidden_dim: 64, dropout: 0.1}",
    "train.batch_size=8",
    "train.max_steps=12",
    "train.warmup_steps=2",
    "train.eval_every=6",
    "train.save_every=2",
    "train.keep_last=3",
    "train.log_every=2",
    "train.eval_batch_size=64",
    "data.max_val_queries=24",
    "data.augment=light",
    "data.val_splits=[val]",
]


def torchrun(nproc: int, port: int) -> tuple[str, ...]:
    """The interpreter's torchrun with ``nproc`` local processes (the module to run follows with -m)."""
    return (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for torchrun's rendezvous: fixed ports collide)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """``app`` served by uvicorn on a free local port in a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{srv.config.port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def browser():
    """Headless Chromium through selenium (the system's chromium and chromedriver)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


# ---- a media folder of tiny PNGs and a fast deterministic encoder, for index tests
def _images(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"{i:03d}.png"
        Image.new("RGB", (8, 8), (i % 256, 7, 7)).save(path)
        paths.append(path)
    return paths


def _encoder(dim: int = 8):
    """Vectors from the file's first pixel (fast, deterministic); unreadable files are errors."""

    def encode(items):
        feats, errors = [], []
        for it in items:
            try:
                with Image.open(it.path) as img:
                    red = img.convert("RGB").getpixel((0, 0))[0]
            except OSError as exc:
                errors.append((it.id, f"unreadable ({exc})"))
                continue
            vec = np.random.default_rng(red).standard_normal(dim)
            feats.append(vec / np.linalg.norm(vec))
        return np.asarray(feats, np.float32).reshape(len(feats), dim), errors

    return encode


INFO = {"fingerprint": "test"}


# ---- small random models and batches shared by several test modules
OPENCLIP_TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
BLIP2_TINY = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "initializer_range": 0.02,
    },
    "qformer_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 32,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": 32,
        "use_qformer_text_input": True,
    },
    "num_query_tokens": 4,
    "image_text_hidden_size": 16,
}
WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "make",
    "the",
    "red",
    "circle",
    "blue",
    "a",
    "dog",
    "it",
    "night",
    "add",
    "cat",
]


def _hub_blip2(tmp_path):
    """A random BLIP-2 retrieval model and a fast BERT tokenizer saved in the hub's own layout
    (``save_pretrained``: config.json, model.safetensors, tokenizer files), as users' checkpoints are."""
    from transformers import BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS + [f"w{i}" for i in range(64 - len(WORDS))]) + "\n")
    torch.manual_seed(0)
    model = Blip2ForImageTextRetrieval(Blip2Config(**BLIP2_TINY)).eval()
    with torch.no_grad():  # a checkpoint's query tokens are not zero
        model.query_tokens.normal_(0, 0.5)
    hub = tmp_path / "hub"
    model.save_pretrained(hub)
    BertTokenizerFast(str(vocab)).save_pretrained(hub)
    return model, hub


TEXTS = ["make it red", "add a cat", "move it to the left", "make the square big"]
CHAIN = {"caption": "a red square", "reasoning": "make it blue", "conclusion": "a blue square"}


def method_batch(method, encoder) -> dict:
    """A training batch made by the method's own collator, with the extras any method reads."""
    items = []
    for i, text in enumerate(TEXTS):
        frames = torch.randn(1, 3, encoder.image_size, encoder.image_size)
        items.append({"index": i, "reference": frames, "target": torch.randn_like(frames), "text": text,
                      "query_id": f"q{i}", "reference_id": f"r{i}", "target_id": f"t{i}",
                      "extra": {"target_caption": TEXTS[-1 - i], "cot": CHAIN, "family": "explicit"}})  # fmt: skip
    return method.collator()(items)
