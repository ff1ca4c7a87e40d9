"""CIR-CoT: chains as sequences, generation that stops, the <ret> embedding, the LM loss's labels,
the chain cache, bad texts, the explanation in search results."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from composir.encoders import build_encoder
from composir.errors import ConfigError
from composir.methods import available_methods, build_method
from composir.methods.cir_cot import CAPTION, CONCLUSION, IMAGE, REASON, RET, Chain
from composir.methods.claims import registered_claims

ENC = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4, "vision_layers": 1, "qformer_layers": 1}
LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
      "num_key_value_heads": 2}  # fmt: skip
COT = {
    "caption": "a large red circle on a gray background",
    "reasoning": '"make it blue" asks to make the red circle blue. everything else stays.',
    "conclusion": "a large blue circle on a gray background",
}


def _method(**config):
    torch.manual_seed(0)
    enc = build_encoder("tiny", config=ENC)
    return build_method("cir_cot", enc, {"lm_config": LM, "max_chain_tokens": 12, **config})


def _batch(method, texts, cots=None):
    gen = torch.Generator().manual_seed(0)
    items = [
        {
            "index": i,
            "reference": torch.randn(1, 3, 64, 64, generator=gen),
            "target": torch.randn(1, 3, 64, 64, generator=gen),
            "text": t,
            "query_id": str(i),
            "reference_id": f"r{i}",
            "target_id": f"t{i}",
            "extra": {"cot": (cots or [COT] * len(texts))[i]},
        }
        for i, t in enumerate(texts)
    ]
    return method.collator()(items)


def _force(method, script):
    """Make the language model's next token follow ``script(step)`` (a forward hook on its head)."""
    vocab = method.tokenizer.convert_tokens_to_ids
    calls = {"n": 0}

    def hook(module, args, logits):
        token = vocab(script(calls["n"]))
        calls["n"] += 1
        forced = torch.full_like(logits, -1e4)
        forced[..., token] = 1e4
        return forced

    return method.lm.lm_head.register_forward_hook(hook)


def test_registered_with_its_claim():
    assert "cir_cot" in available_methods()
    claim = registered_claims()["CIR-CoT"]
    assert claim.baseline.config["chain"] == "none" and "chain without reasoning" in claim.variants


@pytest.mark.parametrize(
    "config, field",
    [({"chain": "short"}, "chain"), ({"mode": "think"}, "mode"), ({"target_side": "text"}, "target_side"),
     ({"lm_weight": -1.0}, "lm_weight"), ({"chain": "none", "mode": "reason"}, "mode=reason")],
)  # fmt: skip
def test_bad_config_is_named(config, field):
    with pytest.raises(ConfigError, match=field):
        _method(**config)


def test_generation_is_deterministic_stops_at_ret_and_parses():
    method = _method().eval()
    script = ["red", "circle", REASON, "make", "blue", CONCLUSION, "blue", "circle", RET, "red", "red"]
    batch = _batch(method, ["make it blue"])
    handle = _force(method, lambda step: script[min(step, len(script) - 1)])
    with torch.no_grad():
        prefix = method.visual_prefix(batch["reference"])
        chains = method.generate_chains(prefix, ["make it blue"])
    handle.remove()
    assert method.tokenizer.convert_ids_to_tokens(chains[0]) == [
        CAPTION,
        *script[:8],
    ]  # the opener; nothing after <ret>
    assert method.parse_chain(chains[0]) == Chain("red circle", "make blue", "blue circle")
    with torch.no_grad():  # unforced greedy decoding: the same chain twice, within the length limit
        a = method.generate_chains(prefix, ["make it blue"])
        b = method.generate_chains(prefix, ["make it blue"])
    assert a == b and len(a[0]) <= 1 + 12


def test_length_limit_still_gives_an_embedding():
    method = _method().eval()
    batch = _batch(method, ["make it blue"])
    handle = _force(method, lambda step: "red")  # never writes <ret>
    with torch.no_grad():
        query, explanation = method.encode_query_explained(batch["reference"], batch["tokens"])
    handle.remove()
    assert explanation[0]["chain"]["caption"].split() == ["red"] * 12  # inside the <caption> the prompt opened
    assert query.shape == (1, 16) and torch.allclose(query.norm(dim=-1), torch.ones(1))
    assert len(next(iter(method._chains.values()))) == 1 + 12  # opener + max_chain_tokens; then <ret> appended


