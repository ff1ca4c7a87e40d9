"""A client uploads a long video to ``composir serve`` and hangs up: does the server stop decoding?

Serves an index (``--index``) with uvicorn in this process, uploads a 1,500-frame 320x240 noise
video (67 MB; a full decode takes about 3 s here) over a raw socket, closes the socket 0.3 s
after sending, and reports the server's CPU time over the next full-decode time + 1 s -- with the
disconnect check (``--no-cancel`` replaces it with one that never fires, as before it existed).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/decode_cancel.py --index INDEX [--no-cancel]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import uvicorn

import composir.service.app as service_app
from composir.data.media import DecodeLimits, load_video, write_video
from composir.search import Searcher
from composir.service import ServiceSettings, create_app


def upload_and_hang_up(port: int, video: Path) -> None:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\nmake it red\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    body = head + video.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = (
        f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(request + body)
        time.sleep(0.3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--index", required=True)
    p.add_argument("--no-cancel", action="store_true")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args()
    if args.no_cancel:
        service_app._client_gone = lambda request, every_s=0.2: lambda: False
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "long.mp4"
        rng = np.random.default_rng(0)
        write_video(video, [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(1500)], fps=25)
        start = time.time()
        load_video(video, 8, limits=DecodeLimits(max_video_frames=10**6))
        full = time.time() - start
        settings = ServiceSettings(max_decode_s=120, max_video_frames=10**6, max_upload_bytes=200 * 2**20)
        server = uvicorn.Server(uvicorn.Config(create_app(Searcher(args.index), settings), port=args.port,
                                               log_level="warning"))  # fmt: skip
        threading.Thread(target=server.run, daemon=True).start()
        time.sleep(2)
        upload_and_hang_up(args.port, video)
        cpu = time.process_time()
        time.sleep(full + 1.0)
        busy = time.process_time() - cpu
        server.should_exit = True
    print(f"full decode {full:.2f} s; server CPU in the {full + 1:.1f} s after the client left: {busy:.2f} s "
          f"({'no disconnect check' if args.no_cancel else 'with the disconnect check'})")  # fmt: skip


if __name__ == "__main__":
    main()
