"""HTTP service: FastAPI app over a Searcher, the web page it serves, and a client of it.

The app is imported on first use, so the client (``composir search --server``) does not import
FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServiceSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from composir.service import app

        return getattr(app, name)
    raise AttributeError(f"module 'composir.service' has no attribute {name!r}")
