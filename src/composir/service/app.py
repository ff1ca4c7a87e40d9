"""FastAPI app: ``/search`` (upload or gallery id + text), ``/media/{id}``, ``/health``, the web page,
and ``/examples`` (sample queries of a benchmark split, for the page's result grid).

What one request may cost is bounded before work starts:

- the bearer token (``--token``) is checked on the request's headers, before its body is read;
- a body larger than the upload limit is refused from its ``Content-Length`` and, without one,
  as soon as more than the limit has arrived (``RequestGuard``, an ASGI middleware around the
  app, because FastAPI reads a form body whole before any dependency runs);
- an uploaded image of more than ``max_upload_pixels`` is refused from its header (a JPEG is
  first decoded at a reduced scale), and references are decoded outside the model lock, so a
  slow decode never holds up other requests; a video's decode stops when its client goes away;
- k and the text length are checked before any work.

Every refusal is a 4xx with a message; any other failure is a 500 with a message, and the server
keeps serving. ``/media`` serves only indexed items whose file, resolved at request time, is a
regular file inside the indexed media folder. Results name items by their id (the path relative
to the media folder), never by a server path. A new index generation written by
``composir index`` while the server runs is picked up by the next request.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPBearer
from PIL import Image

from composir.data.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, DecodeLimits, media_type_of
from composir.errors import ComposirError, MediaError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the text/k/id fields around one upload


@dataclass
class ServiceSettings:
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_pixels: int = 24_000_000  # per image or video frame; JPEGs are decoded reduced first
    max_k: int = 100
    max_text_chars: int = 500
    token: str | None = None
    # The decode budget: at most ``max_decodes`` references decode at once (a request waits up to
    # ``decode_wait_s`` for a slot, then gets a 503), each within ``max_decode_bytes`` estimated
    # from the header, a video within ``max_video_frames`` and ``max_decode_s``.
    max_decodes: int = 2
    decode_wait_s: float = 10.0
    max_decode_bytes: int = 256 * 1024 * 1024
    max_video_frames: int = 100_000
    max_decode_s: float = 10.0
    idle_timeout_s: int = 5  # keep-alive connections with no request are closed after this
    max_connections: int = 64  # more at once are answered 503 by the server

    def decode_limits(self, cancelled: Callable[[], bool] | None = None) -> DecodeLimits:
        return DecodeLimits(
            self.max_upload_pixels, self.max_decode_bytes, self.max_video_frames, self.max_decode_s, cancelled
        )


class _BodyTooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware: bearer token on the headers and the body-size limit, before the app reads a byte."""

    def __init__(
        self, app, settings: ServiceSettings, protected: tuple[str, ...] = ("/search", "/media/", "/examples")
    ):
        self.app = app
        self.token = settings.token.encode("utf-8") if settings.token is not None else None
        self.max_body = settings.max_upload_bytes + FORM_OVERHEAD
        self.limit_mib = settings.max_upload_bytes // (1024 * 1024)
        self.protected = protected

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.protected):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None and not self._authorized(headers.get(b"authorization", b"")):
            await _send_json(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, f"upload larger than the limit of {self.limit_mib} MiB")
            return
        await self._run_bounded(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credentials = header.partition(b" ")
        # Bytes, not str: a token with non-ASCII characters compares like any other.
        return scheme.lower() == b"bearer" and secrets.compare_digest(credentials.strip(), self.token)

    async def _run_bounded(self, scope, receive, send) -> None:
        received = 0
        over = False
        started = False

        async def counted_receive():
            nonlocal received, over
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                over = True
                raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if over:  # the app turned the aborted read into some other answer: replace it
                return
            started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counted_receive, guarded_send)
        if over and not started:
            await _send_json(send, 413, f"upload larger than the limit of {self.limit_mib} MiB")


