"""Pretrained weights from the Hugging Face hub, checked before any model is built.

Offline, transformers and open_clip spend 30-55 s in the hub client's retries before they fail,
and print each retry twice. The commands that build a model first ask (in about a second, before
torch is imported) whether what they name can be had: a local path, a hub id in the local cache,
or the hub reachable at all. A hub id that is neither cached nor reachable is one line saying how
to get it; when the hub cannot be reached, ``HF_HUB_OFFLINE=1`` is set for the rest of the process
so that cached weights load without a network attempt and a missing file fails at once.
"""

from __future__ import annotations

import ast
import functools
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from composir.errors import WeightsNotFound

HUB_HOST = "huggingface.co"


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` (name lookup included: it runs
    in a thread, since ``getaddrinfo`` takes no timeout). False when ``HF_HUB_OFFLINE`` is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid repo id: left to the loader's own message
        return True


def check_hub_weights(
    what: str, repo_id: str, filename: str = "config.json", local: str = "a local folder written by save_pretrained"
) -> None:
    """``repo_id`` (a hub id) can be loaded here: cached, or the hub reachable; else one line
    (``local``: what else the user can give)."""
    reachable = hub_reachable()
    if not reachable:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub when it is first imported (after this)
    if reachable or _cached(repo_id, filename):
        return
    from huggingface_hub.constants import HF_HUB_CACHE

    raise WeightsNotFound(
        f"{what}: {repo_id!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and {HUB_HOST} cannot be "
        f"reached: run `hf download {repo_id}` on a machine with network and copy the cache here, or give {local}"
    )


def check_pretrained(encoder: str, pretrained: str | None, model: str | None = None) -> None:
    """An encoder's ``pretrained`` weights can be had here (see ``check_hub_weights``). A local
    path is the loader's to check. An open_clip tag's hub repository is read from open_clip's own
    table without importing it (``openclip_hub_file``), so that offline a missing tag is one line
    in well under a second; a tag that table does not give is left to open_clip, which the flag
    set here makes fail from its cache at once."""
    if not pretrained or Path(pretrained).exists():
        return
    if encoder == "blip2" and _is_hub_id(pretrained):
        check_hub_weights(f"{encoder} --pretrained", pretrained)
        return
    if encoder == "openclip":
        hub_file = openclip_hub_file(model or OPENCLIP_DEFAULT_MODEL, pretrained)
        if hub_file is not None:
            repo_id, filenames = hub_file
            if not hub_reachable() and not any(_cached(repo_id, name) for name in filenames):
                check_hub_weights(f"openclip --pretrained {pretrained} ({model or OPENCLIP_DEFAULT_MODEL})", repo_id,
                                  filenames[0], "the checkpoint file's path as --pretrained")  # fmt: skip
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"


OPENCLIP_DEFAULT_MODEL = "RN50x4"  # CLIP4Cir's backbone; encoders.openclip builds it when no model is named
_OPENCLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip.constants


def openclip_hub_file(model: str, tag: str) -> tuple[str, tuple[str, ...]] | None:
    """(hub repository, weight file names) of an open_clip model's pretrained tag, read from the
    source of ``open_clip/pretrained.py`` (its ``_PRETRAINED`` table of ``hf_hub`` entries) without
    importing open_clip, which imports torch (seconds). None when the table cannot be read this way
    or does not give the tag a hub repository: open_clip then decides."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("open_clip")
        folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
        tree = ast.parse((Path(folder) / "pretrained.py").read_text(encoding="utf-8")) if folder else None
    except (OSError, SyntaxError, ValueError, ImportError):
        return None
    if tree is None:
        return None
    tables: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            tables[node.targets[0].id] = _hub_entries(node.value, tables)
    hub = tables.get("_PRETRAINED", {})
    entry = hub.get(f"{model.removesuffix('-quickgelu')}\0{tag.lower().replace('-', '_')}")
    if not entry:
        return None
    repo_id, filename = os.path.split(entry)  # open_clip's own rule: "org/repo/" or "org/repo/file"
    return repo_id, ((filename,) if filename else _OPENCLIP_WEIGHT_FILES)


def _hub_entries(value: ast.expr, tables: dict[str, dict[str, str]]) -> dict[str, str]:
    """``dict(tag=_pcfg(hf_hub=...), ...)`` -> {tag: hf_hub}; ``{"Model": TABLE, ...}`` -> {"Model\0tag": hf_hub}."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
        out = {}
        for keyword in value.keywords:
            if keyword.arg and isinstance(keyword.value, ast.Call):
                for inner in keyword.value.keywords:
                    if inner.arg == "hf_hub" and isinstance(inner.value, ast.Constant) and inner.value.value:
                        out[keyword.arg] = str(inner.value.value)
        return out
    if isinstance(value, ast.Dict):
        out = {}
        for key, item in zip(value.keys, value.values):
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                entries = tables.get(item.id, {}) if isinstance(item, ast.Name) else _hub_entries(item, tables)
                out.update({f"{key.value}\0{tag}": hub for tag, hub in entries.items()})
        return out
    return {}


def weights_of_config(config: dict[str, Any]) -> Iterable[tuple[str, str, str]]:
    """(what, hub id, file) for every hub id a run config names: the encoder's weights and
    tokenizer, and a frozen target model."""
    encoder = config.get("encoder") or {}
    name = str(encoder.get("name", ""))
    options = encoder.get("config") or {}
    method_options = (config.get("method") or {}).get("config") or {}
    named = [
        ("encoder.pretrained", encoder.get("pretrained"), "config.json"),
        ("encoder.config.tokenizer", options.get("tokenizer") if isinstance(options, dict) else None,
         "tokenizer_config.json"),
        ("method.config.target_pretrained",
         method_options.get("target_pretrained") if isinstance(method_options, dict) else None, "config.json"),
    ]  # fmt: skip
    for what, value, filename in named:
        if name == "blip2" and isinstance(value, str) and _is_hub_id(value):
            yield what, value, filename


def check_config_weights(config: dict[str, Any], where: str) -> None:
    """Every hub id a run config (as a dict) names can be had here."""
    for what, repo_id, filename in weights_of_config(config):
        check_hub_weights(f"{where}: {what}", repo_id, filename)


def check_run_weights(run_dir: str | Path) -> None:
    """Every hub id a run folder's config.yaml names can be had here (before the run is loaded)."""
    import yaml

    config_file = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(config_file.read_text())
    except (OSError, yaml.YAMLError):
        return  # the run loader names what is wrong with the folder
    if isinstance(config, dict):
        check_config_weights(config, str(run_dir))


def check_model_weights(
    run: str | Path | None, encoder: str | None = None, pretrained: str | None = None, model: str | None = None
) -> None:
    """What a command is about to load can be had here: a run folder's hub ids, or an encoder's
    ``pretrained`` weights (called before torch is imported)."""
    if run:
        check_run_weights(run)
    elif encoder:
        check_pretrained(encoder, pretrained, model)
