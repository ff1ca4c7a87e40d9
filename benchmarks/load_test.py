"""A bounded load test of `composir serve` on 127.0.0.1: N concurrent clients for T seconds.

Then the hostile phase: 4 threads upload a 12000x12000 PNG (a few hundred KB that
decodes to 144 megapixels) 29 times in all while one client sends text queries (their latency is
what a slow decode under the model lock used to ruin), the server's memory before and after; and
a 1 GB upload, whose 413 must come before the body is sent; then 32 uploads at once of a PNG just
under the pixel limit (its decode is allowed), the server's peak memory and its memory 20 s later.

Builds a small index (a tiny model trained for a few steps on the synthetic benchmark, unless
--index is given), starts the server as a subprocess on a free loopback port, runs the clients
(uploads and gallery-id searches), then sends the bad uploads of issue 6 and checks each gets a
4xx with a message while the server keeps answering. Reports errors, latency percentiles and the
server's resident memory before, during and after.

    .venv/bin/python benchmarks/load_test.py [--clients 16] [--seconds 60]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_index(tmp: Path) -> Path:
    from composir.cli import main as cli
    from composir.synth import SynthConfig, generate
    from composir.train import load_config, train

    data = tmp / "data"
    generate(SynthConfig(out=data, seed=0, size=1000), progress=False)
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "tiny-synthetic-combiner.yaml",
        [
            f"data.root={data}",
            f"output_dir={tmp / 'run'}",
            "train.max_steps=20",
            "train.eval_every=20",
            "train.save_every=20",
            "train.num_workers=0",
        ],
    )
    train(cfg, resume=False, progress=False)
    assert cli(["index", "--run", str(tmp / "run"), "--media", str(data / "test"), "--out", str(tmp / "index")]) == 0
    return tmp / "index"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng().integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bad_uploads(tmp: Path) -> dict[str, tuple[str, bytes]]:
    from composir.data.media import write_video

    good = io.BytesIO()
    Image.new("RGB", (256, 256), "red").save(good, "JPEG")
    empty_video = tmp / "no_frames.mp4"
    write_video(tmp / "one.mp4", [np.zeros((32, 32, 3), np.uint8)])
    data = (tmp / "one.mp4").read_bytes()
    empty_video.write_bytes(data[: data.find(b"mdat")] if b"mdat" in data else data[:64])  # header, no frames
    return {
        "truncated JPEG": ("cut.jpg", good.getvalue()[: len(good.getvalue()) // 3]),
        "text file named .png": ("notes.png", b"this is a text file, not an image\n" * 10),
        "0-byte file": ("empty.png", b""),
        "200 MB file": ("huge.png", b"\x89PNG" + b"\x00" * (200 * 1024 * 1024)),
        "video with no frames": ("no_frames.mp4", empty_video.read_bytes()),
    }


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12000, 12000), (30, 60, 90)).save(buf, "PNG")
    return buf.getvalue()


def hostile_phase(base: str, server_pid: int, uploads: int = 29) -> None:
    png = _huge_png()
    rss_before = _rss_mb(server_pid)
    statuses: list[int] = []
    text_latency: list[float] = []
    remaining = list(range(uploads))
    lock = threading.Lock()

    def uploader() -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            while True:
                with lock:
                    if not remaining:
                        return
                    remaining.pop()
                r = c.post("/search", data={"text": "x"}, files={"file": ("huge.png", png, "image/png")})
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=uploader) for _ in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    with httpx.Client(base_url=base, timeout=120) as c:
        while any(t.is_alive() for t in threads):
            q0 = time.perf_counter()
            c.post("/search", data={"text": "add a red circle", "k": "10"})
            text_latency.append(time.perf_counter() - q0)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    rss_after = _rss_mb(server_pid)
    lat = sorted(text_latency)
    print(
        f"hostile: {uploads} uploads of a {len(png) // 1024} KB 12000x12000 PNG in {elapsed:.1f} s, statuses "
        f"{sorted(set(statuses))}; concurrent text queries: {len(lat)}, p50 {1000 * lat[len(lat) // 2]:.0f} ms, "
        f"max {1000 * lat[-1]:.0f} ms; server RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )

    def gigabyte():
        chunk = b"\0" * (1 << 20)
        for _ in range(1024):
            yield chunk

    t0 = time.perf_counter()
    try:
        r = httpx.post(
            base + "/search",
            content=gigabyte(),
            headers={"content-type": "multipart/form-data; boundary=x", "content-length": str(1 << 30)},
            timeout=120,
        )
        outcome = f"{r.status_code} {r.json()['detail']}"
    except httpx.HTTPError as exc:  # the server answered and closed while the body was still going
        outcome = f"connection closed by the server ({type(exc).__name__})"
    print(f"1 GB upload: {outcome} after {time.perf_counter() - t0:.2f} s; RSS {_rss_mb(server_pid):.0f} MiB")


def _just_under_the_limit_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (5600, 4200), (30, 60, 90, 255)).save(buf, "PNG")  # 23.5 MP, under the 24 MP limit
    return buf.getvalue()


def parallel_decode_phase(base: str, server_pid: int, parallel: int = 32, idle_s: float = 20.0) -> None:
    """``parallel`` uploads at once of an image each decode may take (a few KB on the wire, ~165 MB
    decoded): the server's peak memory is what the decode budget bounds."""
    png = _just_under_the_limit_png()
    rss_idle = _rss_mb(server_pid)
    peak = [rss_idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb(server_pid))
            time.sleep(0.02)

    statuses: list[int] = []

    def upload() -> None:
        with httpx.Client(base_url=base, timeout=300) as c:
            r = c.post("/search", data={"text": "x"}, files={"file": ("big.png", png, "image/png")})
            statuses.append(r.status_code)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=upload) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    time.sleep(idle_s)
    done.set()
    sampler.join()
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(
        f"parallel decodes: {parallel} uploads of a {len(png) // 1024} KB 5600x4200 RGBA PNG at once "
        f"in {elapsed:.1f} s, "
        f"statuses {counts}; server RSS idle {rss_idle:.0f} MiB, peak {peak[0]:.0f} MiB, "
        f"{idle_s:.0f} s after {_rss_mb(server_pid):.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--index", default=None)
    parser.add_argument("--hostile-uploads", type=int, default=29)
    parser.add_argument("--hostile-only", action="store_true", help="skip the normal load and the bad uploads")
    parser.add_argument(
        "--server-src", default=None, help="run the server from another source tree (e.g. an older commit's src/)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        index = Path(args.index) if args.index else build_index(tmp)
        port = _free_port()
        env = dict(os.environ)
        if args.server_src:
            env["PYTHONPATH"] = args.server_src
        server = subprocess.Popen(
            [sys.executable, "-m", "composir.cli", "serve", "--index", str(index), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            if args.hostile_only:
                httpx.post(base + "/search", data={"text": "x", "k": "5"})  # the model is warm
                hostile_phase(base, server.pid, args.hostile_uploads)
                parallel_decode_phase(base, server.pid)
                return
            health = httpx.get(base + "/health").json()
            ids = [r["id"] for r in httpx.post(base + "/search", data={"text": "x", "k": "50"}).json()["results"]]
            rss_start = _rss_mb(server.pid)
            latencies: list[float] = []
            errors: list[str] = []
            rss_samples: list[float] = []
            stop = time.time() + args.seconds
            lock = threading.Lock()

            def client(seed: int) -> None:
                rng = random.Random(seed)
                with httpx.Client(base_url=base, timeout=30) as c:
                    while time.time() < stop:
                        t0 = time.perf_counter()
                        if rng.random() < 0.5:
                            r = c.post(
                                "/search",
                                data={"text": "make the background pink", "k": "10"},
                                files={"file": ("q.png", _png(), "image/png")},
                            )
                        else:
                            r = c.post("/search", data={"text": "add a red circle", "id": rng.choice(ids), "k": "10"})
                        dt = time.perf_counter() - t0
                        with lock:
                            latencies.append(dt)
                            if r.status_code != 200:
                                errors.append(f"{r.status_code}: {r.text[:100]}")

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                rss_samples.append(_rss_mb(server.pid))
                time.sleep(2)
            rss_end = _rss_mb(server.pid)
            lat = sorted(latencies)
            print(
                f"server: {health['items']} items, method {health['method']}; {args.clients} clients for "
                f"{args.seconds:.0f} s on 127.0.0.1"
            )
            print(f"requests: {len(lat)} ({len(lat) / args.seconds:.1f}/s), errors: {len(errors)}")
            print(
                f"latency p50 {1000 * lat[len(lat) // 2]:.0f} ms, p99 {1000 * lat[int(len(lat) * 0.99)]:.0f} ms, "
                f"mean {1000 * statistics.mean(lat):.0f} ms"
            )
            print(
                f"server RSS: start {rss_start:.0f} MiB, max during {max(rss_samples):.0f} MiB, "
                f"end {rss_end:.0f} MiB (samples every 2 s: first half mean "
                f"{statistics.mean(rss_samples[: len(rss_samples) // 2]):.0f}, second half mean "
                f"{statistics.mean(rss_samples[len(rss_samples) // 2 :]):.0f})"
            )
            for e in errors[:5]:
                print("  error:", e)
            print("| bad upload | status | message |")
            print("|---|---|---|")
            for label, (name, payload) in bad_uploads(tmp).items():
                r = httpx.post(base + "/search", data={"text": "x"}, files={"file": (name, payload)}, timeout=120)
                print(f"| {label} | {r.status_code} | {r.json().get('detail', '')[:90]} |")
                assert 400 <= r.status_code < 500, (label, r.status_code)
                assert httpx.get(base + "/health").status_code == 200, "server stopped answering"
            print(f"server still serving after the bad uploads: {httpx.get(base + '/health').json()['status']}")
            hostile_phase(base, server.pid, args.hostile_uploads)
            print(f"server still serving after the hostile phase: {httpx.get(base + '/health').json()['status']}")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
