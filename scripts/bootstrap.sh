#!/usr/bin/env bash
# Create (or update) the project-local virtualenv .venv and install composir into it.
#   bash scripts/bootstrap.sh         # what `composir demo` needs
#   bash scripts/bootstrap.sh --dev   # plus the test tools
# torch/torchvision are installed first at the exact pinned versions: any other release is a
# multi-GB download, and open_clip needs a torchvision built for the same torch.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="all"
[ "${1:-}" = "--dev" ] && extras="dev"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null; then
  pip install -q torch==2.14.1 torchvision==0.29.1
fi
pip install -q -e ".[${extras}]"
if [ "$extras" = "dev" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  # The web page's end-to-end test drives Debian's Chromium through chromedriver.
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
.venv/bin/python -c "import torch; assert torch.__version__.split('+')[0] == '2.14.1', torch.__version__"
echo "composir installed in .venv (extras: ${extras})"
