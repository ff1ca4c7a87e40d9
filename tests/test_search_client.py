"""``composir search --server``: the CLI asks a running service instead of loading the model, and
gets what a local search gives; a missing server, a refused query and local-only options are one
line each."""

from __future__ import annotations

import json
import subprocess
import sys

from composir.cli import main
from composir.service import ServiceSettings, create_app
from helpers import free_port, serving


def _printed(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_served_search_gives_the_local_results(searcher, tmp_path, capsys):
    files = sorted(searcher.media_root.glob("*.png"))
    upload = tmp_path / "mine.png"
    upload.write_bytes(files[3].read_bytes())  # a copy of an indexed file: left out of its own results
    local = {}
    for name, ref in (("upload", upload), ("id", files[5].name)):
        reference = searcher.load_reference(ref)
        results, _ = searcher.search_explained(reference, "make the circle green", 6)
        local[name] = [(r.id, round(float(r.score), 4)) for r in results]
    with serving(create_app(searcher)) as url:
        for name, option, ref in (("upload", "--image", str(upload)), ("id", "--id", files[5].name)):
            argv = ["search", "--server", url, option, ref, "--text", "make the circle green", "--k", "6", "--json"]
            code, out, err = _printed(capsys, argv)
            assert code == 0, err
            remote = [(r["id"], round(float(r["score"]), 4)) for r in json.loads(out)["results"]]
            assert remote == local[name]
        assert files[3].name not in [i for i, _ in local["upload"]]
        code, out, _ = _printed(capsys, ["search", "--server", url, "--text", "a blue square", "--k", "3"])
        assert code == 0 and len(out.splitlines()) == 3 and out.startswith("  1. ")


def test_server_failures_are_one_line(searcher, capsys):
    port = free_port()  # nothing listens there
    code, out, err = _printed(capsys, ["search", "--server", f"http://127.0.0.1:{port}", "--text", "red"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "no composir server answers there" in err
    with serving(create_app(searcher, ServiceSettings(token="s3cret"))) as url:
        code, _, err = _printed(capsys, ["search", "--server", url, "--text", "red"])
        assert code == 2 and len(err.splitlines()) == 1 and "401" in err, err
        code, out, err = _printed(capsys, ["search", "--server", url, "--text", "red", "--token", "s3cret", "--k", "2"])
        assert code == 0 and len(out.splitlines()) == 2, err
        code, _, err = _printed(capsys, ["search", "--server", url, "--id", "not-there.png", "--token", "s3cret"])
        assert code == 2 and "404" in err and "not-there.png" in err
        code, _, err = _printed(capsys, ["search", "--server", url, "--text", "red", "--run", "somewhere"])
        assert code == 2 and "--run" in err
        code, _, err = _printed(capsys, ["search", "--server", url])
        assert code == 2 and "give --image, --id or --text" in err


def test_the_client_loads_no_model_libraries():
    probe = (
        "import sys; from composir.cli import build_parser; import composir.cli.search, composir.service.client; "
        "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
