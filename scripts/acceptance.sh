#!/usr/bin/env bash
# Acceptance, as a new user: clone the repository into a temporary folder, run the README's two
# set-up commands as written, then every README recipe that needs no external data — each method
# trained briefly on the synthetic benchmark, evaluation with --grid, index (FAISS and Milvus
# Lite) + search + serve + one HTTP query + the page in headless Chromium. Stops at the first
# error with the step and the work folder; prints each step's time and the total.
#   bash scripts/acceptance.sh            # the repository this script is in (its committed HEAD)
set -Eeuo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d -t composir-acceptance-XXXXXX)"
START=$(date +%s)
CURRENT="clone"
trap 'echo "acceptance: FAILED in step \"$CURRENT\" after $(( $(date +%s) - START )) s (work folder $WORK)" >&2' ERR
step() { CURRENT="$*"; echo "== [$(( $(date +%s) - START )) s] $*"; }
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

git clone -q "$SRC" "$WORK/composir"
cd "$WORK/composir"

step "README set-up 1: bash scripts/bootstrap.sh && .venv/bin/composir demo"
bash scripts/bootstrap.sh && .venv/bin/composir demo
step "README set-up 2: bash scripts/bootstrap.sh --dev && .venv/bin/python -m pytest -q"
bash scripts/bootstrap.sh --dev && .venv/bin/python -m pytest -q
export PATH="$PWD/.venv/bin:$PATH"

step "composir methods"
composir methods | tee acc-methods.txt
for name in imagine csmcir context_cir cir_cot; do grep -q "$name" acc-methods.txt; done

step "each method's CPU config, trained briefly on the synthetic benchmark"
composir synth --out acc-video --video --frames 4 --size 600
for cfg in configs/tiny-synthetic-*.yaml; do
  name=$(basename "$cfg" .yaml)
  root=demo-out/data; [[ "$name" == *video* ]] && root=acc-video
  composir train --config "$cfg" --out "acc-runs/$name" --set data.root=$root train.max_steps=12 \
    train.eval_every=12 train.save_every=12 train.num_workers=0 data.max_val_queries=40
done

step "composir eval with --grid (the combiner run and the CIR-CoT run, whose chains are drawn)"
composir eval --run acc-runs/tiny-synthetic-combiner --benchmark synthetic --root demo-out/data --split test \
  --json acc-out/combiner.json --grid acc-out/combiner-grid.png
composir eval --run acc-runs/tiny-synthetic-cir-cot --benchmark synthetic --root demo-out/data --split test-explicit \
  --grid acc-out/cir-cot-grid.png --grid-queries 4
test -s acc-out/combiner-grid.png && test -s acc-out/combiner-grid-recall_at_k.png && test -s acc-out/cir-cot-grid.png

step "index + search (FAISS, --kind auto) and the same on Milvus Lite"
TEST_IMAGES=(demo-out/data/test/*.png)  # not `ls | head`: under pipefail, ls's SIGPIPE fails the step
REF="${TEST_IMAGES[0]}"
composir index --run demo-out/run --media demo-out/data/test --out acc-index
composir search --index acc-index --image "$REF" --text "make it night" --k 5 --json > acc-out/search.json
python -c "import json,sys; r=json.load(open('acc-out/search.json'))['results']; assert len(r)==5, r"
composir index --run demo-out/run --media demo-out/data/test --out acc-milvus --store milvus --uri acc-out/milvus.db
composir search --index acc-milvus --image "$REF" --text "make it night" --k 5 --json > acc-out/search-milvus.json

step "serve + one HTTP query + the page in the browser"
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
composir serve --index acc-index --port "$PORT" --benchmark synthetic --root demo-out/data --split test \
  > acc-out/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/" > /dev/null && break; sleep 0.5; done
curl -sf -F "text=make it night" -F "k=3" -F "file=@$REF" "http://127.0.0.1:$PORT/search" > acc-out/http.json
python -c "import json; r=json.load(open('acc-out/http.json'))['results']; assert len(r)==3, r"
python scripts/acceptance_page.py "http://127.0.0.1:$PORT" "$PWD/$REF" acc-out/page.png acc-out/page-grid.png

echo "acceptance passed in $(( $(date +%s) - START )) s (work folder $WORK)"
