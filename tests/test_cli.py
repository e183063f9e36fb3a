"""The installed `sonar-thesis` console script: help, success, one-line errors."""
import subprocess
from pathlib import Path

import pytest

from conftest import VENV_BIN
from sonar_thesis.data import make_fixture

EXE = str(VENV_BIN / "sonar-thesis")


def run(*args, cwd=None):
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("synth", "prepare", "params"):
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", ["synth", "prepare", "params"])
def test_each_command_has_complete_help(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0 and "--" in r.stdout and "Usage" in r.stdout


def test_prepare_end_to_end_and_errors(tmp_path):
    root = make_fixture(tmp_path / "h2s")
    r = run("prepare", "--how2sign-dir", str(root), "--output-dir", str(tmp_path / "out"), "--split", "test")
    assert r.returncode == 0, r.stderr
    assert "3/9 rows written" in r.stdout and (tmp_path / "out" / "test.tsv").exists()
    r = run("prepare", "--how2sign-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o2"))
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_params_overlay_switches_dataset(tmp_path, repo_root):
    p = tmp_path / "params.yaml"
    p.write_text((repo_root / "params.yaml").read_text())
    r = run("params", "--overlay", str(repo_root / "configs" / "how2sign.yaml"), "--params", str(p))
    assert r.returncode == 0, r.stderr
    assert "dataset: 'synthetic' -> 'how2sign'" in r.stdout
    from sonar_thesis.config import load_config
    cfg = load_config(p)
    assert cfg.dataset == "how2sign" and cfg.preset == "sonar"
    assert "# the two switches" in p.read_text().lower()


def _sonar_decoder_mirror(root: Path, corrupt: bool = False) -> Path:
    """A mirror folder with tiny stand-ins under the published names of `sonar_decoder`, and a SHA256SUMS."""
    import hashlib
    root.mkdir(parents=True)
    files = {"sonar_text_decoder.pt": b"d" * 3000, "sentencepiece.source.256000.model": b"s" * 2000}
    for name, data in files.items():
        (root / name).write_bytes(data[:-1] + b"X" if corrupt and name.endswith(".pt") else data)
    (root / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    return root


def _error_line(r) -> str:
    """The one `error:` line, which must be the last line of stderr (tqdm bars may come before it)."""
    lines = r.stderr.rstrip("\n").split("\n")
    assert r.returncode == 1 and "Traceback" not in r.stderr and lines[-1].startswith("error: "), r.stderr
    assert sum(l.startswith("error: ") for l in lines) == 1
    return lines[-1]


def test_download_from_mirror_end_to_end(tmp_path):
    from sonar_thesis.io import read_json
    mirror, out = _sonar_decoder_mirror(tmp_path / "mirror"), tmp_path / "out"
    r = run("download", "--model", "sonar_decoder", "--output", str(out), "--from", str(mirror))
    assert r.returncode == 0, r.stderr
    assert f"sonar_text_decoder.pt: {out / 'sonar_text_decoder.pt'}" in r.stdout
    assert (out / "sentencepiece.source.256000.model").read_bytes() == b"s" * 2000
    lock = read_json(out / "checksums.json")
    assert set(lock) == {"sonar_text_decoder.pt", "sentencepiece.source.256000.model"}
    assert lock["sonar_text_decoder.pt"]["how"] == f"copied from {mirror}" and lock["sonar_text_decoder.pt"]["size"] == 3000
    # a corrupt mirror: one error line naming the file and the command to rerun; nothing written
    bad, out2 = _sonar_decoder_mirror(tmp_path / "bad", corrupt=True), tmp_path / "out2"
    r = run("download", "--model", "sonar_decoder", "--output", str(out2), "--from", str(bad))
    err = _error_line(r)
    assert err.startswith(f"error: {bad / 'sonar_text_decoder.pt'}: sha256 ")
    assert f"sonar-thesis download --model sonar_decoder --output {out2} --from {bad}" in err
    assert not (out2 / "sonar_text_decoder.pt").exists() and not (out2 / "sonar_text_decoder.pt.part").exists()
    # a file missing from the mirror
    (mirror / "sentencepiece.source.256000.model").unlink()
    r = run("download", "--model", "sonar_decoder", "--output", str(tmp_path / "out3"), "--from", str(mirror))
    assert _error_line(r).startswith(f"error: {mirror}: no sentencepiece.source.256000.model in this mirror folder")


def test_download_help_names_from_and_the_default_folder():
    r = run("download", "--help")
    assert r.returncode == 0 and "--from" in r.stdout and "models/published" in r.stdout


def test_extract_batch_size_is_auto_or_a_positive_integer(tmp_path):
    assert "auto" in run("extract", "--help").stdout
    for bad in ("0", "-2", "eight"):
        r = run("extract", "--manifest", str(tmp_path / "m.tsv"), "--output-dir", str(tmp_path / "o"), "--batch-size", bad)
        assert r.returncode != 0 and "--batch-size" in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)
