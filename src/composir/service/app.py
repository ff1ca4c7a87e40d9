"""FastAPI app: ``/search`` (upload or gallery id + text), ``/media/{id}``, ``/health``, the web page.

Requests are validated before any work (k, text length, upload size, file type) and answered
with a 4xx and a message; any other failure inside a request becomes a 500 with a message, and
the server keeps serving. Only files that are in the index are ever served by ``/media``.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from composir.data.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, media_type_of
from composir.errors import ComposirError, MediaError

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


@dataclass
class ServiceSettings:
    max_upload_bytes: int = 50 * 1024 * 1024
    max_k: int = 100
    max_text_chars: int = 500
    token: str | None = None


def create_app(searcher, settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="composir", description="Composed image/video retrieval over an indexed collection", version="0.1.0"
    )
    model_lock = threading.Lock()  # one forward pass at a time: the model is shared by all requests
    bearer = HTTPBearer(auto_error=False)

    def authorize(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008 - FastAPI's idiom
    ) -> None:
        if settings.token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials, settings.token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "items": len(searcher.index),
            "method": searcher.config.method.name,
            "auth": settings.token is not None,
        }

    @app.get("/media/{item_id:path}", dependencies=[Depends(authorize)])
    def media(item_id: str) -> FileResponse:
        row_id = searcher.index.key_to_id(item_id)
        if row_id is None:
            raise HTTPException(404, f"no item {item_id!r} in the index")
        _, path, _ = searcher.index.lookup([row_id])[row_id]
        if not Path(path).is_file():
            raise HTTPException(410, f"item {item_id!r} is indexed but its file is gone; re-run composir index")
        return FileResponse(path)

    @app.post("/search", dependencies=[Depends(authorize)])
    def search(
        text: Annotated[str, Form()] = "",
        k: Annotated[int | None, Form()] = None,
        id: Annotated[str | None, Form()] = None,
        file: Annotated[UploadFile | None, File()] = None,
    ) -> dict:
        k = k if k is not None else min(12, settings.max_k)
        if not 1 <= k <= settings.max_k:
            raise HTTPException(400, f"k must be between 1 and {settings.max_k}, got {k}")
        if len(text) > settings.max_text_chars:
            raise HTTPException(400, f"text is {len(text)} characters; the limit is {settings.max_text_chars}")
        text = text.strip() or None
        if file is not None and id:
            raise HTTPException(400, "give either an uploaded reference or a gallery id, not both")
        tmp_path = None
        try:
            reference: str | None = None
            if file is not None:
                tmp_path = _save_upload(file, settings.max_upload_bytes)
                reference = str(tmp_path)
            elif id:
                if searcher.index.key_to_id(id) is None:
                    raise HTTPException(404, f"no item {id!r} in the index")
                reference = id
            if reference is None and text is None:
                raise HTTPException(400, "give a reference (upload or id), a text, or both")
            with model_lock:
                results = searcher.search(reference, text, k)
                explanation = _explain(searcher, reference, text) if reference and text else None
        except MediaError as exc:
            name = file.filename if file is not None else id
            raise HTTPException(400, f"cannot read the reference {name!r}: {exc.args[0].split(': ', 1)[-1]}") from exc
        except ComposirError as exc:
            raise HTTPException(400, str(exc)) from exc
        finally:
            if tmp_path is not None:
                tmp_path.unlink(missing_ok=True)
        return {"results": [{**r.to_json(), "url": f"/media/{r.id}"} for r in results], "explanation": explanation}

    return app


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


def _explain(searcher, reference: str, text: str):
    """The method's own explanation (IMAGINE's prototypes, CIR-CoT's reasoning) where it has one."""
    import torch

    frames, _ = searcher._reference(reference)
    tokens = searcher.method.encoder.tokenize([text])
    with torch.no_grad():
        out = searcher.method.explain(frames.to(searcher.device), tokens.to(searcher.device))
    return out[0] if out else None
