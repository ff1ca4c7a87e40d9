"""What one request may cost the server: decodes bounded in number, memory, frames and time;
result URLs that name the file they link to; a JSON body told what the API takes."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from composir.data.media import write_video
from composir.search.searcher import SearchResult
from composir.service import ServiceSettings, create_app


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def _search(client, name: str, payload: bytes, **data):
    return client.post("/search", data={"text": "make it red", **data}, files={"file": (name, payload, "image/png")})


def test_a_decode_over_the_memory_budget_is_refused_from_the_header(searcher):
    big = _png((3000, 2000), "RGBA")  # 6 MP, 4 bands: about 40 MiB to decode, a few KB on the wire
    assert len(big) < 200_000
    tight = TestClient(create_app(searcher, ServiceSettings(max_decode_bytes=16 * 1024 * 1024)))
    r = _search(tight, "big.png", big)
    assert r.status_code == 400 and "decoding it would take 40 MiB; the limit is 16 MiB" in r.json()["detail"]
    roomy = TestClient(create_app(searcher, ServiceSettings(max_decode_bytes=64 * 1024 * 1024)))
    assert _search(roomy, "big.png", big).status_code == 200


def test_a_video_is_bounded_in_frames_and_decode_time(searcher, tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, [np.full((32, 32, 3), i * 10, np.uint8) for i in range(20)])
    payload = path.read_bytes()

    def post(settings):
        client = TestClient(create_app(searcher, settings))
        return client.post("/search", data={"text": "x"}, files={"file": ("clip.mp4", payload, "video/mp4")})

    r = post(ServiceSettings(max_video_frames=10))
    assert r.status_code == 400 and "video has 20 frames; the limit is 10" in r.json()["detail"]
    r = post(ServiceSettings(max_decode_s=1e-9))
    assert r.status_code == 400 and "decoding took longer than" in r.json()["detail"]
    assert post(ServiceSettings()).status_code == 200


def test_concurrent_decodes_are_bounded_and_the_rest_are_told_to_retry(searcher, monkeypatch):
    real = searcher.load_reference
    inside = []

    def slow(*args, **kwargs):
        inside.append(time.monotonic())
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(searcher, "load_reference", slow)
    client = TestClient(create_app(searcher, ServiceSettings(max_decodes=1, decode_wait_s=0.2)))
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(_search(client, "a.png", _png((32, 32))).status_code))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [200, 503, 503] and len(inside) == 1
    assert client.post("/search", data={"text": "a red circle"}).status_code == 200  # text needs no decode slot


def test_result_urls_are_percent_encoded(searcher, monkeypatch):
    odd = SearchResult("sub dir/x%20y #1.png", "/nowhere", 0.5)
    monkeypatch.setattr(searcher, "search_explained", lambda reference, text, k: ([odd], None))
    r = TestClient(create_app(searcher)).post("/search", data={"text": "anything"})
    assert r.json()["results"][0]["url"] == "/media/sub%20dir/x%2520y%20%231.png"


def test_a_json_body_is_told_what_the_api_takes(searcher):
    r = TestClient(create_app(searcher)).post("/search", json={"text": "make it red", "k": 3})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_a_video_decode_stops_when_asked_to(tmp_path):
    """``DecodeLimits.cancelled`` is asked while a video decodes; True stops it with one line."""
    from composir.data.media import DecodeLimits, load_video
    from composir.errors import MediaError

    path = tmp_path / "long.mp4"
    write_video(path, [np.full((32, 32, 3), i % 250, np.uint8) for i in range(200)])
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) >= 3  # the client went away after a few checks

    try:
        load_video(path, 8, limits=DecodeLimits(cancelled=cancelled))
        raise AssertionError("the decode was not stopped")
    except MediaError as exc:
        assert "cancelled" in str(exc)
    assert len(asked) == 3  # asked every 16 frames: stopped at frame 32 of 200, not at the end
    assert len(load_video(path, 8, limits=DecodeLimits(cancelled=lambda: False))) == 8


def test_the_service_asks_whether_the_client_is_still_there(searcher, monkeypatch):
    """The search endpoint hands the decode a check that asks the server whether its client has
    disconnected (Starlette's ``Request.is_disconnected``, from the worker thread)."""
    import anyio
    from starlette.requests import Request

    from composir.service.app import _client_gone

    async def probe(messages: list[dict]) -> bool:
        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await anyio.sleep(10)  # a connected client sends nothing more
            return {}

        gone = _client_gone(Request({"type": "http", "method": "POST", "headers": []}, receive), every_s=0)
        return await anyio.to_thread.run_sync(gone)

    assert anyio.run(probe, [{"type": "http.disconnect"}]) is True
    assert anyio.run(probe, []) is False
    seen = []
    load = searcher.load_reference
    monkeypatch.setattr(
        searcher, "load_reference", lambda ref, limits=None: seen.append(limits) or load(ref, limits=limits)
    )
    client = TestClient(create_app(searcher))
    item = next(iter(searcher.index.items()))
    assert client.post("/search", data={"id": item, "text": "make it red", "k": "2"}).status_code == 200
    assert seen and seen[0].cancelled is not None and seen[0].cancelled() is False  # connected: go on


def test_freed_memory_is_given_back_after_large_decodes_only(searcher, monkeypatch):
    """Giving glibc's freed pages back costs ~2 ms: done after a large reference's decode (where a
    burst of them would otherwise keep the server at its peak), not after every small query."""
    import composir.service.app as app_module

    trims = []
    monkeypatch.setattr(app_module, "_return_freed_memory", lambda: trims.append(1))
    client = TestClient(create_app(searcher))
    small, large = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(small, "PNG")
    Image.new("RGB", (2500, 1700), "red").save(large, "PNG")  # 4.25 MP
    for payload, want in ((small, 0), (large, 1)):
        files = {"file": ("ref.png", payload.getvalue(), "image/png")}
        assert client.post("/search", data={"text": "x", "k": "2"}, files=files).status_code == 200
        assert len(trims) == want
