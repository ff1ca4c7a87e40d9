"""A client of a running ``composir serve``: one query is a round trip, with no model loaded here.

A fresh process that loads the model pays torch's and the encoder's imports (seconds) before its
first query; a user who searches often keeps the model in ``composir serve`` and asks it from the
command line through this client (``composir search --server URL``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composir.errors import ComposirError


class ServerError(ComposirError):
    """The server could not be reached or refused the query; the message says which and why."""


@dataclass(frozen=True)
class RemoteQuery:
    """A query for ``POST /search``: a reference (a file to upload, or an id in the server's index),
    a text, or both."""

    text: str | None = None
    file: Path | None = None
    id: str | None = None
    k: int = 10


def remote_search(url: str, query: RemoteQuery, token: str | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    """The server's answer to ``query``: ``{"results": [...], "explanation": ...}``."""
    import httpx

    base = url.rstrip("/")
    data: dict[str, str] = {"k": str(query.k)}
    if query.text:
        data["text"] = query.text
    if query.id is not None:
        data["id"] = query.id
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if query.file is not None:
            with open(query.file, "rb") as fh:
                files = {"file": (query.file.name, fh)}
                response = httpx.post(f"{base}/search", data=data, files=files, headers=headers, timeout=timeout_s)
        else:
            response = httpx.post(f"{base}/search", data=data, headers=headers, timeout=timeout_s)
    except OSError as exc:
        raise ServerError(f"{query.file}: cannot read the reference: {exc.strerror or exc}") from exc
    except httpx.TimeoutException as exc:
        raise ServerError(f"{base}: no answer within {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise ServerError(f"{base}: no composir server answers there ({exc}); start one with `composir serve`") from exc
    return _answer(base, response)


def _answer(base: str, response) -> dict[str, Any]:
    """The JSON of a 200 answer, or a ``ServerError`` with the server's own reason."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        detail = body.get("detail") if isinstance(body, dict) else None
        reason = detail if isinstance(detail, str) else (response.text[:200] or response.reason_phrase)
        raise ServerError(f"{base}: the server answered {response.status_code}: {reason}")
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise ServerError(f"{base}: the answer is not a composir search result (is this a composir server?)")
    return body
