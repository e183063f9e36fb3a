"""The real path end to end: `dvc repro` of every stage with `dataset: how2sign` on How2Sign's layout.

A copy of the working tree gets a small How2Sign folder in the exact published layout
(`tests/how2sign_layout.py`: tab-separated CRLF CSVs, ids starting with `-`, 1280x720 29.97 fps full
videos) and a local mirror of the download site holding checkpoints in the published file layouts at the
`small` preset's widths. Then, as the README tells a user: `sonar-thesis params --overlay
configs/how2sign.yaml`, `sonar-thesis download --from MIRROR`, and `dvc repro` (with
configs/how2sign_ci.yaml's CPU budgets). The code paths are those of a full-size run; only widths differ.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import VENV_BIN, copy_worktree
from how2sign_layout import PUBLISHED_NAMES, fixture_texts, make_how2sign_fixture, write_published_checkpoints
from sonar_thesis.config import load_config
from sonar_thesis.io import read_json, read_tsv
from sonar_thesis.sweeps import experiment_refs, plan_sweep

SYSTEMS = ("zeroshot", "stage2", "ablation", "landmarks")


def _run(args, cwd, env, timeout=1800):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"
    return r


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    work = tmp_path_factory.mktemp("how2sign")
    copy_worktree(work)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "MPLBACKEND": "Agg",
           "SONAR_THESIS_PARAMS_LOG": str(work / ".params_log")}      # which params keys each stage reads
    exe = str(VENV_BIN / "sonar-thesis")
    _run([exe, "params", "--overlay", "configs/how2sign.yaml"], work, env)
    _run([exe, "params", "--overlay", "configs/how2sign_ci.yaml"], work, env)
    cfg = load_config(work / "params.yaml")
    make_how2sign_fixture(work / cfg.data.root, videos={"train": 2, "val": 1, "test": 1}, sentence_seconds=1.6)
    mirror = tmp_path_factory.mktemp("mirror")
    write_published_checkpoints(mirror, cfg.preset, fixture_texts(work / cfg.data.root))
    download = _run([exe, "download", "--from", str(mirror)], work, env)
    repro = _run(["dvc", "repro"], work, env, timeout=2400)
    return work, env, cfg, download.stdout + download.stderr, repro.stdout


def test_download_from_a_mirror_verifies_every_file(real):
    work, _, cfg, log, _ = real
    lock = read_json(work / "models" / "published" / "checksums.json")
    for what in ("signhiera", "encoder", "decoder", "tokenizer"):
        path = work / getattr(cfg.model, what)
        assert path.is_file() and path.name == PUBLISHED_NAMES[what], what
        assert lock[path.name]["size"] == path.stat().st_size and len(lock[path.name]["sha256"]) == 64


def test_real_run_renders_no_synthetic_data_and_caches_no_checkpoint(real):
    work, _, cfg, _, repro = real
    assert [p.name for p in (work / cfg.synth.output_dir).iterdir()] == ["NOT_RENDERED.txt"]
    assert "Running stage 'prepare'" in repro and "Running stage 'figures'" in repro
    # the published checkpoints are stage inputs: DVC hashes them but never copies them into its cache
    lock = (work / "dvc.lock").read_text()
    assert "models/published/dm_70h_ub_signhiera.pth" in lock
    cached = sum(f.stat().st_size for f in (work / ".dvc" / "cache").rglob("*") if f.is_file())
    ckpt = (work / cfg.model.decoder).stat().st_size
    assert not any(f.stat().st_size == ckpt for f in (work / ".dvc" / "cache").rglob("*") if f.is_file()), cached


def test_every_stage_wrote_its_outputs(real):
    work, _, cfg, _, _ = real
    rep = read_json(work / cfg.data.prepared_dir / "target" / "report.json")
    for split in cfg.data.splits:
        rows = read_tsv(work / cfg.data.prepared_dir / "target" / f"{split}.tsv")
        assert rows and rep[split]["written"] == len(rows) and rep[split]["skipped"] == 0, split
        assert all(r["id"].startswith("-") for r in rows)          # How2Sign ids that start with '-' survive
    assert read_json(work / cfg.pretrain.output_dir / "pretrain.json")["published"] is True
    for system in SYSTEMS:
        m = read_json(work / "metrics" / f"{system}.json")
        assert m["synthetic"] is False and m["n"] == len(read_tsv(work / cfg.data.prepared_dir / "target" / "test.tsv"))
    table = (work / "figures" / "results_table.md").read_text()
    assert "synthetic" not in table.lower().replace("not synthetic", "")
    assert (work / "figures" / "metric_bars.png").stat().st_size > 1000


def test_crops_are_reference_mode(real):
    """Preset small has the published input sizes: the crops are ssvp_slt's (reference mode, lossless .mkv with
    their windows) and match the prepared clips' frame counts and rates."""
    from sonar_thesis.video_probe import probe_video
    from sonar_thesis.video import resolve_video_path
    from sonar_thesis.video_io import read_crop_meta, reference_windows
    work, _, cfg, _, _ = real
    assert cfg.preset == "small" and cfg.preprocess.resolved_mode(cfg.sizes) == "reference"
    for split in cfg.data.splits:
        m = work / cfg.preprocess.output_dir / "target" / f"{split}.tsv"
        prepared = {r["id"]: r for r in read_tsv(work / cfg.data.prepared_dir / "target" / f"{split}.tsv")}
        for r in read_tsv(m):
            crop = resolve_video_path(m, r["video_path"])
            meta = read_crop_meta(crop)
            assert crop.suffix == ".mkv" and meta["mode"] == "reference", crop
            info = probe_video(work / prepared[r["id"]]["video_path"])       # relative to the repo root
            n, fps = info.n_frames, info.fps
            ref = reference_windows(n, fps, cfg.sizes)
            assert (meta["src_frames"], [w["padding"] for w in meta["windows"]]) == (n, [w.padding for w in ref])
            assert [w["indices"] for w in meta["windows"]] == [w.indices.tolist() for w in ref]


