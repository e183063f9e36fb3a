"""Print the size targets of the codebase (issue #17): module lengths, function lengths, export-cell lengths.

    python scripts/targets.py            # the numbers and which targets hold
    python scripts/targets.py --check    # … and exit 1 when one does not
"""
import argparse
import ast
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE, MAX_FUNCTION, MAX_MEDIAN_CELL = 500, 60, 15


def modules() -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted((ROOT / "sonar_thesis").glob("*.py"))
            if p.name not in ("_modidx.py", "__init__.py")}


def functions() -> list[tuple[int, str]]:
    out = []
    for p in sorted((ROOT / "sonar_thesis").glob("*.py")):
        if p.name == "_modidx.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{p.stem}.{node.name}"))
    return sorted(out, reverse=True)


def export_cells() -> list[tuple[int, int, str]]:
    """(lines, top-level definitions, notebook) per `#| export` cell."""
    out = []
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for c in json.loads(nb.read_text())["cells"]:
            src = "".join(c["source"])
            if c["cell_type"] != "code" or not src.lstrip().startswith(("#| export", "#|export")):
                continue
            body = [l for l in src.splitlines() if not l.startswith("#|")]
            try:
                defs = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                           for n in ast.parse("\n".join(body)).body)
            except SyntaxError:
                defs = 0
            out.append((len(body), defs, nb.stem))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a target does not hold")
    args = ap.parse_args(argv)
    mods, funcs, cells = modules(), functions(), export_cells()
    big_mods = {m: n for m, n in mods.items() if n > MAX_MODULE}
    long_funcs = [(n, f) for n, f in funcs if n > MAX_FUNCTION]
    lines = [n for n, _, _ in cells]
    defs = [d for _, d, _ in cells if d]
    median_cell = statistics.median(lines) if lines else 0
    print(f"modules: {len(mods)}, {sum(mods.values()):,} lines; over {MAX_MODULE} lines: {len(big_mods)}"
          + "".join(f"\n  {m}: {n}" for m, n in sorted(big_mods.items(), key=lambda kv: -kv[1])))
    print(f"functions: {len(funcs)}, median {statistics.median(n for n, _ in funcs):g} lines, longest "
          f"{funcs[0][0]} ({funcs[0][1]}); over {MAX_FUNCTION} lines: {len(long_funcs)}"
          + "".join(f"\n  {f}: {n}" for n, f in long_funcs))
    print(f"export cells: {len(cells)}, median {median_cell:g} lines, over 50: {sum(n > 50 for n in lines)}, "
          f"over 100: {sum(n > 100 for n in lines)}; definitions per cell (cells with any): "
          f"{statistics.mean(defs):.2f}")
    holds = {f"no module over {MAX_MODULE} lines": not big_mods,
             f"no function over {MAX_FUNCTION} lines": not long_funcs,
             f"median export cell <= {MAX_MEDIAN_CELL} lines": median_cell <= MAX_MEDIAN_CELL}
    for what, ok in holds.items():
        print(f"{'holds' if ok else 'FAILS'}: {what}")
    return 1 if args.check and not all(holds.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
