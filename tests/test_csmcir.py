"""CSMCIR: one Q-Former for both sides, captioned targets, the memory bank (and its resume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from composir.encoders import build_encoder
from composir.methods import build_method
from composir.methods.memory_bank import MemoryBank, binary_entropy, target_key
from helpers import CONFIG, SMALL

ENC = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4, "vision_layers": 1, "qformer_layers": 1}
TEXTS = ["add a red circle", "make it blue", "remove the square", "use a pink background"]


def _method(**config):
    torch.manual_seed(0)
    return build_method("csmcir", build_encoder("tiny", config=ENC), config).train()


def _batch(method, n: int = 4, ids=None) -> dict:
    gen = torch.Generator().manual_seed(1)
    return {
        "reference": torch.randn(n, 1, 3, 64, 64, generator=gen),
        "target": torch.randn(n, 1, 3, 64, 64, generator=gen),
        "tokens": method.encoder.tokenize(TEXTS[:n]),
        "target_caption": method.encoder.tokenize([f"a caption {i}" for i in range(n)]),
        "target_id": ids or [f"t{i}" for i in range(n)],
    }


def _grads(method, loss) -> set[str]:
    method.zero_grad()
    loss.backward()
    return {n for n, p in method.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_target_side_runs_through_the_query_sides_parameters():
    method = _method(bank="none").eval()  # no dropout: the two passes must agree exactly
    b = _batch(method)
    # The very same function: a captioned target is the query fusion of (target frames, caption).
    torch.testing.assert_close(
        method.encode_target(b["target"], b["target_caption"]), method.encode_query(b["target"], b["target_caption"])
    )
    query_side = _grads(method, method.encode_query(b["reference"], b["tokens"]).sum())
    target_side = _grads(method, method.encode_target(b["target"], b["target_caption"]).sum())
    shared = {n for n in query_side & target_side if "qformer" in n or "text" in n}
    assert len(shared) > 10  # the Q-Former's layers and the text embeddings get both sides' gradients
    assert query_side == target_side

    unshared = _method(bank="none", shared=False)
    target_only = _grads(unshared, unshared.encode_target(b["target"], b["target_caption"]).sum())
    assert target_only and all(n.startswith("target_tower.") for n in target_only)

    image_side = _method(bank="none", target_side="image")
    assert not image_side.target_text
    image_grads = _grads(image_side, image_side.encode_target(b["target"]).sum())
    assert not any("word_embeddings" in n for n in image_grads)  # no text on that side


def test_the_caption_changes_the_target():
    method = _method(bank="none").eval()
    b = _batch(method)
    other = method.encoder.tokenize(["something else entirely"] * 4)
    a, c = method.encode_target(b["target"], b["target_caption"]), method.encode_target(b["target"], other)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("bank_keys", ["momentum", "online"])
def test_bank_never_returns_a_query_positive(bank_keys):
    method = _method(bank="fifo", bank_size=8, bank_keys=bank_keys)
    term = "bank" if bank_keys == "momentum" else "contrastive"  # where the bank's columns are
    b = _batch(method)
    keys = torch.tensor([target_key(t) for t in b["target_id"]])
    with torch.no_grad():
        q = method.encode_query(b["reference"], b["tokens"])
    # Each query's own feature enters the bank under its positive's id: for its own row it must be
    # masked (a negative at cosine 1 would swamp the positive); for the other rows it is a negative.
    method.bank.update(q, keys, step=1)
    _, mask = method.bank.negatives(keys)
    assert mask.equal(torch.eye(4, dtype=torch.bool))
    one = _batch(method, n=1)  # one query: the in-batch loss is 0 and only the bank could change it

    def loss() -> float:
        with torch.no_grad():
            return float(method(one)[term])

    method.bank.count.fill_(0)
    method.bank.update(q[:1], keys[:1], step=1)
    assert loss() == pytest.approx(0.0, abs=1e-6)
    one["target_id"] = ["another"]  # the same entry, now another target's: a real negative
    assert loss() > 0.1


def test_momentum_keys_take_no_gradient_and_follow_the_moving_average():
    method = _method(bank="fifo", bank_size=8, momentum=0.75)
    with torch.no_grad():  # weights changed after construction (a loaded backbone, init_from)
        for p in method.encoder.parameters():
            p.add_(0.01)
    b = _batch(method)
    losses = method(b)
    assert set(losses) == {"contrastive", "bank"} and float(losses["bank"].detach()) == 0.0  # empty bank yet
    # The first training step copied the (changed) target encoder into the key encoder.
    for (name, key), online in zip(method.key_encoder.named_parameters(), method.encoder.parameters()):
        torch.testing.assert_close(key, online, msg=name)
    sum(losses.values()).backward()
    before = [p.detach().clone() for p in method.key_encoder.parameters()]
    with torch.no_grad():
        for p in method.encoder.parameters():  # an optimizer step
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    method.after_step(1)
    assert all(p.grad is None for p in method.key_encoder.parameters())
    moved = 0
    for old, key, online in zip(before, method.key_encoder.parameters(), method.encoder.parameters()):
        torch.testing.assert_close(key, 0.75 * old + 0.25 * online)
        moved += int(not torch.equal(key, old))
    assert moved > 10
    # The bank holds the key encoder's features of the step's targets, not the trained ones.
    b2 = _batch(method, ids=[f"u{i}" for i in range(4)])
    b2["target"] = b2["target"].flip(0)
    with torch.no_grad():
        keyed = method._embed_target(method.key_encoder, b2["target"], b2["target_caption"])
        trained = method.encode_target(b2["target"], b2["target_caption"])
    method(b2)
    method.after_step(2)
    assert len(method.bank) == 8
    torch.testing.assert_close(method.bank.features[4:8], keyed)
    assert not torch.allclose(method.bank.features[4:8], trained, atol=1e-4)


def test_the_bank_term_pushes_the_query_from_the_entries():
    """Its gradient reaches the query side only: moving a query toward a bank entry raises it."""
    method = _method(bank="fifo", bank_size=8)
    b = _batch(method, n=2)
    method(b)  # readies the key encoder
    method._pending.clear()
    keys = torch.tensor([target_key("elsewhere"), target_key("elsewhere-2")])
    entries = torch.nn.functional.normalize(torch.randn(2, method.encoder.embed_dim), dim=-1)
    method.bank.update(entries, keys, step=1)
    query = method.encode_query(b["reference"], b["tokens"]).detach()
    key = torch.nn.functional.normalize(query + 0.3 * torch.randn_like(query), dim=-1)
    bank, mask = method.bank.negatives(torch.tensor([target_key(t) for t in b["target_id"]]))
    toward = torch.nn.functional.normalize(query + 0.5 * entries[0], dim=-1)
    assert method.bank_loss(toward, key, bank, mask) > method.bank_loss(query, key, bank, mask)
    q = query.clone().requires_grad_(True)
    method.bank_loss(q, key, bank, mask).backward()
    assert q.grad.abs().sum() > 0


def test_entropy_eviction_keeps_the_confusable_entries():
    dim = 4
    queries = torch.eye(dim)[:1]  # one query along e0, its positive at cosine 0.8
    positive = torch.tensor([0.8])
    hard = torch.tensor([[0.8, 0.6, 0.0, 0.0]])  # as close as the positive: entropy 1 bit
    easy = torch.tensor([[-0.5, 0.0, 0.866, 0.0]])  # far below the positive: entropy ~0
    above = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # far above the positive at this scale: ~0 too
    feats = torch.cat([easy, hard, above])
    scores = MemoryBank.entropy_scores(feats, torch.tensor([1, 2, 3]), queries, torch.tensor([9]), positive, 50.0)
    assert scores[1] == pytest.approx(1.0, abs=1e-3) and scores[0] < 0.01 and scores[2] < 0.01
    bank = MemoryBank(1, dim, "entropy")
    bank.update(feats, torch.tensor([1, 2, 3]), step=1, queries=queries, query_keys=torch.tensor([9]),
                positive_sim=positive, scale=50.0)  # fmt: skip
    assert bank.keys[:1].tolist() == [2]
    fifo = MemoryBank(1, dim, "fifo")
    fifo.update(feats, torch.tensor([1, 2, 3]), step=1)
    assert fifo.keys[:1].tolist() == [3]  # the newest
    assert binary_entropy(torch.tensor(0.5)) == pytest.approx(1.0)


def test_bank_ages_out_and_replaces_seen_targets():
    bank = MemoryBank(10, 2, "fifo", max_age=2)
    bank.update(torch.ones(2, 2), torch.tensor([1, 2]), step=1)
    bank.update(torch.zeros(1, 2), torch.tensor([2]), step=2)  # target 2 again: its old entry goes
    assert sorted(bank.keys[: len(bank)].tolist()) == [1, 2] and len(bank) == 2
    bank.update(torch.ones(1, 2), torch.tensor([5]), step=4)  # step 4: target 1 (written at 1) is 3 old
    assert sorted(bank.keys[: len(bank)].tolist()) == [2, 5]


@pytest.mark.parametrize("policy", ["fifo", "entropy"])
def test_after_step_fills_the_bank_with_the_steps_targets(policy):
    method = _method(bank=policy, bank_size=6)
    ids = []
    for step in range(1, 4):
        ids.append([f"t{step}-{i}" for i in range(4)])
        sum(method(_batch(method, ids=ids[-1])).values()).backward()
        method.after_step(step)
    assert len(method.bank) == 6
    kept = set(method.bank.keys[:6].tolist())
    if policy == "fifo":
        assert kept == {target_key(t) for t in ids[2] + ids[1][2:]}
    else:
        assert kept <= {target_key(t) for step_ids in ids for t in step_ids}
        scores = method.bank.scores[:6]
        assert (scores >= 0).all() and (scores <= 1).all() and scores.sum() > 0


def _train(root, out, steps, stop_after=None):
    from composir.train import load_config, train

    overrides = [
        f"data.root={root}", f"output_dir={out}", *SMALL, "method.name=csmcir", "method.config=null",
        "method.config={bank: entropy, bank_size: 12, max_age: 4}", f"train.max_steps={steps}",
        "train.save_every=1", "train.eval_every=100", "train.num_workers=0",
    ]  # fmt: skip
    train(load_config(CONFIG, overrides), progress=False, stop_after=stop_after)


def test_bank_survives_kill_and_resume(synth_root, tmp_path):
    from composir.train import load_run

    _train(synth_root, tmp_path / "whole", 6)
    _train(synth_root, tmp_path / "killed", 6, stop_after=3)
    _, _ = load_run(tmp_path / "killed", "latest")
    _train(synth_root, tmp_path / "killed", 6)
    whole, _ = load_run(tmp_path / "whole", "latest")
    resumed, _ = load_run(tmp_path / "killed", "latest")
    assert len(whole.bank) > 4
    for name in ("features", "keys", "written", "scores", "count"):
        torch.testing.assert_close(getattr(resumed.bank, name), getattr(whole.bank, name), msg=name)
    key_whole = dict(whole.key_encoder.named_parameters())
    for name, param in resumed.key_encoder.named_parameters():  # the moving average resumes exactly
        torch.testing.assert_close(param, key_whole[name], msg=name)
    online = dict(whole.encoder.named_parameters())
    assert any(not torch.equal(p, online[n]) for n, p in key_whole.items())  # it is not the online copy


def test_csmcir_evaluates_with_gallery_captions(synth_root, tmp_path, monkeypatch):
    from composir.data import load_benchmark
    from composir.eval.evaluate import evaluate

    method = _method(bank="none").eval()
    seen = []
    original = method.encode_target

    def spy(frames, tokens=None):
        seen.append(tokens)
        return original(frames, tokens)

    monkeypatch.setattr(method, "encode_target", spy)
    bench = load_benchmark("synthetic", synth_root, "val")
    bench.queries = bench.queries[:8]
    evaluate(method, bench, batch_size=64, num_frames=1, progress=False)
    assert seen and all(t is not None for t in seen)
    first = bench.gallery[0].caption
    assert seen[0].ids[0].tolist() == method.encoder.tokenize([first]).ids[0].tolist()


@pytest.mark.parametrize("loss", ["infonce", "hnnce"])
def test_a_masked_bank_entry_leaves_every_gradient_finite(loss):
    """A bank entry that is a query's own positive is left out; the learned temperature's gradient
    must stay finite (masking with -inf before scaling gave NaN, and one NaN step ruins a run)."""
    method = _method(bank="fifo", bank_size=8, loss=loss, hn_beta=0.5)
    b = _batch(method)
    keys = torch.tensor([target_key(t) for t in b["target_id"]])
    with torch.no_grad():
        method.bank.update(method.encode_target(b["target"], b["target_caption"]), keys, step=1)
    losses = method(b)
    sum(losses.values()).backward()
    assert torch.isfinite(losses["contrastive"])
    assert torch.isfinite(method.logit_scale.grad) and method.logit_scale.grad != 0
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_indexing_gives_each_item_its_caption_and_says_where_captions_come_from(synth_root, tmp_path, capsys):
    """A user's photos have no captions: ``composir index`` says so for a method that reads them, and
    ``--captions`` (a ``composir caption --media`` cache: keys relative to the folder, or stems)
    gives each item its own, as evaluation does."""
    import json
    import shutil

    from composir.cli import main
    from composir.data.media import load_image
    from composir.data.records import GalleryItem
    from composir.search import model_encoder

    media = tmp_path / "photos"
    media.mkdir()
    names = sorted(p.name for p in (synth_root / "val").glob("*.png"))[:3]
    for name in names:
        shutil.copy(synth_root / "val" / name, media / name)
    captions = {names[0]: "a large red circle", Path(names[1]).stem: "a small blue square"}  # by key, by stem
    cache = tmp_path / "captions.jsonl"
    cache.write_text("".join(json.dumps({"id": k, "stages": {"final": v}}) + "\n" for k, v in captions.items()))

    method = _method(bank="none").eval()
    items = [GalleryItem(name, media / name) for name in names]
    with torch.no_grad():
        got, _ = model_encoder(method, 1, captions={names[0]: captions[names[0]], **captions})(items)
        frames = torch.stack([method.encoder.preprocess(load_image(media / n)) for n in names])[:, None]
        texts = ["a large red circle", "a small blue square", ""]
        expected = method.encode_target(frames, method.encoder.tokenize(texts))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)

    run = tmp_path / "run"
    _train(synth_root, run, 2)
    capsys.readouterr()
    assert main(["index", "--run", str(run), "--media", str(media), "--out", str(tmp_path / "plain")]) == 0
    assert "none were given" in capsys.readouterr().err
    argv = ["index", "--run", str(run), "--media", str(media), "--out", str(tmp_path / "captioned"),
            "--captions", str(cache)]  # fmt: skip
    assert main(argv) == 0
    assert "gallery captions:" in capsys.readouterr().err
    from composir.index import open_index

    assert open_index(tmp_path / "captioned").info["captions"] == str(cache.resolve())


def test_the_bank_reports_how_many_negatives_it_holds():
    method = _method(bank_size=16)
    assert method.validation_metrics(None, 1) == {"bank entries": 0.0}
    method.losses(_batch(method))
    method.after_step(1)
    assert method.validation_metrics(None, 1) == {"bank entries": 4.0}
    assert _method(bank="none").validation_metrics(None, 1) == {}
