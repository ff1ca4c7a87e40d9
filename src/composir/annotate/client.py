"""The OpenAI-compatible chat client behind ``composir caption`` and ``annotate-cot``: its
settings, a reachability check before any work, one multi-turn conversation per item, the
resumable JSON-lines cache, and the loop that runs items ``concurrency`` at a time.

Any chat-completions endpoint works (vLLM, Ollama, llama.cpp's server, a hosted API); the client
is the ``openai`` package (its retries with exponential back-off and time-outs). A failing item
(unreadable file, HTTP error after the retries, a time-out, a malformed answer) is recorded with
its error and skipped; each record is appended with one ``write`` and flushed, so a kill loses at
most the line being written, and a cut-off last line is removed before anything is appended.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composir.data.captions import read_caption_records
from composir.data.media import load_media
from composir.data.records import GalleryItem
from composir.errors import ComposirError, ConfigError
from composir.utils.progress import progress_bar


@dataclass
class CaptionerConfig:
    url: str
    model: str
    api_key_env: str | None = None  # environment variable holding the key ("EMPTY" when unset)
    timeout: float = 60.0  # seconds per request: the whole answer, not each read
    retries: int = 3  # per request, with the client's exponential back-off
    concurrency: int = 4  # images in flight
    max_tokens: int = 256
    max_side: int = 768  # images are downscaled to this longest side before sending
    max_answer_bytes: int = 1 << 20  # a longer answer is an error (a caption is a few hundred bytes)


class CaptionServerError(ComposirError):
    """The endpoint cannot be reached: nothing was captioned."""


def make_client(cfg: CaptionerConfig, stop: threading.Event | None = None):
    try:
        from openai import OpenAI
    except ImportError:
        raise ConfigError("composir caption needs the openai package: pip install 'composir[caption]'") from None
    stop = stop or threading.Event()
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    if cfg.api_key_env and not key:
        raise ConfigError(f"--api-key-env: environment variable {cfg.api_key_env} is not set")
    lib = _http_library()
    transport = _bounded_transport_class()(cfg.timeout, cfg.max_answer_bytes, stop)
    http = lib.Client(transport=transport, timeout=lib.Timeout(cfg.timeout))
    return OpenAI(base_url=cfg.url, api_key=key or "EMPTY", timeout=cfg.timeout, max_retries=cfg.retries,
                  http_client=http)  # fmt: skip


def describe(exc: BaseException) -> str:
    """An error record's text: the exception and what caused it (the openai client wraps the
    transport's own words, "answer larger than ...", in a generic "Connection error.")."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({cause})"
    return text[:500]


def _http_library():
    """The httpx package the installed ``openai`` client is built on (``httpx2`` in openai 3, ``httpx``
    before): a custom transport must come from the same one."""
    import openai._base_client as base

    return getattr(base, "httpx2", None) or base.httpx


@functools.cache
def _bounded_transport_class():
    lib = _http_library()

    class BoundedStream(lib.SyncByteStream):
        def __init__(self, stream, deadline: float, max_bytes: int, stop: threading.Event):
            self.stream, self.deadline, self.max_bytes, self.stop = stream, deadline, max_bytes, stop

        def __iter__(self):
            size = 0
            for chunk in self.stream:
                size += len(chunk)
                if self.stop.is_set():
                    raise lib.ReadError("interrupted")
                if size > self.max_bytes:
                    raise lib.ReadError(f"answer larger than {self.max_bytes} bytes")
                if time.monotonic() > self.deadline:  # a server dripping bytes never trips a per-read time-out
                    raise lib.ReadTimeout("the whole answer took longer than the time-out")
                yield chunk

        def close(self) -> None:
            self.stream.close()

    class BoundedTransport(lib.HTTPTransport):
        """Every request has a wall-clock deadline (``timeout`` seconds for the whole answer, not
        per read) and a size cap on the answer, and gives up when ``stop`` is set."""

        def __init__(self, timeout: float, max_bytes: int, stop: threading.Event, **kwargs):
            super().__init__(**kwargs)
            self.timeout, self.max_bytes, self.stop = timeout, max_bytes, stop

        def handle_request(self, request):
            if self.stop.is_set():
                raise lib.ConnectError("interrupted", request=request)
            deadline = time.monotonic() + self.timeout
            response = super().handle_request(request)
            bounded = BoundedStream(response.stream, deadline, self.max_bytes, self.stop)
            return lib.Response(response.status_code, headers=response.headers, stream=bounded,
                                extensions=response.extensions, request=request)  # fmt: skip

    return BoundedTransport


