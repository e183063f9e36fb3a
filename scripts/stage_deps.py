"""Keep each dvc.yaml stage's dependencies complete: its notebook plus every `sonar_thesis` module
the notebook's stage imports, directly or through other modules (imports inside functions included);
and its params, key by key, as recorded while the stages ran (`SONAR_THESIS_PARAMS_LOG`, see 00b_stage).

    python scripts/stage_deps.py          # rewrite the code deps in dvc.yaml (comments and data deps kept)
    python scripts/stage_deps.py --check  # exit 1 and list what is missing or stale (tests/test_stage_deps.py)
    python scripts/stage_deps.py --params-from LOG [LOG …]   # also rewrite params: the keys the runs read
    python scripts/stage_deps.py --check --params-from LOG   # exit 1 if a stage read a key it does not list
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import re
import sys
import typing
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

ROOT = Path(__file__).resolve().parents[1]
PKG = "sonar_thesis"
RUNNER = f"{PKG}/stage.py"   # every stage runs through it


def _imported_modules(source: str, package_relative: bool = True) -> set[str]:
    """`sonar_thesis` module names imported anywhere in `source` (relative imports count as the package)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level and package_relative:
                mod = f"{PKG}.{mod}" if mod else PKG
            if mod == PKG:                       # `from sonar_thesis import x` / `from . import x`
                out |= {f"{PKG}.{a.name}" for a in node.names}
            elif mod.startswith(PKG + "."):
                out.add(mod)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith(PKG + ".")}
    return {m.split(".")[1] for m in out if (ROOT / PKG / f"{m.split('.')[1]}.py").exists()}


def module_closure(names: set[str]) -> set[str]:
    """`names` and every package module they import, transitively."""
    seen, todo = set(), list(names)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += _imported_modules((ROOT / PKG / f"{m}.py").read_text())
    return seen


def notebook_modules(nb_path: Path) -> set[str]:
    """The module a notebook exports, plus what its export and `#| stage` cells import."""
    nb = json.loads(nb_path.read_text())
    mods = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        if m := re.match(r"#\|\s*default_exp\s+(\w+)", src):
            mods.add(m.group(1))
        if re.search(r"^#\|\s*(export|exporti|stage)\b", src, re.M):
            code = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("#|", "%", "!")))
            try:
                mods |= _imported_modules(code, package_relative=False)
            except SyntaxError:
                pass
    return mods


def code_deps(stage: dict) -> list[str]:
    """The notebook, the runner and the module closure of the notebook a stage's cmd executes."""
    nb = re.search(r"(nbs/\S+\.ipynb)", stage["cmd"]).group(1)
    mods = module_closure(notebook_modules(ROOT / nb))
    return [nb, RUNNER, *sorted(f"{PKG}/{m}.py" for m in mods if f"{PKG}/{m}.py" != RUNNER)]


def _is_code(dep: str) -> bool:
    return dep.startswith((f"{PKG}/", "nbs/"))


def report_stem(stage: dict) -> str:
    """The executed notebook's name: what `sonar_thesis.stage` names the stage's params log after."""
    return Path(re.search(r"\.ipynb\s+(reports/\S+\.ipynb)", stage["cmd"]).group(1)).stem


def recorded_params(stage: dict, logs: list[Path]) -> set[str] | None:
    """The params keys a stage read in the runs that logged to `logs` (None: no run logged it)."""
    files = [d / f"{report_stem(stage)}.json" for d in logs if (d / f"{report_stem(stage)}.json").is_file()]
    return set().union(*(json.loads(f.read_text()) for f in files)) if files else None


def _sections() -> set[str]:
    """Dotted names of the config's sections (dataclasses, e.g. `synth.source`): a section is not a key."""
    import dataclasses
    sys.path.insert(0, str(ROOT))
    from sonar_thesis.config import Config
    out = set()
    def walk(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                out.add(prefix + f.name)
                walk(t, f"{prefix}{f.name}.")
    walk(Config)
    return out


def _flow(keys) -> CommentedSeq:
    seq = CommentedSeq(sorted(keys))
    seq.fa.set_flow_style()
    return seq


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    ap.add_argument("--params-from", type=Path, nargs="+", default=[], metavar="LOG",
                    help="folders of params logs (SONAR_THESIS_PARAMS_LOG) from pipeline runs")
    a = ap.parse_args(argv)
    y = YAML()
    y.preserve_quotes, y.width = True, 110
    y.indent(mapping=2, sequence=4, offset=2)
    doc = y.load(a.dvc_yaml.read_text())
    sections = _sections()
    problems = []
    for name, stage in doc["stages"].items():
        want = code_deps(stage)
        have = [d for d in stage["deps"] if _is_code(str(d))]
        if have != want:
            missing, stale = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            problems.append(f"{name}: missing {missing or '-'}; not imported {stale or '-'}"
                            + ("" if missing or stale else "; order differs"))
            data = [d for d in stage["deps"] if not _is_code(str(d))]
            stage["deps"].clear()
            stage["deps"].extend(want + data)
        whole = sorted(set(map(str, stage.get("params", []))) & sections)
        if whole:
            problems.append(f"{name}: params lists whole sections {whole}, not keys")
        read = recorded_params(stage, a.params_from) if a.params_from else None
        if read is not None:
            declared = set(map(str, stage.get("params", [])))
            missing = sorted(k for k in read if not any(k == d or k.startswith(d + ".") for d in declared))
            if missing:
                problems.append(f"{name}: read params it does not list {missing}")
            if not a.check:
                stage["params"] = _flow(read)
    if a.check:
        if problems:
            print("dvc.yaml code deps are out of date (run `python scripts/stage_deps.py`):", *problems, sep="\n  ")
            return 1
        print(f"dvc.yaml: the code deps of all {len(doc['stages'])} stages are complete, params listed key by key"
              + (" and covering what the logged runs read" if a.params_from else ""))
        return 0
    buf = io.StringIO()
    y.dump(doc, buf)
    a.dvc_yaml.write_text("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))
    print("\n".join(problems) or "dvc.yaml already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