def test_ret_embedding_reads_the_chain():
    method = _method().eval()
    batch = _batch(method, ["make it blue", "make it blue"])
    prefix = method.visual_prefix(batch["reference"][:1]).repeat(2, 1, 1)
    prompt = method.prompt_ids("make it blue", prefix.shape[1])
    blue = method.chain_ids(COT)
    green = method.chain_ids({**COT, "conclusion": "a large green circle on a gray background"})
    ret = method.ids[RET]
    with torch.no_grad():
        emb, _ = method._ret_embedding([prompt + blue + [ret], prompt + green + [ret]], prefix)
    assert not torch.allclose(emb[0], emb[1], atol=1e-4)


def test_lm_loss_is_on_the_chain_only():
    method = _method()
    batch = _batch(method, ["make it blue", "add a small green cross"])
    rows, labels = method.training_rows(batch, method.visual_prefix(batch["reference"]).shape[1])
    for row, label in zip(rows, labels):
        given = row.index(method.ids[CAPTION]) + 1
        assert all(x == -100 for x in label[:given])  # visual prefix, text and the <caption> opener: no loss
        assert label[given:] == row[given:] and row[-1] == method.ids[RET]
        assert row[:4] == [method.ids[IMAGE]] * 4
    # The model's own loss equals cross-entropy over the chain positions computed by hand.
    prefix = method.visual_prefix(batch["reference"])
    _, lm_loss = method._ret_embedding(rows, prefix, labels)
    ids, mask, positions, lab = method.pad_left(rows, labels)
    logits = method.lm(inputs_embeds=method.embed(ids, prefix), attention_mask=mask, position_ids=positions).logits
    by_hand = F.cross_entropy(logits[:, :-1].flatten(0, 1), lab[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(lm_loss, by_hand)
    losses = method.losses(batch)
    assert set(losses) == {"contrastive", "lm"} and losses["lm"].requires_grad


def test_chain_ablations_drop_their_sections():
    for chain, present in [("no_reason", {CAPTION, CONCLUSION}), ("no_caption", {REASON, CONCLUSION}), ("none", set())]:
        method = _method(chain=chain, mode="direct")
        tokens = set(method.tokenizer.convert_ids_to_tokens(method.chain_ids(COT)))
        assert tokens & {CAPTION, REASON, CONCLUSION} == present


def test_chains_are_generated_once_per_query_while_evaluating(monkeypatch):
    method = _method().eval()
    batch = _batch(method, ["make it blue", "make it red"])
    calls = []
    real = method.generate_chains
    monkeypatch.setattr(method, "generate_chains", lambda p, t: calls.append(list(t)) or real(p, t))
    with torch.no_grad():
        first = method.encode_query(batch["reference"], batch["tokens"])
        again = method.encode_query(batch["reference"], batch["tokens"])  # cached: no generation
        index = torch.tensor([0, 0, 1])  # a new text over a known reference: only it is generated
        tokens = method.encoder.tokenize(["make it blue", "make it green", "make it red"])
        method.encode_queries(batch["reference"], tokens, index)
    assert calls == [["make it blue", "make it red"], ["make it green"]]
    torch.testing.assert_close(first, again)
    method.train()  # weights about to change: the cache goes
    assert not method._chains


def test_direct_and_zero_shot_modes():
    method = _method(mode="direct").eval()
    batch = _batch(method, ["make it blue"])
    called = []
    method.generate_chains = lambda p, t: called.append(1)
    with torch.no_grad():
        method.encode_query(batch["reference"], batch["tokens"])
    assert not called  # direct: no chain is written
    zero = _method(mode="zero_shot").eval()
    handle = _force(zero, lambda step: [CONCLUSION, "blue", "circle", RET][min(step, 3)])
    with torch.no_grad():
        query = zero.encode_query(batch["reference"], batch["tokens"])
    handle.remove()
    expected = F.normalize(zero.encoder.encode_text(zero.encoder.tokenize(["blue circle"])), dim=-1)
    torch.testing.assert_close(query, expected)  # the conclusion, through the encoder's text tower
    target = zero.encode_target(batch["target"])
    torch.testing.assert_close(target, F.normalize(zero.encoder.encode_image(batch["target"]), dim=-1))


@pytest.mark.parametrize("text", ["", "   ", "☃☃☃ ###", "word " * 500])
def test_odd_texts_give_an_embedding_not_a_crash(text):
    method = _method().eval()
    batch = _batch(method, [text])
    with torch.no_grad():
        query, explanation = method.encode_query_explained(batch["reference"], batch["tokens"])
    assert query.shape == (1, 16) and set(explanation[0]["chain"]) == {"caption", "reasoning", "conclusion"}


def test_tokens_without_texts_are_a_clear_error():
    method = _method().eval()
    batch = _batch(method, ["make it blue"])
    tokens = batch["tokens"]
    tokens.texts = None
    with pytest.raises(ConfigError, match="reads the texts"):
        method.encode_query(batch["reference"], tokens)


def test_bad_tokenizer_file_is_named(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"cir_cot\.tokenizer"):
        _method(tokenizer=str(bad))


# ------------------------------------------------------------------------------ explanation in results
CHAIN = {"caption": "a large red circle", "reasoning": "make it blue", "conclusion": "a large blue circle"}


@pytest.fixture(scope="module")
def cot_index(synth_root, tmp_path_factory):
    """A 2-step CIR-CoT run and an index of 12 synthetic val images."""
    import shutil

    from composir.cli import main
    from composir.train import load_config, train
    from helpers import CONFIG, SMALL

    run = tmp_path_factory.mktemp("cot-run")
    overrides = [o for o in SMALL if not o.startswith("method.")]
    config = json.dumps({"lm_config": LM, "max_chain_tokens": 8})
    cfg = load_config(CONFIG, [f"data.root={synth_root}", f"output_dir={run}", *overrides, "method.name=cir_cot",
                               "method.config=null", f"method.config={config}", "train.max_steps=2",
                               "train.eval_every=2", "train.save_every=2", "train.num_workers=0"])  # fmt: skip
    train(cfg, resume=False, progress=False)
    media = tmp_path_factory.mktemp("cot-media")
    for p in sorted((synth_root / "val").glob("*.png"))[:12]:
        shutil.copy(p, media / p.name)
    index = tmp_path_factory.mktemp("cot-index")
    assert main(["index", "--run", str(run), "--media", str(media), "--out", str(index)]) == 0
    return index, media


@pytest.fixture
def written_chain(monkeypatch):
    """Every generated chain is CHAIN (an untrained model writes nothing readable)."""
    from composir.methods.cir_cot import CIRCoT

    def fixed(self, prefix, texts):
        return [self.chain_ids(CHAIN) for _ in texts]

    monkeypatch.setattr(CIRCoT, "generate_chains", fixed)


def test_the_chain_reaches_search_json_and_the_service(cot_index, written_chain, capsys):
    from fastapi.testclient import TestClient

    from composir.cli import main
    from composir.search import Searcher
    from composir.service import create_app

    index, media = cot_index
    reference = sorted(media.glob("*.png"))[0]
    assert main(["search", "--index", str(index), "--image", str(reference), "--text", "make it blue", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["explanation"]["chain"] == CHAIN and body["explanation"]["mode"] == "reason"
    assert main(["search", "--index", str(index), "--image", str(reference), "--text", "make it blue"]) == 0
    assert "conclusion: a large blue circle" in capsys.readouterr().out
    client = TestClient(create_app(Searcher(index)))
    with open(reference, "rb") as f:
        response = client.post("/search", data={"text": "make it blue", "k": "3"}, files={"file": f})
    assert response.status_code == 200 and response.json()["explanation"]["chain"] == CHAIN


def test_the_page_shows_the_chain_under_the_query(cot_index, written_chain):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from composir.search import Searcher
    from composir.service import create_app
    from helpers import browser, serving

    index, media = cot_index
    with serving(create_app(Searcher(index))) as url:
        driver = browser()
        try:
            driver.get(url + "/")
            file_input = driver.find_element(By.ID, "file")
            driver.execute_script("arguments[0].hidden = false", file_input)
            file_input.send_keys(str(sorted(media.glob("*.png"))[0]))
            driver.find_element(By.ID, "text").send_keys("make it blue")
            driver.find_element(By.ID, "go").click()
            WebDriverWait(driver, 30).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "#explanation .chain-conclusion")
            )
            shown = driver.find_element(By.ID, "explanation").text
        finally:
            driver.quit()
    assert "make it blue" in shown  # under the query it explains
    assert "sees: a large red circle" in shown and "looks for: a large blue circle" in shown
