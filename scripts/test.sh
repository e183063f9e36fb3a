#!/usr/bin/env bash
# The test command (also what CI runs): install into .venv, then
#   1. notebooks and package in sync (nbdev_export changes nothing),
#   2. nbdev_test (cells flagged slow/cuda/stage are skipped),
#   3. pytest (includes the DVC pipeline on a very small synthetic corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
source .venv/bin/activate
export MPLBACKEND=Agg PYTHONHASHSEED=0

echo "== 1/3 notebooks clean and package in sync"
snapshot() { find sonar_thesis nbs -type f \( -name '*.py' -o -name '*.ipynb' \) | sort | xargs sha256sum; }
before=$(snapshot)
nbdev_clean
nbdev_export
after=$(snapshot)
if [ "$before" != "$after" ]; then
  diff <(echo "$before") <(echo "$after") || true
  echo "FAIL: nbdev_clean/nbdev_export changed files — notebooks not clean or package out of sync with nbs/." >&2
  echo "      Run: nbdev_clean && nbdev_export, review, and commit." >&2
  exit 1
fi
python scripts/readme.py --check        # README.md is generated from nbs/index.ipynb
echo "in sync"

echo "== 2/3 nbdev_test"
nbdev_test --n_workers 2

echo "== 3/3 pytest"
pytest --durations=8 "$@"