async def _send_json(send, status: int, detail: str, extra_headers: list | None = None) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def create_app(
    searcher, settings: ServiceSettings | None = None, examples: list[dict[str, Any]] | None = None
) -> FastAPI:
    """The app over ``searcher``; ``examples`` (``service.examples.sample_examples``) are the sample
    queries the page's result grid runs, with their ground truth."""
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="composir", description="Composed image/video retrieval over an indexed collection", version="0.1.0"
    )
    model_lock = threading.Lock()  # one forward pass at a time: the model is shared by all requests
    decode_slots = threading.BoundedSemaphore(settings.max_decodes)
    refresh_lock = threading.Lock()
    # Declares the scheme in the OpenAPI document; the check itself is RequestGuard's, on raw headers.
    bearer = [Depends(HTTPBearer(auto_error=False))] if settings.token is not None else []

    def current_index():
        with refresh_lock:
            searcher.refresh()
        return searcher.index

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer echoes the offending input back, an uploaded file's bytes included.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "items": len(current_index()),
            "method": searcher.method_name,
            "auth": settings.token is not None,
        }

    @app.get("/examples", dependencies=bearer)
    def sample_queries() -> dict:
        """Sample queries with ground truth (empty unless the server was given a benchmark split)."""
        return {"examples": examples or []}

    @app.get("/media/{item_id:path}", dependencies=bearer)
    def media(item_id: str) -> FileResponse:
        row_id = current_index().key_to_id(item_id)
        if row_id is None:
            raise HTTPException(404, f"no item {item_id!r} in the index")
        path = searcher.media_path(row_id)
        if path is None:
            raise HTTPException(410, f"item {item_id!r} is indexed but its file is gone; re-run composir index")
        return FileResponse(path)

    @app.post("/search", dependencies=bearer)
    def search(
        request: Request,
        text: Annotated[str, Form()] = "",
        k: Annotated[int | None, Form()] = None,
        id: Annotated[str | None, Form()] = None,
        file: Annotated[UploadFile | None, File()] = None,
    ) -> dict:
        if request.headers.get("content-type", "").startswith("application/json"):
            raise HTTPException(415, "POST /search takes multipart/form-data: fields text, k, id and file (an upload)")
        k = k if k is not None else min(12, settings.max_k)
        if not 1 <= k <= settings.max_k:
            raise HTTPException(400, f"k must be between 1 and {settings.max_k}, got {k}")
        if len(text) > settings.max_text_chars:
            raise HTTPException(400, f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
        text = text.strip() or None
        if file is not None and id:
            raise HTTPException(400, "give either an uploaded reference or a gallery id, not both")
        if file is None and not id and text is None:
            raise HTTPException(400, "give a reference (upload or id), a text, or both")
        index = current_index()
        if id and index.key_to_id(id) is None:
            raise HTTPException(404, f"no item {id!r} in the index")
        decodes = file is not None or bool(id)
        if decodes and not decode_slots.acquire(timeout=settings.decode_wait_s):
            raise HTTPException(503, "busy decoding other references; try again in a moment")
        heavy = [False]  # set when the reference decodes large (its pages are then given back)
        try:
            # Decoding: outside the model lock, and stopped if the client goes away meanwhile.
            reference = _load_reference(searcher, file, id, settings, _client_gone(request), heavy)
        finally:
            if decodes:
                decode_slots.release()
                if heavy[0]:
                    _return_freed_memory()
        try:
            with model_lock:  # one forward pass gives the results and the explanation
                results, explanation = searcher.search_explained(reference, text, k)
        except ComposirError as exc:
            raise HTTPException(400, str(exc)) from exc
        return {
            "results": [
                {
                    "id": r.id,
                    "score": round(float(r.score), 6),
                    "media_type": r.media_type,
                    "url": "/media/" + quote(r.id),
                }
                for r in results
            ],
            "explanation": explanation,
        }

    app.add_middleware(RequestGuard, settings=settings)
    return app


def _client_gone(request: Request, every_s: float = 0.2) -> Callable[[], bool]:
    """Whether the request's client has disconnected, asked from the worker thread a sync endpoint
    runs in (through the event loop, at most every ``every_s``); once gone, always gone."""
    state = {"asked": 0.0, "gone": False}

    def gone() -> bool:
        now = time.monotonic()
        if not state["gone"] and now - state["asked"] >= every_s:
            state["asked"] = now
            try:
                state["gone"] = bool(anyio.from_thread.run(request.is_disconnected))
            except RuntimeError:  # not called from a worker thread of the server's loop
                return False
        return bool(state["gone"])

    return gone


def _load_reference(
    searcher,
    file: UploadFile | None,
    item_id: str | None,
    settings: ServiceSettings,
    cancelled: Callable[[], bool] | None = None,
    heavy: list[bool] | None = None,
):
    """The decoded reference of a request (upload or index id), or None; bad media is a 400.
    ``heavy[0]`` is set when its decode is large (a video, or an image of ``HEAVY_PIXELS`` or more)."""
    if file is None and not item_id:
        return None
    tmp_path = _save_upload(file, settings.max_upload_bytes) if file is not None else None
    try:
        if heavy is not None:
            source = tmp_path or (searcher.media_path(searcher.index.key_to_id(item_id)) if item_id else None)
            heavy[0] = source is None or _decodes_large(source)
        return searcher.load_reference(tmp_path or item_id, limits=settings.decode_limits(cancelled))
    except MediaError as exc:
        name = file.filename if file is not None else item_id
        raise HTTPException(400, f"cannot read the reference {name!r}: {exc.args[0].split(': ', 1)[-1]}") from exc
    except ComposirError as exc:
        raise HTTPException(400, str(exc)) from exc
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


# An image at least this large leaves enough freed memory in glibc's arenas to be worth the
# ~2 ms of giving it back; smaller references skip it (it was a quarter of a small query's time).
HEAVY_PIXELS = 4_000_000


def _decodes_large(path: Path) -> bool:
    if media_type_of(path) != "image":
        return True
    try:
        with Image.open(path) as img:  # the header only
            return img.width * img.height >= HEAVY_PIXELS
    except (OSError, ValueError, Image.DecompressionBombError):
        return True  # the decode will say what is wrong; trimming after it costs nothing extra


def _return_freed_memory() -> None:
    """Give the pages a large decode freed back to the system (glibc keeps them in its arenas
    otherwise: a burst of uploads would leave the server's RSS at its peak for good)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _save_upload(file: UploadFile, limit: int) -> Path:
    """Stream the upload to a temp file with its suffix, refusing oversize and unknown types."""
    suffix = Path(file.filename or "").suffix.lower()
    if media_type_of(f"x{suffix}") is None:
        allowed = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise HTTPException(415, f"unsupported file type {suffix or '(none)'!r}; allowed: {allowed}")
    fd, name = tempfile.mkstemp(prefix="composir-upload-", suffix=suffix)
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            while chunk := file.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload larger than the limit of {limit // (1024 * 1024)} MiB")
                handle.write(chunk)
        if size == 0:
            raise HTTPException(400, f"uploaded file {file.filename!r} is empty")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
