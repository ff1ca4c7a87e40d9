"""Published peer checkpoints -> composir run folders (``composir convert``).

Each converter opens the peer's file(s) with ``torch.load(weights_only=True)`` (an allow-list of
the peer's pickled plain objects, never arbitrary code), reads the architecture from the state
dict's shapes, renames every key to composir's layout, upcasts fp16 entries, and writes a run
folder -- ``config.yaml`` plus ``checkpoints/best/model.safetensors`` -- that ``composir eval
--run``, ``index --run``, ``search`` and ``serve`` load unchanged. The config carries the
peer's inference settings (method switches, scoring, preprocessing), so the run computes what
the peer's code computes (docs/methods.md, "Computing what the peers compute").

- ``clip4cir``: ``{'CLIP': sd}`` (OpenAI CLIP key names, which open_clip shares) and
  ``{'Combiner': sd}`` (ABaldrati/CLIP4Cir).
- ``covr2``: a Lightning Fabric ``.ckpt`` ``{"model": sd, ...}`` in LAVIS's ``Blip2Base``
  layout (lucas-ventura/CoVR); its targets come from the original COCO BLIP-2.
- ``sprc``: ``{'Blip2QformerCirAlignPrompt': sd}``, LAVIS layout (chunmeifeng/SPRC).

LAVIS -> transformers is the renaming transformers' own BLIP-2 conversion applies.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from composir.errors import ComposirError, WeightsNotFound

PEERS = ("clip4cir", "covr2", "sprc")
PUBLISHED = {
    "clip4cir": "github.com/ABaldrati/CLIP4Cir (README: the fine-tuned CLIP and Combiner .pt files)",
    "covr2": "github.com/lucas-ventura/CoVR (README: CoVR-2 .ckpt files on Hugging Face, lucas-ventura/CoVR)",
    "sprc": "github.com/chunmeifeng/SPRC (README: the CIRR / FashionIQ .pt checkpoints)",
}
COCO_BLIP2 = "Salesforce/blip2-itm-vit-g-coco"
BLIP2_TOKENIZER = "Salesforce/blip2-itm-vit-g"


class ConversionError(ComposirError, ValueError):
    """A peer file that is not what its converter expects: one line naming the file and the key."""


@dataclass
class Converted:
    """What a run folder is made of: its config sections and the method's state dict."""

    encoder: dict[str, Any]
    method: dict[str, Any]
    state: dict[str, torch.Tensor]
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was dropped or filled, said once


# ------------------------------------------------------------------------------ reading files
class _PickledSchedule:
    """Stands in for CoVR's learning-rate schedule objects pickled into its .ckpt (plain objects
    with a few floats): loaded as data, never as CoVR's code."""


# Plain objects the peers pickle beside their tensors, by the import path the pickle names.
_ALLOWED_OBJECTS: list[Any] = [
    (_PickledSchedule, "src.tools.scheduler.CosineSchedule"),
    (_PickledSchedule, "src.tools.scheduler.StepSchedule"),
]


def read_checkpoint(path: str | Path, peer: str) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and the allow-list; a missing or foreign file is one line."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(f"{peer}: {path} does not exist; the published files are at {PUBLISHED[peer]}")
    try:
        with torch.serialization.safe_globals(_ALLOWED_OBJECTS):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConversionError(f"{peer}: {path} is not a checkpoint composir can open safely ({first})") from None
    if not isinstance(loaded, dict):
        raise ConversionError(f"{peer}: {path} holds a {type(loaded).__name__}, not a checkpoint dictionary")
    return loaded


def _entry(loaded: dict[str, Any], key: str, path: str | Path, peer: str) -> dict[str, torch.Tensor]:
    if key not in loaded or not isinstance(loaded[key], dict):
        raise ConversionError(f"{peer}: {path} has no {key!r} state dict (its keys: {sorted(map(str, loaded))[:8]})")
    return {k: v.float() if v.is_floating_point() else v for k, v in loaded[key].items() if isinstance(v, torch.Tensor)}


