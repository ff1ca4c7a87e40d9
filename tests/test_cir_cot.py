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
from composir.methods.cir_cot import CAPTION, CONCLUSION, REASON, RET, Chain
from composir.methods.claims import registered_claims
from helpers import CIR_COT_CONFIG, cir_cot_overrides

ENC = {"width": 32, "embed_dim": 16, "heads": 2, "num_query_tokens": 4, "vision_layers": 1, "qformer_layers": 1}
LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
      "num_key_value_heads": 2}  # fmt: skip
COT = {
    "caption": "a large red circle on a gray background",
    "reasoning": '"make it blue" asks to make the red circle blue. everything else stays.',
    "conclusion": "a large blue circle on a gray background",
}


MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
QWEN = {"text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 2, "rope_parameters": MROPE}}  # fmt: skip
BACKENDS = {"decoder": {"lm_config": LM}, "qwen2_vl": {"backend": "qwen2_vl", "lm_config": QWEN}}


def _method(backend: str = "decoder", **config):
    torch.manual_seed(0)
    enc = build_encoder("tiny", config=ENC)
    return build_method("cir_cot", enc, {**BACKENDS[backend], "max_chain_tokens": 12, **config})


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

    return method.lm.lm.lm_head.register_forward_hook(hook)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_is_deterministic_stops_at_ret_and_parses(backend):
    method = _method(backend).eval()
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_limit_still_gives_an_embedding(backend):
    method = _method(backend, decode_no_repeat_ngram=0).eval()  # the forced "red red ..." is not cut by that rule
    batch = _batch(method, ["make it blue"])
    handle = _force(method, lambda step: "red")  # never writes <ret>
    with torch.no_grad():
        query, explanation = method.encode_query_explained(batch["reference"], batch["tokens"])
    handle.remove()
    assert explanation[0]["chain"]["caption"].split() == ["red"] * 12  # inside the <caption> the prompt opened
    assert query.shape == (1, 16) and torch.allclose(query.norm(dim=-1), torch.ones(1))
    assert len(next(iter(method._chains.values()))) == 1 + 12  # opener + max_chain_tokens; then <ret> appended


@pytest.mark.parametrize("backend", BACKENDS)
def test_ret_embedding_reads_the_chain(backend):
    method = _method(backend).eval()
    batch = _batch(method, ["make it blue", "make it blue"])
    prefix = method.visual_prefix(batch["reference"][:1])[[0, 0]]
    prompt = method.prompt_ids("make it blue", prefix.length)
    blue = method.chain_ids(COT)
    green = method.chain_ids({**COT, "conclusion": "a large green circle on a gray background"})
    ret = method.ids[RET]
    with torch.no_grad():
        emb, _ = method._ret_embedding([prompt + blue + [ret], prompt + green + [ret]], prefix)
    assert not torch.allclose(emb[0], emb[1], atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lm_loss_is_on_the_chain_only(backend):
    method = _method(backend)
    batch = _batch(method, ["make it blue", "add a small green cross"])
    prefix = method.visual_prefix(batch["reference"])
    rows, labels = method.training_rows(batch, prefix.length)
    image = method.tokenizer.convert_tokens_to_ids(method.lm.image_token)
    for row, label in zip(rows, labels):
        given = row.index(method.ids[CAPTION]) + 1
        assert all(x == -100 for x in label[:given])  # visual prefix, text and the <caption> opener: no loss
        assert label[given:] == row[given:] and row[-1] == method.ids[RET]
        assert row.count(image) == prefix.length > 0
    # The model's own loss equals cross-entropy over the chain positions computed by hand.
    _, lm_loss = method._ret_embedding(rows, prefix, labels)
    ids, mask, lab = method.pad_left(rows, labels)
    if backend == "decoder":
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        logits = method.lm.lm(inputs_embeds=method.lm.embed(ids, prefix), attention_mask=mask, position_ids=positions)
    else:
        logits = method.lm.lm(**method.lm._inputs(ids, mask, prefix))
    logits = logits.logits
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
    zero = _method(mode="zero_shot", decode_section_order=False).eval()  # the forced script skips sections
    handle = _force(zero, lambda step: [CONCLUSION, "blue", "circle", RET][min(step, 3)])
    with torch.no_grad():
        query = zero.encode_query(batch["reference"], batch["tokens"])
    handle.remove()
    expected = F.normalize(zero.encoder.encode_text(zero.encoder.tokenize(["blue circle"])), dim=-1)
    torch.testing.assert_close(query, expected)  # the conclusion, through the encoder's text tower
    target = zero.encode_target(batch["target"])
    torch.testing.assert_close(target, F.normalize(zero.encoder.encode_image(batch["target"]), dim=-1))


def test_a_qwen2_vl_checkpoint_folder_loads_and_gives_the_same_embedding(tmp_path):
    """The real-checkpoint path (``lm_path``: from_pretrained of model and tokenizer), exercised on a
    random model of the same class saved to a folder."""
    method = _method("qwen2_vl").eval()
    method.lm.lm.save_pretrained(tmp_path)
    method.tokenizer.save_pretrained(tmp_path)
    loaded = _method("qwen2_vl", lm_path=str(tmp_path), lm_config={}).eval()
    assert type(loaded.lm.lm) is type(method.lm.lm) and len(loaded.tokenizer) == len(method.tokenizer)
    assert not any(p.requires_grad for p in loaded.lm.lm.model.visual.parameters())  # frozen by default
    batch = _batch(method, ["make it blue"])
    prefix = method.visual_prefix(batch["reference"])
    rows = [method.prompt_ids("make it blue", prefix.length) + method.chain_ids(COT) + [method.ids[RET]]]
    assert rows == [loaded.prompt_ids("make it blue", prefix.length) + loaded.chain_ids(COT) + [loaded.ids[RET]]]
    ids, mask, _ = method.pad_left(rows)
    with torch.no_grad():
        torch.testing.assert_close(loaded.lm.hidden(ids, mask, prefix)[0], method.lm.hidden(ids, mask, prefix)[0])


def test_qwen2_vl_inputs_match_its_own_processor():
    """Prompt ids, M-RoPE token types and pixel patches as Qwen2VLProcessor makes them from the same
    image and text (our frames come normalised by the composir encoder and are turned back)."""
    from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

    method = _method("qwen2_vl").eval()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    frames = ((image - method.lm.mean) / method.lm.std)[None, None]
    prefix = method.visual_prefix(frames)
    processor = Qwen2VLProcessor(method.lm.processor, method.tokenizer, Qwen2VLVideoProcessor())
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>make it blue"], images=[image],
                    do_rescale=False, return_tensors="pt")  # fmt: skip
    ours = method.prompt_ids("make it blue", prefix.length)
    assert out["input_ids"][0].tolist() == ours
    inputs = method.lm._inputs(torch.tensor([ours]), torch.ones(1, len(ours), dtype=torch.long), prefix)
    assert inputs["mm_token_type_ids"].tolist() == out["mm_token_type_ids"].tolist()
    torch.testing.assert_close(inputs["pixel_values"], out["pixel_values"], atol=1e-4, rtol=1e-4)
    assert inputs["image_grid_thw"].tolist() == out["image_grid_thw"].tolist()


def test_a_checkpoint_tokenizer_gets_the_chain_tokens(tmp_path):
    from composir.encoders.causal_lm import QWEN_VISION_TOKENS, word_level_tokenizer

    method = _method("qwen2_vl")
    method.lm.lm.save_pretrained(tmp_path)
    word_level_tokenizer(None, QWEN_VISION_TOKENS).save_pretrained(tmp_path)  # a tokenizer that lacks them
    loaded = _method("qwen2_vl", lm_path=str(tmp_path), lm_config={})
    unk = loaded.tokenizer.unk_token_id
    chain = [loaded.ids[t] for t in (CAPTION, REASON, CONCLUSION, RET)]
    assert unk not in chain and len(set(chain)) == 4
    assert loaded.tokenizer.convert_ids_to_tokens(chain) == [CAPTION, REASON, CONCLUSION, RET]


def test_a_missing_checkpoint_names_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"cir_cot.lm_path: nothing loadable at .*no-such-model.*save_pretrained"):
        _method("qwen2_vl", lm_path=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="backend=qwen2_vl"):
        _method(lm_path=str(tmp_path))


