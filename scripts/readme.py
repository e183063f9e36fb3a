"""README.md is generated from nbs/index.ipynb (nbdev's habit: the index notebook is the README's source).

    python scripts/readme.py            # write README.md from nbs/index.ipynb
    python scripts/readme.py --check    # exit 1 when README.md differs from what index.ipynb gives
    python scripts/readme.py --import   # (once) make nbs/index.ipynb from README.md, one markdown cell per section
"""
import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README = ROOT / "nbs" / "index.ipynb", ROOT / "README.md"
BANNER = "<!-- generated from nbs/index.ipynb by scripts/readme.py: edit the notebook, then run the script -->\n"


def render(nb: dict) -> str:
    parts = ["".join(c["source"]).strip("\n") for c in nb["cells"] if c["cell_type"] == "markdown"]
    return BANNER + "\n\n".join(p for p in parts if p) + "\n"


def cells_from_readme(text: str) -> dict:
    text = text.removeprefix(BANNER)
    sections, fence = [[]], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,2} ", line) and sections[-1]:
            sections.append([])
        sections[-1].append(line)
    cells = []
    for sec in sections:
        src = "\n".join(sec).strip("\n")
        lines = src.split("\n")
        cells.append({"cell_type": "markdown", "id": hashlib.sha1(src.encode()).hexdigest()[:8], "metadata": {},
                      "source": [l + "\n" for l in lines[:-1]] + [lines[-1]]})
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "python3", "language": "python",
                                                        "name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true")
    g.add_argument("--import", dest="import_", action="store_true")
    args = ap.parse_args(argv)
    if args.import_:
        INDEX.write_text(json.dumps(cells_from_readme(README.read_text()), indent=1, ensure_ascii=False) + "\n")
        print(f"{INDEX}: {len(json.loads(INDEX.read_text())['cells'])} cells from {README.name}")
        return 0
    text = render(json.loads(INDEX.read_text()))
    if args.check:
        if README.read_text() != text:
            print(f"{README}: not what nbs/index.ipynb gives — edit the notebook and run `python scripts/readme.py`")
            return 1
        print(f"{README}: in sync with nbs/index.ipynb")
        return 0
    README.write_text(text)
    print(f"{README}: written from {INDEX}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