def _check_keys(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str) -> None:
    """Every key the model has and no other, with its shape: else one line naming the first few."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:4]}" if missing else "", f"unexpected {unexpected[:4]}" if unexpected else "",
                 f"shape {wrong[:3]}" if wrong else ""]  # fmt: skip
        raise ConversionError(f"{where}: does not fit ({'; '.join(p for p in parts if p)})")


# ------------------------------------------------------------------------------ CLIP4Cir
_OPENAI_INTS = ("input_resolution", "context_length", "vocab_size")  # OpenAI's state dicts carry these
_COMBINER_KEYS = {
    "text_projection_layer": "text_projection.0",
    "image_projection_layer": "image_projection.0",
    "combiner_layer": "mixer.0",
    "output_layer": "mixer.3",
    "dynamic_scalar.0": "dynamic_scalar.0",
    "dynamic_scalar.3": "dynamic_scalar.3",
}


def openai_architecture(clip_state: dict[str, torch.Tensor]) -> str:
    """The open_clip architecture (one with OpenAI weights) whose keys and shapes the state dict has,
    checked on the ``meta`` device (nothing allocated)."""
    import open_clip

    given = {k: tuple(v.shape) for k, v in clip_state.items() if k not in _OPENAI_INTS}
    for name in sorted({m for m, tag in open_clip.list_pretrained() if tag == "openai"}):
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("attn_mask")}
        if own == {k: s for k, s in given.items() if not k.endswith("attn_mask")}:
            return name
    raise ConversionError(
        "clip4cir: the CLIP state dict matches no OpenAI architecture open_clip has; name it with --model"
    )


def convert_clip4cir(clip_file: str | Path, combiner_file: str | Path, encoder_config: dict | None = None) -> Converted:
    clip = _entry(read_checkpoint(clip_file, "clip4cir"), "CLIP", clip_file, "clip4cir")
    combiner = _entry(read_checkpoint(combiner_file, "clip4cir"), "Combiner", combiner_file, "clip4cir")
    encoder_config = dict(encoder_config or {"model": openai_architecture(clip)})
    # CLIP4Cir trained on OpenAI's CLIP (QuickGELU) with TargetPad 1.25 preprocessing.
    encoder_config = {"quick_gelu": True, "target_pad": 1.25, **encoder_config}
    state = {f"encoder.model.{k}": v for k, v in clip.items() if k not in _OPENAI_INTS}
    for key, value in combiner.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in _COMBINER_KEYS:
            raise ConversionError(f"clip4cir: {combiner_file}: unexpected Combiner key {key!r}")
        state[f"{_COMBINER_KEYS[prefix]}.{leaf}"] = value
    state["logit_scale"] = torch.tensor(math.log(100.0))  # CLIP4Cir's fixed logit scale (an attribute, not saved)
    method = {
        "name": "combiner",
        "config": {
            "projection_dim": int(combiner["text_projection_layer.weight"].shape[0]),
            "hidden_dim": int(combiner["combiner_layer.weight"].shape[0]),
            "dropout": 0.5, "freeze_encoder": True, "normalize_inputs": False, "concat_order": "text_image",
            "temperature": 0.01, "learn_temperature": False,
        },
    }  # fmt: skip
    return Converted({"name": "openclip", "pretrained": None, "config": encoder_config}, method, state)


# ------------------------------------------------------------------------------ LAVIS BLIP-2
_LAVIS_RENAMES: list[tuple[str, str]] = [
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^ln_vision\.", "vision_model.post_layernorm."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight$", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
    (r"^Qformer\.bert\.embeddings\.LayerNorm\.", "qformer.layernorm."),
    (r"^Qformer\.bert\.embeddings\.(word|position)_embeddings\.", r"embeddings.\1_embeddings."),
    (r"^Qformer\.bert\.encoder\.(.*)\.(attention|crossattention)\.self\.", r"qformer.encoder.\1.\2.attention."),
    (r"^Qformer\.bert\.encoder\.", "qformer.encoder."),
    (r"^vision_proj\.", "vision_projection."),
    (r"^text_proj\.", "text_projection."),
    (r"^(query_tokens|itm_head\.weight|itm_head\.bias)$", r"\1"),
]
# In the peers' files, unused by the computation they evaluate: the Q-Former's language-model
# head, its position-id buffer, SPRC's training-only prompt tokens, EVA's unused final norm.
_LAVIS_UNUSED = re.compile(
    r"^(Qformer\.cls\.|Qformer\.bert\.embeddings\.position_ids$|prompt_tokens$|visual_encoder\.norm\.)"
)


def lavis_to_transformers(lavis: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """LAVIS ``Blip2Base`` names -> transformers' ``Blip2ForImageTextRetrieval``; (state, dropped keys).
    EVA's separate q/v biases become the fused ``qkv.bias`` = [q_bias; 0; v_bias]."""
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in lavis.items():
        block = re.match(r"^visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)$", key)
        if block:
            if block.group(2) == "q_bias":
                v = lavis[f"visual_encoder.blocks.{block.group(1)}.attn.v_bias"]
                state[f"vision_model.encoder.layers.{block.group(1)}.self_attn.qkv.bias"] = torch.cat(
                    [value, torch.zeros_like(value), v]
                )
            continue
        if _LAVIS_UNUSED.match(key) or key == "temp":
            dropped.append(key)
            continue
        for pattern, replacement in _LAVIS_RENAMES:
            if re.match(pattern, key):
                state[re.sub(pattern, replacement, key)] = value
                break
        else:
            raise ConversionError(f"{where}: a key no BLIP-2 layout has: {key!r}")
    return state, dropped