def test_qwen2_vl_back_end_learns_a_chain():
    """A few steps on one batch: the LM loss falls, and the image reaches the model (M-RoPE inputs)."""
    method = _method("qwen2_vl")
    batch = _batch(method, ["make it blue", "add a small green cross"])
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        losses = method.losses(batch)
        loss = losses["lm"] + losses["contrastive"]
        first = first if first is not None else float(losses["lm"].detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(losses["lm"].detach()) < 0.7 * first
    method.eval()
    other = dict(batch, reference=batch["reference"].flip(-1))
    with torch.no_grad():
        a = method.encode_query(batch["reference"], batch["tokens"])
        b = method.encode_query(other["reference"], other["tokens"])
    assert not torch.allclose(a, b, atol=1e-5)  # another reference, another query


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


def test_annotated_sections_are_never_cut_in_training(synth_root):
    """Every section of every chain of the synthetic benchmark is encoded whole (the longest
    multi-edit reasoning included): a cut section would teach the model to open the next section
    mid-sentence."""
    from composir.data import load_benchmark

    method = _method()
    chains = [q.extra["cot"] for q in load_benchmark("synthetic", synth_root, "train").queries if q.extra.get("cot")]
    assert chains
    longest = max(chains, key=lambda c: len(method._words(c["reasoning"], None)))
    ids = method.chain_ids(longest)
    for key in ("caption", "reasoning", "conclusion"):
        words = method._words(longest[key], None)
        assert words and any(ids[i : i + len(words)] == words for i in range(len(ids))), key
    long_reasoning = {**longest, "reasoning": " ".join(["the red circle becomes blue"] * 20)}  # 100 words
    assert len(method.chain_ids(long_reasoning)) >= 100


def test_section_order_allows_only_the_next_section_and_closes_a_full_one():
    from composir.methods.cir_cot import SectionOrder

    c, r, o, ret, word = 1, 2, 3, 4, 7
    rule = SectionOrder([c, r, o, ret], cap=3)
    scores = torch.zeros(3, 10)
    rows = torch.tensor([[word, word, c, word], [word, word, word, word], [c, word, r, word]])  # fmt: skip
    out = rule(rows, scores.clone())
    # Row 0: in the caption (1 word): only <reason> among the chain tokens, words still open.
    assert torch.isinf(out[0, [c, o, ret]]).all() and out[0, r] == 0 and out[0, word] == 0
    # Row 1: no chain token yet (new tokens only: the opener, the caption, is current), 4 >= cap: <reason> forced.
    assert torch.isinf(out[1]).sum() == 9 and out[1, r] == 0
    # Row 2: in the reasoning: <conclusion> next, nothing else of the chain.
    assert torch.isinf(out[2, [c, r, ret]]).all() and out[2, o] == 0
    empty = rule(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 10))  # the first new token
    assert torch.isinf(empty[0, [c, r, o, ret]]).all() and empty[0, word] == 0  # no empty caption
    opened = rule(torch.tensor([[word, r]]), torch.zeros(1, 10))  # the reasoning just opened
    assert torch.isinf(opened[0, [c, r, o, ret]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_constrained_decoding_writes_every_section_in_order(backend):
    """A model that would stop at once (``<ret>`` first, "red" second) still writes caption,
    reasoning and conclusion, each closed at the section cap; without the order rule it stops."""
    vocab_of = lambda m: m.tokenizer.convert_tokens_to_ids  # noqa: E731

    def prefer_ret(method):
        ret, red = vocab_of(method)(RET), vocab_of(method)("red")

        def hook(module, args, logits):
            out = torch.full_like(logits, -1e4)
            out[..., red], out[..., ret] = 1e3, 1e4
            return out

        return method.lm.lm.lm_head.register_forward_hook(hook)

    for ordered in (True, False):
        method = _method(backend, decode_section_order=ordered, decode_section_tokens=2, decode_no_repeat_ngram=0,
                         max_chain_tokens=20).eval()  # fmt: skip
        batch = _batch(method, ["make it blue"])
        handle = prefer_ret(method)
        with torch.no_grad():
            chain = method.generate_chains(method.visual_prefix(batch["reference"]), ["make it blue"])[0]
        handle.remove()
        parsed = method.parse_chain(chain)
        if ordered:  # each section closed at the cap of 2, the conclusion as soon as it has a word
            assert parsed == Chain("red red", "red red", "red")
        else:
            assert parsed == Chain("", "", "")


def _captioned(method, captions):
    frames = [torch.zeros(1, 3, 64, 64) for _ in captions]
    for i, f in enumerate(frames):  # one image a colour of its own: told apart by the frozen random encoder
        f[0, i % 3] = 1.0
    items = [
        {"index": i, "reference": frames[i], "target": frames[i], "text": "", "query_id": str(i),
         "reference_id": f"r{i}", "target_id": f"t{i}", "extra": {"target_caption": c}}
        for i, c in enumerate(captions)
    ]  # fmt: skip
    return method.collator()(items)


def test_the_caption_stage_learns_to_caption_images_with_the_encoder_frozen():
    method = _method(stage="caption", decode_section_tokens=12)
    assert not any(p.requires_grad for p in method.encoder.parameters())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a frozen encoder that tells the images apart (at its random init it barely does)
        for p in method.encoder.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=gen)
    captions = ["a large red circle on a gray background", "a small blue square on a snow background"]
    batch = _captioned(method, captions)
    assert set(method.losses(batch)) == {"lm"}
    _fit_lm(method, batch, 200)
    assert method.caption_images(batch["target"]) == captions  # each image its own caption, whole


def _fit_lm(method, batch, steps: int) -> None:
    """``steps`` of AdamW (lr 1e-2) on the LM loss of one batch; the method is left in eval mode."""
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    method.train()
    for _ in range(steps):
        loss = method.losses(batch)["lm"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()


def test_the_caption_stage_needs_captions():
    method = _method(stage="caption")
    with pytest.raises(ConfigError, match="target captions"):
        method.losses(_captioned(method, ["", ""]))


def test_teacher_forced_conclusion_accuracy_reads_the_conclusion_only():
    method = _method(max_chain_tokens=40)
    batch = _batch(method, ["make it blue"])
    frames, queries = batch["reference"], [type("Q", (), {"text": "make it blue", "extra": {"cot": COT}})()]
    # A model that always says "a": right on the conclusion's two "a"s of eight words, whatever the
    # caption and reasoning (whose own "a"s and words are not counted), and never on <ret>.
    handle = _force(method, lambda step: "a")
    try:
        assert method.conclusion_accuracy(frames, queries) == pytest.approx(2 / 8)
    finally:
        handle.remove()
    # After learning the chain, the conclusion is predicted token for token.
    _fit_lm(method, batch, 60)
    with torch.no_grad():
        assert method.conclusion_accuracy(frames, queries) == 1.0


def test_training_logs_the_decoders_sub_task_metrics(synth_root, tmp_path):
    from composir.train import load_config, train

    for stage, metric in (("caption", "caption F1"), ("retrieval", "conclusion token acc")):
        out = tmp_path / stage
        config = {"lm_config": LM, "stage": stage, "max_chain_tokens": 8}
        train(load_config(CIR_COT_CONFIG, cir_cot_overrides(synth_root, out, config, steps=1)), progress=False)
        rows = (out / "metrics.csv").read_text().splitlines()
        assert any(f"1,val,{metric}," in row for row in rows), rows[:5]


def test_scheduled_sampling_embeds_ret_after_the_models_own_chain():
    method = _method(max_chain_tokens=10).eval()  # no dropout: the passes must agree exactly
    batch = _batch(method, ["make it blue", "add a small green cross", "remove the circle"])
    queries = []
    contrastive = method.contrastive
    method.contrastive = lambda q, t, *a, **k: (queries.append(q.detach()), contrastive(q, t, *a, **k))[1]
    own = method.encode_query(batch["reference"], batch["tokens"])
    method.losses(batch)
    method.config.self_chain_rate = 1.0
    method.losses(batch)
    gold_query, own_query = queries
    torch.testing.assert_close(own_query, own, atol=1e-5, rtol=0)
    assert not torch.allclose(gold_query, own, atol=1e-6)  # the model's chains are not the annotated ones
    assert "decode_section_tokens" in method.config.training_settings()  # training now writes chains


def test_the_board_records_how_right_the_conclusions_are(synth_root):
    from composir.data import load_benchmark
    from composir.experiments.board import subtasks

    method = _method(max_chain_tokens=8).eval()
    bench = load_benchmark("synthetic", synth_root, "test")
    bench.queries = bench.queries[:8]
    gold = [q.extra["target_captions"]["attributes"] for q in bench.queries]

    def explain(frames, tokens):  # right conclusions for every other query, none for the rest
        return [{"chain": {"conclusion": gold[i] if i % 2 == 0 else ""}} for i in range(len(tokens.texts))]

    method.explain = explain
    numbers = subtasks(method, bench)
    named = [len(_words(g)) for g in gold]
    assert numbers["conclusion attributes"] == pytest.approx(100 * sum(named[::2]) / sum(named))
    assert "conclusion token acc" in numbers  # the method's own validation metric, on the test split


def _words(caption: str) -> list[str]:
    from composir.experiments.captions import attributes

    return attributes(caption)