def test_second_repro_is_up_to_date_and_a_csv_edit_reruns_prepare_and_downstream_only(real):
    work, env, cfg, _, _ = real
    status = _run(["dvc", "status", "--json"], work, env)
    assert json.loads(status.stdout) == {}, status.stdout
    csv = work / cfg.data.root / "how2sign_realigned_test.csv"
    text = csv.read_bytes()
    lines = text.split(b"\r\n")
    lines[1] = lines[1].rstrip(b".!?") + b", edited."                  # one row's SENTENCE
    csv.write_bytes(b"\r\n".join(lines))
    try:
        changed = json.loads(_run(["dvc", "status", "--json"], work, env).stdout)
        dry = _run(["dvc", "repro", "--dry"], work, env).stdout
    finally:
        csv.write_bytes(text)
    # the stages that read data.root directly; everything else downstream follows from prepare's new outputs
    assert set(changed) == {"prepare", "landmarks", "analysis"}, changed
    assert "Running stage 'prepare'" in dry and "Running stage 'synth'" not in dry, dry
    assert "Running stage 'pretrain'" not in dry and "Running stage 'extract'" not in dry, dry


def test_every_params_key_a_stage_reads_on_real_data_is_listed(real):
    """dvc.yaml lists params key by key, and every key a stage read in this run is among them."""
    work, env, _, _, _ = real
    r = subprocess.run([sys.executable, "scripts/stage_deps.py", "--check", "--params-from", ".params_log"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_learning_rate_sweep_runs_as_queued_dvc_experiments(real):
    """`sonar-thesis sweep` on the real path: a queued `dvc exp` per value reruns stage 2, the ablation and
    evaluate in a temporary copy (the published checkpoints copied in, everything else from DVC's cache),
    and the workspace's params, outputs and metrics stay as they were."""
    work, env, cfg, _, _ = real
    before = {p: (work / p).read_bytes() for p in ("params.yaml", "dvc.lock", "metrics/stage2.json")}
    r = _run([str(VENV_BIN / "sonar-thesis"), "sweep", "stage2.learning_rate", "3e-4"], work, env, timeout=1800)
    assert "(synthetic data)" not in r.stdout, r.stdout
    result = read_json(work / "sweeps" / "stage2_learning_rate.json")
    assert result["chain"] == ["stage2", "ablation", "evaluate"] and result["synthetic"] is False
    assert [p["value"] for p in result["points"]] == [3e-4] and result["failed"] == [] and result["seconds"] > 0
    assert set(result["points"][0]["scores"]) == {"stage2", "ablation"}
    for ext in ("md", "tex"):
        assert "How2Sign test set" in (work / "sweeps" / f"stage2_learning_rate.{ext}").read_text()
    assert (work / "sweeps" / "sweep_stage2_learning_rate.png").stat().st_size > 1000
    # the experiment trained with the swept value: its dvc.lock has it and a different stage-2 model
    ref = experiment_refs(work)["sweep-stage2.learning_rate-0.0003"]
    lock = subprocess.run(["git", "show", f"{ref}:dvc.lock"], cwd=work, capture_output=True, text=True, check=True).stdout
    exp, main = yaml.safe_load(lock)["stages"]["stage2"], yaml.safe_load(before["dvc.lock"])["stages"]["stage2"]
    assert exp["params"]["params.yaml"]["stage2.learning_rate"] == 3e-4 != main["params"]["params.yaml"]["stage2.learning_rate"]
    model = lambda st: next(o["md5"] for o in st["outs"] if o["path"] == "models/stage2")
    assert model(exp) != model(main)
    assert {p: (work / p).read_bytes() for p in before} == before                 # the workspace is untouched
    assert json.loads(_run(["dvc", "status", "--json"], work, env).stdout) == {}
    assert plan_sweep("stage2.learning_rate", ["3e-4"], work).copy_paths == [str(Path(cfg.model.encoder).parent)]
