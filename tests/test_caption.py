"""`composir caption` against a small OpenAI-compatible server on 127.0.0.1, and the caption cache."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from composir.annotate.captions import caption_items
from composir.annotate.client import CaptionerConfig
from composir.cli import main
from composir.data.captions import STAGES, attach_captions, read_caption_records, read_captions
from composir.data.records import Benchmark, GalleryItem, Triplet
from composir.errors import AnnotationError
from helpers import free_port


class FakeLLM(BaseHTTPRequestHandler):
    """Answers chat completions like an OpenAI-compatible server; ``mode`` decides how it misbehaves."""

    mode = "ok"  # ok | fail500 | slow | paced | malformed | drip | huge | html
    requests: ClassVar[list[dict]] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.mode == "html":
            return self._send(200, b"<html><body>not an API</body></html>", "text/html")
        self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.mode == "fail500":
            return self._send(500, b'{"error": {"message": "boom"}}')
        if self.mode == "slow":
            time.sleep(2.0)
        if self.mode == "paced":
            time.sleep(0.3)
        if self.mode == "malformed":
            return self._send(200, b'{"choices": [ this is not json')
        if self.mode == "html":
            return self._send(200, b"<html><body>not an API</body></html>", "text/html")
        if self.mode == "huge":
            return self._send(200, b'{"choices": [], "pad": "' + b"x" * (3 << 20) + b'"}')
        if self.mode == "drip":  # a byte at a time: every read is quick, the answer never ends
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            for _ in range(4096):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
            return None
        turn = sum(m["role"] == "user" for m in body["messages"])
        image = body["messages"][0]["content"][0]["image_url"]["url"]
        answer = f"stage {turn} of an image of {len(image)} chars"
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        }
        self._send(200, json.dumps(reply).encode())


class QuietServer(ThreadingHTTPServer):
    """A client that gave up (the slow mode's timeouts) makes a handler thread fail later; that
    traceback must not land on stderr during another test."""

    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def server():
    FakeLLM.mode, FakeLLM.requests = "ok", []
    httpd = QuietServer(("127.0.0.1", 0), FakeLLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _items(folder: Path, n: int, broken: set[int] = frozenset()) -> list[GalleryItem]:
    items = []
    for i in range(n):
        path = folder / f"img{i}.png"
        if i in broken:
            path.write_bytes(b"not a png")
        else:
            Image.new("RGB", (40 + i, 30), (10 * i, 0, 0)).save(path)
        items.append(GalleryItem(id=f"img{i}", path=path))
    return items


def _cfg(url: str, **kw) -> CaptionerConfig:
    return CaptionerConfig(url=url, model="fake-vl", **{"retries": 0, "concurrency": 2, "timeout": 5.0, **kw})


def test_captions_every_stage_in_one_conversation(server, tmp_path):
    items = _items(tmp_path, 3)
    out = tmp_path / "captions.jsonl"
    counts = caption_items(items, out, _cfg(server), progress=False)
    assert counts == {"images": 3, "already": 0, "captioned": 3, "failed": 0}
    records = read_caption_records(out)
    assert set(records) == {"img0", "img1", "img2"}
    assert list(records["img0"]["stages"]) == list(STAGES)
    assert records["img1"]["stages"]["final"].startswith("stage 4 of an image")
    # Four requests per image; each stage sees the earlier questions and answers (the chain).
    assert len(FakeLLM.requests) == 12
    last = max(FakeLLM.requests, key=lambda r: len(r["messages"]))
    assert [m["role"] for m in last["messages"]] == ["user", "assistant"] * 3 + ["user"]
    assert last["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_resume_skips_done_ids_drops_a_cut_line_and_retries_failures(server, tmp_path):
    items = _items(tmp_path, 4, broken={2})
    out = tmp_path / "captions.jsonl"
    counts = caption_items(items[:2], out, _cfg(server), progress=False)  # a run stopped after two images
    assert counts["captioned"] == 2
    with open(out, "a") as f:
        f.write('{"id": "img3", "stages": {"objec')  # a killed writer's cut-off line
    FakeLLM.requests.clear()
    counts = caption_items(items, out, _cfg(server), progress=False)
    # img0, img1 skipped; img2 is a broken file: recorded and skipped; img3 captioned.
    assert counts.pop("first_error").startswith("img2: MediaError")
    assert counts == {"images": 4, "already": 2, "captioned": 1, "failed": 1}
    assert len(FakeLLM.requests) == 4
    lines = out.read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 4
    records = read_caption_records(out)
    assert "error" in records["img2"] and "stages" in records["img3"]
    # The broken image is tried again on the next run (and fails again); done ids are not.
    FakeLLM.requests.clear()
    counts = caption_items(items, out, _cfg(server), progress=False)
    assert counts["already"] == 3 and counts["failed"] == 1 and FakeLLM.requests == []
    assert read_captions(out) == {i: records[i]["stages"]["final"] for i in ("img0", "img1", "img3")}


@pytest.mark.parametrize("mode", ["fail500", "slow", "malformed"])
def test_a_misbehaving_server_fails_images_not_the_run(server, tmp_path, mode):
    FakeLLM.mode = mode
    out = tmp_path / "captions.jsonl"
    counts = caption_items(_items(tmp_path, 2), out, _cfg(server, timeout=0.5, retries=1), progress=False)
    assert counts["failed"] == 2 and counts["captioned"] == 0
    records = read_caption_records(out)
    assert all("error" in r for r in records.values())
    if mode == "fail500":
        assert len(FakeLLM.requests) == 4  # the first stage of each image, tried twice (retries=1)
        assert "500" in records["img0"]["error"]


def test_unreachable_server_is_one_clear_error(tmp_path, capsys):
    _items(tmp_path, 1)
    port = free_port()  # nothing listens there
    bench_root = tmp_path / "bench"
    _write_tiny_cirr_like_synthetic(bench_root)
    code = main([
        "caption", "--benchmark", "synthetic", "--root", str(bench_root), "--split", "test",
        "--out", str(tmp_path / "c.jsonl"), "--url", f"http://127.0.0.1:{port}/v1", "--model", "m",
        "--retries", "0", "--timeout", "2", "--quiet",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err, err  # (a library's warning on stderr is not ours to count)
    assert len(ours) == 1 and ours[0].startswith(
        f"error: cannot reach the caption server at http://127.0.0.1:{port}/v1"
    )
    assert not (tmp_path / "c.jsonl").exists() or (tmp_path / "c.jsonl").read_text() == ""


def _write_tiny_cirr_like_synthetic(root: Path) -> None:
    from composir.synth import SynthConfig, generate

    generate(SynthConfig(out=root, seed=0, size=60, workers=1), progress=False)


def test_cli_captions_a_synthetic_split(server, tmp_path, capsys):
    root = tmp_path / "bench"
    _write_tiny_cirr_like_synthetic(root)
    out = tmp_path / "c.jsonl"
    args = ["caption", "--benchmark", "synthetic", "--root", str(root), "--split", "test", "--out", str(out)]
    code = main([*args, "--url", server, "--model", "fake-vl", "--limit", "3", "--quiet"])
    assert code == 0
    assert "3 captioned, 0 failed" in capsys.readouterr().out
    assert len(read_captions(out)) == 3


def test_caption_cache_reader_errors_and_attach(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "stages": {"final": "x"}}\n{oops}\n{"id": "b", "stages": {"final": "y"}}\n')
    with pytest.raises(AnnotationError, match="line 2: not valid JSON"):
        read_caption_records(bad)
    bad.write_text('{"id": "a", "stages": {"objects": "x"}}\n')
    with pytest.raises(AnnotationError, match='line 1: "stages" must be an object with a string "final"'):
        read_caption_records(bad)
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"id": "t", "stages": {"objects": "o", "final": "old"}}\n'
        '{"id": "t", "stages": {"objects": "o2", "final": "new"}}\n'
        '{"id": "u", "error": "HTTP 500"}\n'
    )
    assert read_captions(good) == {"t": "new"}
    assert read_captions(good, "objects") == {"t": "o2"}
    gallery = [GalleryItem("t", None), GalleryItem("u", None)]
    bench = Benchmark("b", "s", tmp_path, [Triplet("q", "r", "text", ["t"])], gallery)
    assert attach_captions(bench, read_captions(good)) == 1  # u has none
    assert gallery[0].caption == "new" and bench.queries[0].extra["target_caption"] == "new"


def test_synthetic_benchmark_ships_its_caption_cache(synth_root):
    from composir.data import load_benchmark

    bench = load_benchmark("synthetic", synth_root, "val")
    assert all(item.caption for item in bench.gallery)
    q = bench.queries[0]
    assert q.extra["target_caption"] == bench.media_item(q.target_ids[0]).caption
    # The generator's levels stand in for the LLM's stages: final = the attributes level.
    assert q.extra["target_caption"] == q.extra["target_captions"]["attributes"]


# ------------------------------------------------------------------------------ annotate-cot (CIR-CoT)
def test_annotate_cot_writes_a_chain_per_query_resumes_and_skips_a_broken_image(server, tmp_path, capsys):
    from composir.data import load_benchmark
    from composir.data.chains import read_chain_records, read_chains

    root = tmp_path / "bench"
    _write_tiny_cirr_like_synthetic(root)
    bench = load_benchmark("synthetic", root, "test")
    broken = bench.media_item(bench.queries[1].target_ids[0]).path
    Path(broken).write_bytes(b"not a png")
    out = tmp_path / "chains.jsonl"
    args = ["annotate-cot", "--benchmark", "synthetic", "--root", str(root), "--split", "test", "--out", str(out)]
    code = main([*args, "--url", server, "--model", "fake-vl", "--limit", "3", "--quiet", "--retries", "0"])
    assert code == 1  # one query failed
    assert "2 chains written, 1 failed" in capsys.readouterr().out
    records = read_chain_records(out)
    assert "error" in records[bench.queries[1].query_id]
    chain = records[bench.queries[0].query_id]["cot"]
    assert set(chain) == {"caption", "reasoning", "conclusion"} and chain["conclusion"].startswith("stage 3")
    # One conversation per query: the request is in the reasoning turn, the target image in the third.
    assert len(FakeLLM.requests) == 6  # three turns for each good query; none for the broken one
    last = [r for r in FakeLLM.requests if len(r["messages"]) == 5]
    assert [m["role"] for m in last[0]["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    asked = {json.dumps(r["messages"][2]) for r in last}
    assert any(json.dumps(bench.queries[0].text)[1:-1] in a for a in asked)  # the request, in the reasoning turn
    assert all(r["messages"][4]["content"][0]["type"] == "image_url" for r in last)  # then the target image
    FakeLLM.requests.clear()  # a re-run tries only the failed query, which fails before any request
    assert main([*args, "--url", server, "--model", "fake-vl", "--limit", "3", "--quiet", "--retries", "0"]) == 1
    assert FakeLLM.requests == []
    # Training reads them: data.chains puts each chain in the query's extra["cot"].
    annotated = load_benchmark("synthetic", root, "test", chains=out)
    assert annotated.queries[0].extra["cot"] == read_chains(out)[bench.queries[0].query_id]


def test_chain_records_are_checked(tmp_path):
    from composir.data.chains import read_chain_records

    bad = tmp_path / "chains.jsonl"
    bad.write_text('{"id": "1", "cot": {"caption": "c", "reasoning": "r"}}\n')
    with pytest.raises(AnnotationError, match=r'line 1: "cot" must be an object with strings caption, reasoning'):
        read_chain_records(bad)


@pytest.mark.parametrize(("mode", "why"), [("drip", "took longer"), ("huge", "larger than"), ("html", "")])
def test_a_request_is_bounded_in_time_and_size_whatever_the_server_does(server, tmp_path, mode, why):
    FakeLLM.mode = mode
    out = tmp_path / "captions.jsonl"
    start = time.monotonic()
    counts = caption_items(
        _items(tmp_path, 1), out, _cfg(server, timeout=1.0, max_answer_bytes=1 << 20), progress=False
    )
    assert time.monotonic() - start < 6  # the drip would take 200 s; per-read time-outs never fire
    assert counts["failed"] == 1 and why in counts["first_error"]
    assert "error" in read_caption_records(out)["img0"]


def test_a_second_run_on_the_same_cache_refuses_at_once(server, tmp_path):
    from composir.annotate.client import CaptionCache
    from composir.errors import ComposirError

    out = tmp_path / "captions.jsonl"
    holder = CaptionCache(out)  # another run, still writing
    try:
        with pytest.raises(ComposirError, match="another composir run is writing this file"):
            caption_items(_items(tmp_path, 1), out, _cfg(server), progress=False)
    finally:
        holder.close()
    assert caption_items(_items(tmp_path, 1), out, _cfg(server), progress=False)["captioned"] == 1


SLOW_RUN = """
import sys
from pathlib import Path
from PIL import Image
from composir.annotate.captions import caption_items
from composir.annotate.client import CaptionerConfig
from composir.data.records import GalleryItem

folder = Path(sys.argv[2])
items = []
for i in range(200):
    path = folder / f"img{i}.png"
    Image.new("RGB", (8, 8)).save(path)
    items.append(GalleryItem(id=f"img{i}", path=path))
print("ready", flush=True)
caption_items(items, folder / "c.jsonl", CaptionerConfig(url=sys.argv[1], model="m", retries=0, concurrency=4,
              timeout=30), progress=False)
"""


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_the_client_at_once_and_keeps_what_was_answered(server, tmp_path, signal_name):
    import signal
    import subprocess
    import sys

    FakeLLM.mode = "paced"  # 0.3 s per answer, 4 in flight: requests are on their way when the signal comes
    script = tmp_path / "run.py"
    script.write_text(SLOW_RUN)
    # Both signals raise KeyboardInterrupt, as SIGINT does in a terminal; set explicitly, since a test
    # run started in the background (nohup, &) passes SIGINT on ignored and Python keeps it so.
    code = "import signal, runpy, sys; signal.signal(signal.SIGTERM, signal.default_int_handler); "
    code += "signal.signal(signal.SIGINT, signal.default_int_handler); "
    code += "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    proc = subprocess.Popen([sys.executable, "-c", code, str(script), server, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "ready"
    cache, deadline = tmp_path / "c.jsonl", time.monotonic() + 60
    while not (cache.is_file() and cache.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)  # the first answers are in (however slowly a loaded machine starts the process)
    sent_before = len(FakeLLM.requests)
    start = time.monotonic()
    proc.send_signal(getattr(signal, signal_name))
    try:  # communicate, not wait: a child blocked on a full stderr pipe would never exit
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running 20 s after the signal; its stderr ends: {err[-3000:]}") from None
    assert time.monotonic() - start < 2.5, "still running long after the signal"
    time.sleep(0.5)
    assert len(FakeLLM.requests) <= sent_before + 4  # at most what was already on its way
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["id"].startswith("img") for line in lines)  # whole lines only


def test_a_captioner_killed_mid_run_leaves_a_cache_that_resumes_without_lost_or_duplicated_lines(
    server, synth_root, tmp_path
):
    """SIGKILL while requests are in flight and records are being appended; the re-run finishes the
    rest: every line is JSON, each image once, none lost."""
    import os
    import signal
    import subprocess
    import sys

    FakeLLM.mode = "paced"  # 0.3 s a request, 4 a caption: the kill lands mid-run
    out = tmp_path / "captions.jsonl"
    argv = ["caption", "--benchmark", "synthetic", "--root", str(synth_root), "--split", "val", "--out", str(out),
            "--url", server, "--model", "fake-vl", "--retries", "0", "--concurrency", "3", "--limit", "12",
            "--quiet"]  # fmt: skip
    code = "import sys; from composir.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(out.read_text().splitlines())
    assert 3 <= killed_at < 12  # killed with records written and images left
    FakeLLM.mode = "ok"
    assert main(argv) == 0
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 12  # each image once: none lost, none written twice
    assert all("stages" in r for r in records)


def test_a_folder_of_ones_own_images_is_captioned_under_the_keys_the_index_uses(server, tmp_path, capsys):
    media = tmp_path / "photos"
    (media / "2024").mkdir(parents=True)
    for name in ("a.jpg", "2024/b.jpg"):
        Image.new("RGB", (16, 16), (200, 10, 10)).save(media / name)
    (media / "notes.txt").write_text("not an image")
    out = tmp_path / "captions.jsonl"
    argv = ["caption", "--media", str(media), "--out", str(out), "--url", server, "--model", "fake-vl", "--quiet"]
    assert main(argv) == 0
    assert set(read_captions(out)) == {"a.jpg", "2024/b.jpg"}
    assert main(["caption", "--out", str(out), "--url", server, "--model", "fake-vl"]) == 2
    assert "--media FOLDER, or --benchmark" in capsys.readouterr().err
    assert main([*argv, "--benchmark", "synthetic", "--root", str(tmp_path)]) == 2
