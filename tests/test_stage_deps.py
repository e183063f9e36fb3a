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
