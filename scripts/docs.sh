#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml: the notebooks, the API of sonar_thesis, the thesis figures) into
# _site/. Extra arguments go to `mkdocs build` (e.g. `-d /tmp/site`). Live preview while editing notebooks:
# `.venv/bin/mkdocs serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export NO_MKDOCS_2_WARNING=1       # mkdocs-material's end-of-life banner, printed on every build
.venv/bin/mkdocs build --strict "$@"
site=_site                          # mkdocs.yml's site_dir, unless -d/--site-dir was passed
prev=
for a in "$@"; do
  if [ "$prev" = -d ] || [ "$prev" = --site-dir ]; then site=$a; fi
  prev=$a
done
echo
echo "site: $(cd "$site" && pwd)/index.html"
echo "open: xdg-open $site/index.html   (search needs a server: .venv/bin/python -m http.server -d $site 8000 → http://localhost:8000)"
