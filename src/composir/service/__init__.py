"""HTTP service: FastAPI app over a Searcher, and the web page it serves."""

from composir.service.app import ServiceSettings, create_app

__all__ = ["ServiceSettings", "create_app"]
