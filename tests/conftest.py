import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VENV_BIN = ROOT / ".venv" / "bin"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def copy_worktree(dst: Path):
    """The working tree (tracked + untracked-not-ignored files) as a fresh one-commit git repo at `dst`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    (dst / ".venv").symlink_to(ROOT / ".venv")
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    for key, value in (("user.name", "ci"), ("user.email", "ci@localhost")):   # dvc exp commits need an identity
        subprocess.run(["git", "config", key, value], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)  # dvclive needs a repo with a commit, as a clone has
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dst, check=True)
