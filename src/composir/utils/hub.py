"""Pretrained weights from the Hugging Face hub, checked before any model is built.

Offline, transformers and open_clip spend 30-55 s in the hub client's retries before they fail,
and print each retry twice. The commands that build a model first ask (in about a second, before
torch is imported) whether what they name can be had: a local path, a hub id in the local cache,
or the hub reachable at all. A hub id that is neither cached nor reachable is one line saying how
to get it; when the hub cannot be reached, ``HF_HUB_OFFLINE=1`` is set for the rest of the process
so that cached weights load without a network attempt and a missing file fails at once.
"""

from __future__ import annotations

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


def check_hub_weights(what: str, repo_id: str, filename: str = "config.json") -> None:
    """``repo_id`` (a hub id) can be loaded here: cached, or the hub reachable; else one line."""
    reachable = hub_reachable()
    if not reachable:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub when it is first imported (after this)
    if reachable or _cached(repo_id, filename):
        return
    from huggingface_hub.constants import HF_HUB_CACHE

    raise WeightsNotFound(
        f"{what}: {repo_id!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and {HUB_HOST} cannot be "
        f"reached: run `hf download {repo_id}` on a machine with network and copy the cache here, or give a "
        "local folder written by save_pretrained"
    )


def check_pretrained(encoder: str, pretrained: str | None) -> None:
    """An encoder's ``pretrained`` weights can be had here (see ``check_hub_weights``). A local
    path is the loader's to check; an open_clip tag needs the hub (or its cache) too: offline, the
    flag set here makes open_clip fail from its cache at once."""
    if not pretrained or Path(pretrained).exists():
        return
    if encoder == "blip2" and _is_hub_id(pretrained):
        check_hub_weights(f"{encoder} --pretrained", pretrained)
    elif not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"


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


def check_model_weights(run: str | Path | None, encoder: str | None = None, pretrained: str | None = None) -> None:
    """What a command is about to load can be had here: a run folder's hub ids, or an encoder's
    ``pretrained`` weights (called before torch is imported)."""
    if run:
        check_run_weights(run)
    elif encoder:
        check_pretrained(encoder, pretrained)