def blip2_architecture(state: dict[str, torch.Tensor], heads: tuple[int, int] = (16, 12)) -> dict[str, Any]:
    """A Blip2Config dict from a transformers-layout state dict's shapes; attention heads (vision,
    Q-Former) are not in any shape: BLIP-2's (16, 12) unless given."""
    needed = ("vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
              "vision_model.embeddings.position_embedding", "vision_model.encoder.layers.0.mlp.fc1.weight",
              "qformer.encoder.layer.0.intermediate.dense.weight", "embeddings.word_embeddings.weight",
              "embeddings.position_embeddings.weight", "query_tokens", "text_projection.weight")  # fmt: skip
    absent = [k for k in needed if k not in state]
    if absent:
        raise ConversionError(f"not a BLIP-2 state dict: no {absent[0]} (and {len(absent) - 1} more of its keys)")
    width = state["vision_model.embeddings.class_embedding"].shape[-1]
    patch = state["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    positions = state["vision_model.embeddings.position_embedding"].shape[1]
    vision_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
    q_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("qformer.encoder.layer."))
    crossed = sorted({int(k.split(".")[3]) for k in state if ".crossattention." in k})
    words = state["embeddings.word_embeddings.weight"]
    q_width = words.shape[1]
    return {
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "num_hidden_layers": vision_layers,
            "num_attention_heads": heads[0],
            "image_size": round(math.sqrt(positions - 1)) * patch,
            "patch_size": patch,
        },
        "qformer_config": {
            "hidden_size": q_width,
            "intermediate_size": state["qformer.encoder.layer.0.intermediate.dense.weight"].shape[0],
            "num_hidden_layers": q_layers,
            "num_attention_heads": heads[1],
            "vocab_size": words.shape[0],
            "max_position_embeddings": state["embeddings.position_embeddings.weight"].shape[0],
            "encoder_hidden_size": width,
            "cross_attention_frequency": crossed[1] - crossed[0] if len(crossed) > 1 else 1,
            "use_qformer_text_input": True,
        },
        "num_query_tokens": state["query_tokens"].shape[1],
        "image_text_hidden_size": state["text_projection.weight"].shape[0],
    }


