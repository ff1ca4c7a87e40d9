"""The HTTP service: search by upload and by id, limits and bad uploads answered with 4xx, no
path traversal, bearer token, and the server keeps serving after errors."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from composir.cli import main
from composir.search import Searcher
from composir.service import ServiceSettings, create_app
from test_index_search import tiny_run  # noqa: F401 - shared fixture


@pytest.fixture(scope="module")
def searcher(synth_root, tiny_run, tmp_path_factory):  # noqa: F811
    media = tmp_path_factory.mktemp("media")
    for p in sorted((synth_root / "val").glob("*.png"))[:24]:
        shutil.copy(p, media / p.name)
    out = tmp_path_factory.mktemp("index")
    assert main(["index", "--run", str(tiny_run), "--media", str(media), "--out", str(out)]) == 0
    return Searcher(out)


def _png(color=(200, 30, 30), size=64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def test_search_upload_id_health_and_media(searcher):
    client = TestClient(create_app(searcher))
    assert client.get("/health").json()["items"] == 24
    assert "composir" in client.get("/").text
    r = client.post(
        "/search", data={"text": "make the red circle blue", "k": "5"}, files={"file": ("ref.png", _png(), "image/png")}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 5 and all({"id", "score", "url"} <= set(x) for x in results)
    some_id = results[0]["id"]
    r = client.post("/search", data={"text": "add a cat", "id": some_id, "k": "3"})
    assert r.status_code == 200 and some_id not in [x["id"] for x in r.json()["results"]]
    img = client.get(f"/media/{some_id}")
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
    assert client.post("/search", data={"text": "a red circle"}).status_code == 200  # text only
    assert "/search" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("name", "payload", "status", "message"),
    [
        ("truncated.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 100, 400, "cannot read the reference"),
        ("notes.png", b"hello, I am text", 400, "cannot read the reference"),
        ("empty.png", b"", 400, "is empty"),
        ("big.png", b"\x00" * (2 * 1024 * 1024 + 10), 413, "larger than the limit"),
        ("clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, 400, "cannot read the reference"),
        ("script.exe", b"MZ", 415, "unsupported file type"),
    ],
)
def test_bad_uploads_get_4xx_and_server_keeps_serving(searcher, name, payload, status, message):
    client = TestClient(create_app(searcher, ServiceSettings(max_upload_bytes=2 * 1024 * 1024)))
    r = client.post("/search", data={"text": "x"}, files={"file": (name, payload, "application/octet-stream")})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    ok = client.post("/search", data={"text": "x", "k": "2"}, files={"file": ("ok.png", _png(), "image/png")})
    assert ok.status_code == 200


def test_limits_traversal_and_token(searcher):
    client = TestClient(create_app(searcher, ServiceSettings(max_k=10, max_text_chars=20)))
    assert client.post("/search", data={"text": "x", "k": "11"}).status_code == 400
    assert "limit is 20" in client.post("/search", data={"text": "y" * 21}).json()["detail"]
    assert client.post("/search", data={}).status_code == 400
    assert client.post("/search", data={"id": "nope.png", "text": "x"}).status_code == 404
    for evil in ("../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"):
        assert client.get(f"/media/{evil}").status_code == 404
    secured = TestClient(create_app(searcher, ServiceSettings(token="s3cret")))
    assert secured.post("/search", data={"text": "x"}).status_code == 401
    assert secured.post("/search", data={"text": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    good = secured.post("/search", data={"text": "x"}, headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200
    assert secured.get("/health").status_code == 200


def test_video_upload_with_frames(searcher, tmp_path):
    from composir.data.media import write_video

    path = tmp_path / "v.mp4"
    write_video(path, [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(4)])
    client = TestClient(create_app(searcher))
    r = client.post("/search", data={"text": "x", "k": "2"}, files={"file": ("v.mp4", path.read_bytes(), "video/mp4")})
    assert r.status_code == 200, r.text
