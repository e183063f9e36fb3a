"""Every dvc.yaml stage lists exactly the package modules its notebook's stage imports (transitively)."""
import shutil
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "stage_deps.py"


def _check(dvc_yaml):
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--dvc-yaml", str(dvc_yaml)],
                          capture_output=True, text=True)


def test_dvc_yaml_code_deps_are_complete():
    r = _check(ROOT / "dvc.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_missing_module_dep_is_caught_and_repaired(tmp_path):
    broken = tmp_path / "dvc.yaml"
    text = (ROOT / "dvc.yaml").read_text()
    start = text.index("  stage1:")
    i = text.index("sonar_thesis/sonar.py,", start)         # stage 1 loads the SONAR models: drop that dep
    broken.write_text(text[:i] + text[i + len("sonar_thesis/sonar.py,"):])
    r = _check(broken)
    assert r.returncode == 1 and "stage1: missing ['sonar_thesis/sonar.py']" in r.stdout, r.stdout
    subprocess.run([sys.executable, str(SCRIPT), "--dvc-yaml", str(broken)], check=True, capture_output=True)
    assert _check(broken).returncode == 0
    assert "${data.root}" in broken.read_text() and "# synthetic How2Sign-shaped corpus" in broken.read_text()


def test_every_name_a_stage_cell_uses_is_bound_in_its_notebook():
    """`#| stage` cells are skipped by nbdev_test, so a name a refactor moved out of the notebook's imports would
    only fail inside `dvc repro`; this catches it statically (bound anywhere in the notebook, or a builtin)."""
    import ast
    import builtins
    import json
    problems = []
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        sources, trees = [], []
        for c in cells:
            src = "".join(c["source"])
            try:
                tree = ast.parse(src)
            except SyntaxError:                                   # IPython magics
                src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
                tree = ast.parse(src)
            sources.append(src); trees.append(tree)
        bound = set(dir(builtins))
        for node in (n for t in trees for n in ast.walk(t)):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                bound.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
        for src, tree in zip(sources, trees):
            if src.lstrip().startswith("#| stage"):
                used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
                problems += [f"{nb.name}: stage cell uses {name!r}, never imported or defined" for name in used - bound]
    assert not problems, "\n".join(problems)
