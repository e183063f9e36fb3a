"""The DVC pipeline end to end on a very small synthetic corpus (configs/smoke.yaml).

The working tree (tracked and untracked-not-ignored files) is copied to a temp folder, the smoke
overlay is applied to its params.yaml, and `dvc repro` runs every stage there; then a second
`dvc status` must report everything up to date. This tests the wiring between stages on every change.
"""
import os
import subprocess
from pathlib import Path

import decord
import pytest

from conftest import ROOT, VENV_BIN, copy_worktree
from sonar_thesis.config import apply_overlay, load_config
from sonar_thesis.io import MANIFEST_COLUMNS, read_json, read_tsv, write_json


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    env = _smoke_run(work)
    write_json(work.parent / f"{work.name}.first_hashes.json", _out_hashes(work))   # before any test reruns a stage
    return work, env


def test_every_stage_ran_and_second_run_is_up_to_date(pipeline):
    work, env = pipeline
    r = subprocess.run(["dvc", "status"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr
    stages = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=work, env=env,
                            capture_output=True, text=True, check=True).stdout.split()
    for s in stages:
        assert (work / "reports").glob("*.ipynb"), s
    assert (work / "dvc.lock").exists()


def test_every_params_key_a_stage_reads_is_listed(pipeline):
    """dvc.yaml lists params key by key, and every key a stage read in this run is among them."""
    import sys
    work, env = pipeline
    r = subprocess.run([sys.executable, "scripts/stage_deps.py", "--check", "--params-from", ".params_log"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_manifests_list_every_clip_with_frames_and_text(pipeline):
    work, _ = pipeline
    cfg = load_config(work / "params.yaml")
    for domain in ("source", "target"):
        rep = read_json(work / cfg.data.prepared_dir / domain / "report.json")
        for split in cfg.data.splits:
            rows = read_tsv(work / cfg.data.prepared_dir / domain / f"{split}.tsv", required=MANIFEST_COLUMNS)
            assert rows and rep[split]["written"] == len(rows) and rep[split]["skipped"] == 0
            for r in rows:
                assert r["translation"].strip()
                assert len(decord.VideoReader(str(work / r["video_path"]))) == int(r["n_frames"]) > 0


def test_models_predictions_metrics_and_figures(pipeline):
    work, _ = pipeline
    cfg = load_config(work / "params.yaml")
    for f in ("signhiera.pth", "sonar_encoder.pth", "sonar_text_decoder.pt", "sonar_text_encoder.pt", "tokenizer.model"):
        assert (work / "models/pretrained" / f).is_file(), f
    zs = read_tsv(work / "predictions" / "zeroshot" / "predictions.tsv")
    assert {r["domain"] for r in zs} == {"source", "target"}  # zero-shot on both domains: the domain gap
    for system in ("zeroshot", "stage2", "ablation", "landmarks"):
        rows = read_tsv(work / "predictions" / system / "predictions.tsv")
        times = read_tsv(work / "timings" / f"{system}.tsv")                   # measured: kept apart
        # landmarks from the renderer (not mediapipe) have no end-to-end latency; the model's parts are timed
        timed = ("t_encoder", "t_decoding") if system == "landmarks" else ("t_total",)
        assert rows and [t["id"] for t in times] == [r["id"] for r in rows], system
        assert all(t[c] for t in times for c in timed) and "t_total" not in rows[0], system
        m = read_json(work / "metrics" / f"{system}.json")
        n_target = sum(r["domain"] == "target" for r in rows)
        assert m["synthetic"] is True and m["n"] == n_target and 0 <= m["bleu4"] <= 100
    lm = read_json(work / "data" / "landmarks" / "report.json")
    assert lm["synthetic"] and sum(lm["sources"].values()) > 0 and set(lm["sources"]) <= {"mediapipe", "groundtruth"}
    assert (work / "models" / "landmarks" / "landmarks.pt").is_file()
    # stage 2 starts from stage 1's encoder (stage1.train_encoder) and the decoder stage 1 left frozen — not
    # rewritten, recorded as the pretrained file; the ablation starts from the pretrained ones
    s1 = work / cfg.stage1.output_dir
    assert cfg.stage1.train_encoder and not cfg.stage1.train_decoder
    assert (s1 / "signhiera.pth").is_file() and (s1 / "sonar_encoder.pth").is_file()
    assert not (s1 / "sonar_text_decoder.pt").exists()
    assert read_json(s1 / "stage1.json")["files"]["decoder"] == cfg.model.decoder
    s2 = read_json(work / cfg.stage2.output_dir / "stage2.json")
    assert s2["start_from"] == cfg.stage1.output_dir
    assert s2["files"]["encoder"] == str(Path(cfg.stage2.output_dir) / "sonar_encoder.pth")
    assert read_json(work / "models" / "ablation" / "stage2.json")["start_from"] == "pretrained"
    assert read_json(work / "metrics" / "comparison.json")
    for name in ("metric_bars", "learning_curves"):
        for ext in ("png", "pdf"):
            assert (work / "figures" / f"{name}.{ext}").stat().st_size > 1000
    table = (work / "figures" / "results_table.md").read_text()
    assert "synthetic" in table.lower() and "15.5" in table  # ours beside SSVP-SLT's published BLEU-4
    assert "| landmarks (synthetic) |" in table               # the landmarks baseline row next to the SONAR systems


def test_translate_command_on_a_synthetic_clip(pipeline, tmp_path):
    work, env = pipeline
    clip = read_tsv(work / "data/prepared/target/test.tsv")[0]["video_path"]
    exe = str(VENV_BIN / "sonar-thesis")
    r = subprocess.run([exe, "translate", clip], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and len(r.stdout.strip().splitlines()) == 1
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00" * 2048)
    for video in (bad, tmp_path / "missing.mp4"):
        r = subprocess.run([exe, "translate", str(video)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
        assert str(video.name) in r.stderr.splitlines()[0]


def _out_hashes(work: Path) -> dict:
    """path -> md5 of every stage output in dvc.lock, except the executed notebooks (reports/: a record)."""
    from ruamel.yaml import YAML
    lock = YAML(typ="safe", pure=True).load((work / "dvc.lock").read_text())
    return {o["path"]: o.get("md5") for s in lock["stages"].values() for o in s.get("outs", [])
            if not o["path"].startswith("reports/")}


def _smoke_run(work: Path) -> dict:
    copy_worktree(work)
    apply_overlay(work / "params.yaml", work / "configs" / "smoke.yaml")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "MPLBACKEND": "Agg",
           "SONAR_THESIS_PARAMS_LOG": str(work / ".params_log")}      # which params keys each stage reads
    r = subprocess.run(["dvc", "repro"], cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"dvc repro failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return env


MEASURED = ("timings/",)   # wall-clock measurements, different on every run by nature, and nothing else


def test_two_clean_runs_give_the_same_dvc_lock(pipeline, tmp_path_factory):
    """Same inputs and seed -> the same bytes: every stage output of a second clean run hashes as the first's."""
    work, _ = pipeline
    again = tmp_path_factory.mktemp("pipeline_again")
    _smoke_run(again)
    first, second = read_json(work.parent / f"{work.name}.first_hashes.json"), _out_hashes(again)
    assert set(first) == set(second)
    differ = {p for p in first if first[p] != second[p]}
    assert {p for p in differ if not p.startswith(MEASURED)} == set(), differ


def _finished(folder: Path) -> list[Path]:
    """Finished feature files (a killed run may leave hidden `.{id}.XXXXXXXX.tmp.pt` files, never these)."""
    return [p for p in folder.rglob("*.pt") if not p.name.startswith(".")]


def test_killed_dvc_repro_resumes_extraction(pipeline):
    """`dvc repro` killed mid-extract keeps the finished feature files; the rerun skips them and ends identical."""
    import signal
    import time
    work, env = pipeline
    before = _out_hashes(work)
    feats = work / "data" / "features" / "pretrained"
    total = sum(len(read_tsv(m)) for m in (work / "data" / "crops").glob("*/*.tsv"))
    subprocess.run(["rm", "-rf", str(feats)], check=True)
    proc = subprocess.Popen(["dvc", "repro", "-s", "extract"], cwd=work, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and len(_finished(feats)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)                      # dvc, papermill's kernel, the loader workers
        proc.wait(timeout=60)
    kept = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _finished(feats)}
    assert 2 <= len(kept) < total, (len(kept), total)
    r = subprocess.run(["dvc", "repro", "-s", "extract"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept} == kept   # not rewritten: skipped
    assert len(_finished(feats)) == total and not list(feats.rglob(".*.tmp.pt"))   # the killed run's temp: gone
    assert _out_hashes(work)["data/features/pretrained"] == before["data/features/pretrained"]