def check_reachable(client, url: str) -> None:
    """One cheap request before any work: a connection failure is one clear error, not N failed images."""
    import openai

    try:
        client.with_options(max_retries=0).models.list()
    except openai.APIConnectionError as exc:  # includes timeouts
        raise CaptionServerError(f"cannot reach the caption server at {url}: {exc}") from None
    except openai.APIStatusError:
        pass  # it answered (some servers have no /models): reachable
    except Exception:
        pass  # the chat requests themselves will say what is wrong, item by item


def image_data_url(item: GalleryItem, max_side: int) -> str:
    """The item's image (a video's middle frame) as a JPEG data URL, longest side at most ``max_side``."""
    frames = load_media(item.path, 3 if item.media_type == "video" else 1, item.media_type)
    image = frames[len(frames) // 2].convert("RGB")
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def converse(client, cfg: CaptionerConfig, turns: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """One conversation: each turn's content (name -> message parts) is sent after the previous
    answers; returns each turn's answer. An empty answer is an error naming the turn."""
    messages: list[dict[str, Any]] = []
    answers = {}
    for name, content in turns.items():
        messages.append({"role": "user", "content": content})
        reply = client.chat.completions.create(model=cfg.model, messages=messages, max_tokens=cfg.max_tokens)
        text = (reply.choices[0].message.content or "").strip() if reply.choices else ""
        if not text:
            raise ValueError(f"empty answer at stage {name!r}")
        answers[name] = text
        messages.append({"role": "assistant", "content": text})
    return answers


def picture(item: GalleryItem, max_side: int) -> dict[str, Any]:
    """A message part carrying the item's image."""
    return {"type": "image_url", "image_url": {"url": image_data_url(item, max_side)}}


class CaptionCache:
    """A JSONL cache (captions; reasoning chains with ``reader=read_chain_records``), appended one
    whole line per write (after removing a cut-off last line)."""

    def __init__(self, path: str | Path, reader: Callable[[Path], dict[str, dict[str, Any]]] = read_caption_records):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._hold_writer_lock()
        self._trim_partial_line()
        self.records = reader(self.path) if self.path.is_file() else {}
        self._lock = threading.Lock()

    def _hold_writer_lock(self) -> None:
        """One writer per cache file: a second run refuses at once instead of duplicating the work
        (the lock goes with the process, however it ends)."""
        import fcntl

        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise ComposirError(f"{self.path}: another composir run is writing this file; wait for it") from None

    def close(self) -> None:
        self._lock_file.close()

    def _trim_partial_line(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def done(self, image_id: str) -> bool:
        record = self.records.get(image_id)
        return record is not None and "error" not in record

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.records[record["id"]] = record


def annotate(
    todo: list, cache: CaptionCache, one: Callable, cfg: CaptionerConfig, desc: str, progress: bool, client=None
) -> dict[str, Any]:
    """``one(client, cfg, x)`` for every ``x`` in ``todo``, ``cfg.concurrency`` at a time, each record
    appended to ``cache`` as it comes (a record with ``error`` counts as failed)."""
    counts: dict[str, Any] = {"done": 0, "failed": 0}
    if not todo:
        return counts
    stop = threading.Event()
    client = client or make_client(cfg, stop)
    check_reachable(client, cfg.url)
    pool = ThreadPoolExecutor(max_workers=cfg.concurrency)
    try:
        futures = [pool.submit(one, client, cfg, x) for x in todo]
        for future in progress_bar(as_completed(futures), total=len(futures), desc=desc, disable=not progress):
            record = future.result()
            cache.append(record)
            counts["failed" if "error" in record else "done"] += 1
            if "error" in record and "first_error" not in counts:
                counts["first_error"] = f"{record['id']}: {record['error']}"
    except BaseException:
        # Ctrl-C / SIGTERM: nothing more is sent, requests in flight give up at their next read,
        # and what was answered is already in the cache.
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            client.close()
        raise
    pool.shutdown()
    return counts