def _blip2_run(
    lavis: dict[str, torch.Tensor], where: str, tokenizer: str, heads: tuple[int, int], options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """(encoder section, ``encoder.model.*`` state, notes) for a LAVIS-layout BLIP-2."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    state, dropped = lavis_to_transformers(lavis, where)
    try:
        architecture = blip2_architecture(state, heads)
    except ConversionError as exc:
        raise ConversionError(f"{where}: {exc}") from None
    notes = (
        [f"left out (unused at inference): {', '.join(sorted(dropped)[:6])}{' ...' if len(dropped) > 6 else ''}"]
        if dropped
        else []
    )
    with torch.device("meta"):
        expected = Blip2ForImageTextRetrieval(Blip2Config(**architecture)).state_dict()
    if "itm_head.weight" not in state:  # CoVR-2's files have none; composir never runs it
        state["itm_head.weight"] = torch.zeros(expected["itm_head.weight"].shape)
        state["itm_head.bias"] = torch.zeros(expected["itm_head.bias"].shape)
        notes.append("itm_head: not in the file, zero-filled (composir never runs it)")
    _check_keys({k: v for k, v in expected.items() if not k.endswith("position_ids")}, state, where)
    config = {"model_config": architecture, "tokenizer": tokenizer, **options}
    return (
        {"name": "blip2", "pretrained": None, "config": config},
        {f"encoder.model.{k}": v for k, v in state.items()},
        notes,
    )


def convert_covr2(
    ckpt_file: str | Path,
    tokenizer: str = BLIP2_TOKENIZER,
    target_model: str = COCO_BLIP2,
    heads: tuple[int, int] = (16, 12),
) -> Converted:
    lavis = _entry(read_checkpoint(ckpt_file, "covr2"), "model", ckpt_file, "covr2")
    temp = float(lavis["temp"]) if "temp" in lavis else 0.07
    # CoVR-2 (src/test/blip2/*): BLIP's pre_caption at 30 words, 64 tokens, LAVIS's square resize,
    # LAVIS's ln_vision epsilon (for its COCO target model too: CoVR-2 embedded them with LAVIS).
    options = {"caption_words": 30, "max_text_length": 64, "resize": "square", "ln_vision_eps": 1e-5}
    encoder, state, notes = _blip2_run(lavis, f"covr2: {ckpt_file}", tokenizer, heads, options)
    state["logit_scale"] = torch.tensor(math.log(1.0 / temp))
    method = {
        "name": "qformer_fusion",
        "config": {
            "token_norm": True, "renormalize_mean": False, "frozen_targets": True, "target_pretrained": target_model,
            "scoring": "vector", "scoring_per_benchmark": {"cirr": "max_token_pairs"},
            "reference_frames": "middle", "target_pooling": "embedding", "frame_weighting": "scores",
            "loss": "hnnce_covr", "hn_alpha": 1.0, "hn_beta": 0.5, "temperature": temp, "learn_temperature": False,
        },
    }  # fmt: skip
    notes.append(f"frozen targets: {target_model} (CoVR-2 embeds its targets with the original COCO BLIP-2)")
    # WebVid-CoVR (src/data/webvid_covr.py, tools/embs): the reference's middle frame; a target is
    # 15 frames, each embedded, weighted by its score in the annotation.
    return Converted(encoder, method, state, data={"num_frames": 15}, notes=notes)


def convert_sprc(
    ckpt_file: str | Path, tokenizer: str = BLIP2_TOKENIZER, heads: tuple[int, int] = (16, 12)
) -> Converted:
    lavis = _entry(read_checkpoint(ckpt_file, "sprc"), "Blip2QformerCirAlignPrompt", ckpt_file, "sprc")
    temp = float(lavis["temp"]) if "temp" in lavis else 0.07
    # SPRC (blip_validate.py, data_utils.py): TargetPad 1.25, shorter side to 224 and a centre crop,
    # 32 text tokens, LAVIS's ln_vision epsilon.
    options = {"target_pad": 1.25, "resize": "shorter_side", "max_text_length": 32, "ln_vision_eps": 1e-5}
    encoder, state, notes = _blip2_run(lavis, f"sprc: {ckpt_file}", tokenizer, heads, options)
    state["logit_scale"] = torch.tensor(math.log(1.0 / temp))
    method = {
        "name": "qformer_fusion",
        "config": {
            "query_pool": "sprc",
            "scoring": "max_target_tokens",
            "temperature": temp,
            "learn_temperature": False,
        },
    }
    return Converted(encoder, method, state, notes=notes)


# ------------------------------------------------------------------------------ run folder
def write_run(converted: Converted, out: str | Path, source: str) -> Path:
    """The run folder, written whole or not at all (a temporary folder renamed into place). The
    model is first built from the config and loaded with the converted weights -- every key and
    shape checked -- so a run that would not load is never written. A BLIP-2 run keeps its
    tokenizer inside the folder; weights rebuilt from a named pretrained model (CoVR-2's frozen
    COCO targets) are left out."""
    import yaml
    from safetensors.torch import save_file

    from composir.runs.config import config_from_dict
    from composir.runs.factory import build_from_config

    out = Path(out).resolve()
    if out.exists():
        raise ComposirError(f"{out} already exists; give a new folder")
    sections = {
        "encoder": converted.encoder,
        "method": converted.method,
        "data": converted.data,
        "output_dir": str(out),
    }
    cfg = config_from_dict(sections)
    method = build_from_config(cfg)
    rebuilt = "target_encoder." if converted.method["config"].get("target_pretrained") else None
    expected = {k: v for k, v in method.state_dict().items() if not (rebuilt and k.startswith(rebuilt))}
    _check_keys(expected, converted.state, f"{source}: converted weights")
    method.load_state_dict(converted.state, strict=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = getattr(method.encoder, "tokenizer", None)
        if converted.encoder["name"] == "blip2" and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(tmp / "tokenizer")
            sections["encoder"] = {
                **converted.encoder,
                "config": {**converted.encoder["config"], "tokenizer": str(out / "tokenizer")},
            }
        header = f"# Converted by `composir convert` from {source}\n"
        body = yaml.safe_dump(config_from_dict(sections).to_dict(), sort_keys=False)
        (tmp / "config.yaml").write_text(header + "".join(f"# {n}\n" for n in converted.notes) + body)
        best = tmp / "checkpoints" / "best"
        best.mkdir(parents=True)
        state = method.state_dict()
        save_file({k: state[k].contiguous().clone() for k in expected}, str(best / "model.safetensors"))
        (best / "trainer_state.json").write_text(json.dumps({"converted_from": source}))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
