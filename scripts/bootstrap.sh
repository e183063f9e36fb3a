#!/usr/bin/env bash
# Create/refresh the project virtualenv at .venv/ from requirements.lock. Idempotent: a second run
# only compares a hash and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# A real browser for tests/test_results_browser.py: Debian's chromium (no browser download works offline).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing Debian's chromium (browser tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required (found {sys.version.split()[0]}); set PYTHON=/path/to/python3.11"' 
  echo "bootstrap: creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
stamp=.venv/.sonar-thesis-installed
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ]; then
  exit 0
fi
echo "bootstrap: installing pinned dependencies into .venv (first run takes a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned or newer torch pulls several GB of CUDA wheels.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
echo "$want" > "$stamp"
echo "bootstrap: .venv ready"
