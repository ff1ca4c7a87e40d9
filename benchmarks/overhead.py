"""composir's paths beside hand-written loops built from the same model objects, side by side.

For a trained run and a folder of images (and the synthetic benchmark they come from), each row
times composir's path and a minimal loop doing the same work with the same model, alternately,
and reports the median of each and their ratio:

- index: ``GalleryIndex.update`` vs decode -> preprocess -> ``encode_target`` -> FAISS add;
- query (in-process): ``Searcher.search`` vs preprocess -> ``encode_query`` -> FAISS search;
- query (HTTP): ``POST /search`` through the app (Starlette's in-process client) vs in-process;
- query (CLI): ``composir search`` in a fresh process vs importing torch + transformers' BLIP-2
  (the floor any Python process that runs this model pays) plus the in-process query;
- train step: ``composir.train.train`` (triplets/s it logs) vs a loop of the same batches through
  ``method.losses``, backward and AdamW;
- eval: ``evaluate`` vs encoding the gallery and the queries in batches + one matmul + top-k.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/overhead.py --run RUN --root SYNTH_DATA [--items 320]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/overhead.py --run RUN --root SYNTH_DATA --zero-shot ViT-B-32

``--zero-shot``: the query rows only, with a real-size model (open_clip at random init, ``sum``),
whose forward is what a user's query pays; the tiny model's ~9 ms forward makes fixed costs look large.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from composir.data import load_benchmark
from composir.data.media import load_image
from composir.eval.evaluate import evaluate
from composir.index import GalleryIndex
from composir.runs import load_run
from composir.search import Searcher, model_encoder


def alternating(paths: dict, repeats: int, warm: int = 2) -> dict[str, float]:
    """Median seconds of each path, the paths run in turn within every repetition (a slow spell of
    this shared machine hits all of them alike)."""
    for _ in range(warm):
        for fn in paths.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pixels(method, paths: list[Path]) -> torch.Tensor:
    return torch.stack([method.encoder.preprocess(load_image(p)) for p in paths])[:, None]


@torch.no_grad()
def hand_index(method, paths: list[Path], batch: int = 64) -> faiss.Index:
    index = None
    for start in range(0, len(paths), batch):
        feats = method.encode_target(pixels(method, paths[start : start + batch])).numpy()
        index = index or faiss.IndexIDMap(faiss.IndexFlatIP(feats.shape[1]))
        index.add_with_ids(feats, np.arange(start, start + len(feats)))
    return index


QUERY_TEXT = "make it blue"


def query_rows(
    searcher: Searcher, method, flat: faiss.Index, reference: Path, rows: list[str], repeats: int = 20
) -> float:
    """The in-process and HTTP query rows (appended to ``rows``); returns the in-process time."""
    tokens = method.encoder.tokenize([QUERY_TEXT])

    def hand_query() -> None:
        query = method.encode_query(pixels(method, [reference]), tokens).numpy()
        flat.search(query, 11)

    from fastapi.testclient import TestClient

    from composir.service import create_app

    client = TestClient(create_app(searcher))
    upload = reference.read_bytes()

    def http() -> None:
        files = {"file": ("ref.png", upload, "image/png")}
        assert client.post("/search", data={"text": QUERY_TEXT, "k": "10"}, files=files).status_code == 200

    medians = alternating(
        {
            "ours": lambda: searcher.search(reference, QUERY_TEXT, k=10),
            "hand": hand_query,
            "http": http,
            "health": lambda: client.get("/health"),  # the test client's own round trip
        },
        repeats,
    )
    in_process, http_s, transport = medians["ours"], medians["http"], medians["health"]
    rows.append(row("query, in-process", in_process, medians["hand"]))
    rows.append(row("query, HTTP (in-process ASGI client)", http_s, in_process))
    rows.append(row("query, HTTP less the client's GET /health round trip", http_s - transport, in_process))
    rows.append(served_cli_row(searcher, reference, max(3, repeats // 4)))
    return in_process


def served_cli_row(searcher: Searcher, reference: Path, repeats: int) -> str:
    """``composir search --server`` in a fresh process against this searcher served by uvicorn, vs a
    fresh Python that imports httpx and posts the same query (the floor of any such client)."""
    import threading

    import uvicorn

    from composir.service import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(searcher), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    cli = [sys.executable, "-m", "composir.cli", "search", "--server", url, "--image", str(reference),
           "--text", QUERY_TEXT, "--k", "10"]  # fmt: skip
    post = (
        f"import httpx; f = open({str(reference)!r}, 'rb'); "
        f"r = httpx.post({url + '/search'!r}, data={{'text': {QUERY_TEXT!r}, 'k': '10'}}, files={{'file': f}}); "
        "assert r.status_code == 200"
    )
    medians = alternating(
        {
            "cli": lambda: subprocess.run(cli, check=True, capture_output=True),
            "hand": lambda: subprocess.run([sys.executable, "-c", post], check=True, capture_output=True),
        },
        repeats,
        warm=1,
    )
    server.should_exit = True
    thread.join(10)
    return row(
        "query, CLI `--server` (fresh process) vs a fresh `python -c` httpx post", medians["cli"], medians["hand"]
    )


def zero_shot_query_rows(model: str, root: str, items: int) -> list[str]:
    """The query rows with a real-size zero-shot model (open_clip ``model`` at random init, ``sum``
    fusion): an index of ``items`` images made by ``composir index``, searched in-process and over HTTP."""
    paths = sorted((Path(root) / "test").glob("*.png"))[:items]
    rows = [
        f"| path ({model}, random weights) | composir | hand-written loop / in-process | ratio |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        media, index = Path(tmp) / "media", Path(tmp) / "idx"
        media.mkdir()
        for path in paths:
            shutil.copy(path, media / path.name)
        subprocess.run([sys.executable, "-m", "composir.cli", "index", "--encoder", "openclip", "--model", model,
                        "--random-weights", "--method", "sum", "--media", str(media), "--out", str(index)],
                       check=True, capture_output=True)  # fmt: skip
        searcher = Searcher(index)
        method = searcher.method
        info = {"fingerprint": method.encoder.fingerprint(), "num_frames": 1}

        def ours_index() -> None:
            GalleryIndex(Path(tmp) / "idx2", load=False).update(
                media, model_encoder(method, 1), info, batch_size=64, progress=False, rebuild=True
            )

        index_s = alternating({"ours": ours_index, "hand": lambda: hand_index(method, paths)}, 3, warm=1)
        rows.append(row(f"index {len(paths)} images", index_s["ours"], index_s["hand"]))
        query_rows(searcher, method, hand_index(method, paths), paths[0], rows)
    return rows


def row(name: str, ours: float, hand: float, unit: str = "s") -> str:
    return f"| {name} | {ours:.3f} {unit} | {hand:.3f} {unit} | {ours / hand:.2f}x |"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", default=None, help="a trained run (not needed with --zero-shot)")
    p.add_argument("--root", required=True, help="the synthetic benchmark the run was trained on")
    p.add_argument("--items", type=int, default=320)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--zero-shot", default=None, metavar="OPENCLIP_MODEL",
                   help="only the query rows, with this open_clip model at random init (e.g. ViT-B-32)")  # fmt: skip
    args = p.parse_args()
    torch.set_grad_enabled(False)
    if args.zero_shot:
        print("\n".join(zero_shot_query_rows(args.zero_shot, args.root, min(args.items, 64))))
        return
    if args.run is None:
        p.error("--run is required (or --zero-shot MODEL for the query rows alone)")
    method, _ = load_run(args.run)
    paths = sorted((Path(args.root) / "test").glob("*.png"))[: args.items]
    rows = ["| path | composir | hand-written loop | ratio |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for path in paths:
            shutil.copy(path, media / path.name)

        info = {"fingerprint": method.encoder.fingerprint(), "run": args.run, "num_frames": 1}

        def ours_index() -> None:
            GalleryIndex(Path(tmp) / "idx", load=False).update(
                media, model_encoder(method, 1), info, batch_size=64, progress=False, rebuild=True
            )

        index_s = alternating({"ours": ours_index, "hand": lambda: hand_index(method, paths)}, args.repeats, warm=1)
        rows.append(row(f"index {len(paths)} images", index_s["ours"], index_s["hand"]))
        searcher = Searcher(Path(tmp) / "idx", run=args.run)
        flat = hand_index(method, paths)
        reference, text = paths[0], QUERY_TEXT

        in_process = query_rows(searcher, method, flat, reference, rows)
        cli = [sys.executable, "-m", "composir.cli", "search", "--index", str(Path(tmp) / "idx"), "--image",
               str(reference), "--text", text, "--k", "10"]  # fmt: skip
        floor = [sys.executable, "-c", "import torch; from transformers import Blip2ForImageTextRetrieval"]
        cli_s = timed(lambda: subprocess.run(cli, check=True, capture_output=True), args.repeats)
        floor_s = timed(lambda: subprocess.run(floor, check=True, capture_output=True), args.repeats)
        rows.append(row("query, CLI (fresh process)", cli_s, floor_s + in_process))
    bench = load_benchmark("synthetic", args.root, "test")
    bench.queries = bench.queries[:400]

    def hand_eval() -> None:
        gallery = torch.cat([method.encode_target(pixels(method, [g.path for g in bench.gallery[i : i + 64]]))
                             for i in range(0, len(bench.gallery), 64)])  # fmt: skip
        queries = []
        for i in range(0, len(bench.queries), 64):
            chunk = bench.queries[i : i + 64]
            frames = pixels(method, [bench.media_item(q.reference_id).path for q in chunk])
            queries.append(method.encode_query(frames, method.encoder.tokenize([q.text for q in chunk])))
        (torch.cat(queries) @ gallery.T).topk(50, dim=1)

    eval_s = alternating(
        {"ours": lambda: evaluate(method, bench, num_frames=1, progress=False), "hand": hand_eval}, args.repeats, warm=1
    )
    rows.append(row(f"eval {len(bench.queries)} queries, {len(bench.gallery)} items", eval_s["ours"], eval_s["hand"]))
    ours_tps, hand_tps = train_steps(args.run, args.root, Path(args.run).parent)
    rows.append(f"| train, 40 steps of batch 64 (triplets/s; ratio: loop / composir) | {ours_tps:.0f} | "
                f"{hand_tps:.0f} | {hand_tps / ours_tps:.2f}x |")  # fmt: skip
    print("\n".join(rows))


def train_steps(run: str, root: str, scratch: Path, steps: int = 40) -> tuple[float, float]:
    """Triplets/s of ``composir.train.train`` (its logged rate, the first window dropped) and of a
    loop over the same batches: collate, ``method.losses``, backward, AdamW (no data workers)."""
    import yaml
    from torch.utils.data import DataLoader

    from composir.train import load_config, train
    from composir.train.dataset import TripletDataset
    from composir.train.metrics_log import MetricsLog

    torch.set_grad_enabled(True)
    config = yaml.safe_load((Path(run) / "config.yaml").read_text())
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        quiet = ["train.eval_every=100000", "train.save_every=100000", "train.log_every=10"]
        overrides = [f"data.root={root}", f"train.max_steps={steps}", *quiet, "train.num_workers=0",
                     "train.warmup_steps=1", f"output_dir={tmp}/run"]  # fmt: skip
        cfg = load_config(config_file, overrides)
        train(cfg, resume=False, progress=False)
        rates = [float(r["value"]) for r in MetricsLog(Path(tmp) / "run" / "metrics.csv").rows()
                 if r["metric"] == "triplets_per_s"][1:]  # fmt: skip
        method, _ = load_run(run)
        method.train()
        data = TripletDataset(load_benchmark("synthetic", root, "train"), method.encoder.preprocess, 1)
        loader = DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=method.collator())
        optimizer = torch.optim.AdamW(method.parameters(), lr=cfg.train.lr)
        seen, start, batches = 0, 0.0, iter(loader)
        for step in range(steps):
            if step == 10:  # the first window dropped, as for composir's rate
                seen, start = 0, time.perf_counter()
            batch = next(batches)
            loss = sum(method.losses(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += batch["size"]
        return statistics.mean(rates), seen / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
