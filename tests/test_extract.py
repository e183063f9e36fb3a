"""Feature extraction: the same features alone, batched, sharded (args, env, torchrun) and after SIGKILL + resume;
bad videos are reported and never stop a run; no partial files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import VENV_BIN
from sonar_thesis.config_sections import PRESETS
from sonar_thesis.extract import extract_manifest
from sonar_thesis.extract_loader import write_test_clip, write_test_manifest
from sonar_thesis.extract_store import load_features, merge_shards
from sonar_thesis.io import read_json, read_tsv, write_tsv
from sonar_thesis.signhiera import signhiera_tiny

TINY = PRESETS["tiny"]
FRAMES = (20, 60, 110, 150, 40, 90)       # clip0..clip5: 1, 1, 3, 4, 1, 2 windows
GOOD = [f"clip{i}" for i in range(len(FRAMES))]
ATOL = 1e-5                               # fp32 CPU: batch composition changes only the summation order
HEADER = ("id", "video_path", "n_frames", "translation", "signer")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    manifest = write_test_manifest(root, FRAMES)            # + corrupt.mp4 and a zero-frame empty.mp4
    torch.manual_seed(0)
    model = signhiera_tiny()
    torch.save(model.state_dict(), root / "tiny_state.pt")
    return root, manifest, model


@pytest.fixture(scope="module")
def reference(corpus) -> dict[str, torch.Tensor]:
    """Every good clip extracted on its own: batch size 1, decoded in-process."""
    root, manifest, model = corpus
    ref = {}
    for r in read_tsv(manifest):
        if r["id"] in GOOD:
            one = write_tsv(root / f"alone_{r['id']}.tsv", [r], HEADER)   # same folder: same relative paths
            rep = extract_manifest(one, model, root / "alone" / r["id"], TINY, batch_size=1, num_workers=0,
                                   progress=False)
            assert rep["extracted"] == 1 and rep["failed"] == 0
            ref[r["id"]] = load_features(root / "alone" / r["id"] / f"{r['id']}.pt")
    return ref


def assert_matches(out_dir: Path, reference: dict, ids=GOOD):
    for i in ids:
        got = torch.load(out_dir / f"{i}.pt", weights_only=True)      # a plain tensor
        assert got.shape == reference[i].shape, i
        assert torch.allclose(got, reference[i], atol=ATOL), (i, (got - reference[i]).abs().max())


def no_temp_files(out_dir: Path) -> bool:
    return not [p for p in out_dir.rglob("*") if ".tmp" in p.name]


def test_reference_shapes(reference):
    # concat policy: 16 units per full window + the valid units of the last; 20 frames → 10 slots → 5 units
    assert {k: v.shape[0] for k, v in reference.items()} == {
        "clip0": 5, "clip1": 15, "clip2": 16 + 16 + 12, "clip3": 48 + 14, "clip4": 10, "clip5": 16 + 15}
    assert all(v.shape[1] == 256 and v.dtype == torch.float32 for v in reference.values())


def test_batched_across_videos_matches_alone(corpus, reference):
    root, manifest, model = corpus
    out = root / "batched"
    rep = extract_manifest(manifest, model, out, TINY, batch_size=4, num_workers=2, progress=False)
    assert (rep["extracted"], rep["failed"], rep["windows"]) == (6, 2, 12)
    assert_matches(out, reference)
    lengths = read_tsv(out / "lengths.tsv")
    assert list(lengths[0]) == ["id", "n_features", "path", "translation", "video_path", "n_frames", "signer"]
    assert [r["id"] for r in lengths] == GOOD                                   # manifest order
    for r in lengths:
        assert int(r["n_features"]) == reference[r["id"]].shape[0] and load_features(r["path"]).shape[1] == 256
    assert lengths[2]["translation"] == "sentence number 2." and lengths[2]["signer"] == "s0"
    fails = read_json(out / "failures.json")
    assert fails["failed_by_reason"] == {"unreadable_video": 1, "zero_frames": 1}
    assert {f["id"] for f in fails["failures"]} == {"corrupt", "empty"}
    assert no_temp_files(out)


def test_two_way_shards_then_merge(corpus, reference, monkeypatch):
    root, manifest, model = corpus
    out = root / "sharded"
    r0 = extract_manifest(manifest, model, out, TINY, batch_size=3, num_workers=1, rank=0, world_size=2,
                          progress=False)
    assert r0["merged"] is None and not (out / "lengths.tsv").exists()            # rank 1 not done yet
    assert sorted(p.stem for p in out.glob("*.pt")) == ["clip0", "clip2", "clip4"]
    monkeypatch.setenv("RANK", "1")                                               # as torchrun sets it
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    r1 = extract_manifest(manifest, model, out, TINY, batch_size=2, num_workers=0, progress=False)
    assert (r1["rank"], r1["world_size"], r1["extracted"]) == (1, 2, 3)
    assert r1["merged"]["videos"] == 6 and r1["merged"]["failed"] == 2
    assert [r["id"] for r in read_tsv(out / "lengths.tsv")] == GOOD
    assert_matches(out, reference)
    before = (out / "lengths.tsv").read_text()
    assert merge_shards(out, manifest, 2)["videos"] == 6 and (out / "lengths.tsv").read_text() == before
    assert merge_shards(out, manifest, 3) is None                                 # other world size: no shards


KILL_DRIVER = textwrap.dedent("""
    import sys, time, torch
    from sonar_thesis.config_sections import PRESETS
    from sonar_thesis.extract import extract_manifest
    from sonar_thesis.signhiera import signhiera_tiny
    state, manifest, out = sys.argv[1:4]
    model = signhiera_tiny()
    model.load_state_dict(torch.load(state, weights_only=True))
    fast = model.extract_features
    def slow(x, padding_mask):          # slow the model down so that the kill lands mid-run
        time.sleep(0.5)
        return fast(x, padding_mask)
    model.extract_features = slow
    extract_manifest(manifest, model, out, PRESETS["tiny"], batch_size=1, num_workers=1, progress=False)
""")


def test_sigkill_then_resume(corpus, reference):
    root, manifest, model = corpus
    out = root / "killed"
    driver = root / "kill_driver.py"
    driver.write_text(KILL_DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), str(root / "tiny_state.pt"), str(manifest), str(out)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list(out.glob("clip*.pt")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        assert list(out.glob("clip*.pt")), "the run wrote nothing within 60 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)                                      # the run and its loader worker
        proc.wait(timeout=30)
    done = sorted(p.stem for p in out.glob("*.pt"))
    assert 1 <= len(done) < len(GOOD), done
    assert_matches(out, reference, done)                                          # what exists is complete
    assert not (out / "lengths.tsv").exists()
    (out / ".clip5.abcd1234.tmp.pt").write_bytes(b"half a tensor")               # as if killed inside torch.save
    rep = extract_manifest(manifest, model, out, TINY, batch_size=4, num_workers=2, progress=False)
    assert rep["skipped_existing"] == len(done) and rep["extracted"] == len(GOOD) - len(done)
    assert_matches(out, reference)
    assert [r["id"] for r in read_tsv(out / "lengths.tsv")] == GOOD
    assert no_temp_files(out)


def test_bad_rows_are_reported_and_the_run_goes_on(corpus, reference, tmp_path):
    root, manifest, model = corpus
    rows = read_tsv(manifest)
    clip = {r["id"]: r for r in rows}
    write_test_clip(root / "test" / "small.mp4", 30, size=32)                    # not a 64×64 crop
    bad = [clip["clip2"],
           {**clip["clip0"], "id": "missing", "video_path": "test/nowhere.mp4"},
           {**clip["clip0"], "id": "a/b"},
           {**clip["clip0"], "id": "zero", "n_frames": "0"},
           {**clip["clip0"], "id": "small", "video_path": "test/small.mp4"},
           clip["clip2"],                                                          # duplicate id
           clip["corrupt"], clip["empty"], clip["clip4"]]
    m = write_tsv(root / "bad_rows.tsv", bad, HEADER)
    rep = extract_manifest(m, model, tmp_path / "out", TINY, batch_size=4, num_workers=2, progress=False)
    reasons = {f["id"]: f["reason"] for f in rep["failures"]}
    assert reasons == {"missing": "missing_video", "a/b": "unsafe_id", "zero": "zero_frames", "small": "wrong_size",
                       "clip2": "duplicate_id", "corrupt": "unreadable_video", "empty": "zero_frames"}
    assert "preprocess" in next(f["detail"] for f in rep["failures"] if f["id"] == "small")
    assert rep["extracted"] == 2
    assert_matches(tmp_path / "out", reference, ["clip2", "clip4"])


def test_settings_guard_and_trim(corpus, reference):
    root, manifest, model = corpus
    out = root / "batched"
    with pytest.raises(ValueError, match="other settings.*overlap_policy"):
        extract_manifest(manifest, model, out, TINY, progress=False, overlap_policy="trim")
    one = write_tsv(root / "trim_one.tsv", [r for r in read_tsv(manifest) if r["id"] == "clip3"], HEADER)
    extract_manifest(one, model, root / "trim", TINY, num_workers=0, progress=False, overlap_policy="trim")
    t, f = load_features(root / "trim" / "clip3.pt"), reference["clip3"]      # 150 frames → 75 slots → 38 units
    assert t.shape[0] == 38 and torch.allclose(t[:12], f[:12], atol=ATOL) and torch.allclose(t[12:20], f[20:28], atol=ATOL)


def test_torchrun_two_ranks_cli(corpus, reference, tmp_path):
    root, manifest, model = corpus
    from sonar_thesis.checkpoints import save_published
    ckpt = save_published(model, tmp_path / "signhiera.pth")
    out = tmp_path / "features"
    r = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "sonar_thesis.extract",
                        "--manifest", str(manifest), "--checkpoint", str(ckpt), "--out-dir", str(out),
                        "--preset", "tiny", "--num-workers", "0", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "shards").glob("lengths-*")) == \
        ["lengths-00000-of-00002.tsv", "lengths-00001-of-00002.tsv"]
    assert [x["id"] for x in read_tsv(out / "lengths.tsv")] == GOOD
    assert_matches(out, reference)


def test_uncropped_videos_are_cropped_in_the_workers(corpus, tmp_path):
    """A manifest of full frames + a crop config: the signer box (here the centre square) is cut in the workers."""
    import numpy as np
    from sonar_thesis.config_sections import PreprocessConfig
    from sonar_thesis.extract import normalize_batch
    from sonar_thesis.crop import center_box, crop_frame
    from sonar_thesis.video_io import iter_windows, write_video
    _, _, model = corpus
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
    frames = [np.kron(np.roll(base, i // 4, axis=1), np.ones((8, 12, 1), np.uint8)) for i in range(70)]  # 64×96
    write_video(tmp_path / "full.mp4", frames, fps=25)
    m = write_tsv(tmp_path / "full.tsv", [{"id": "full", "video_path": "full.mp4", "n_frames": 70,
                                           "translation": "t"}], ("id", "video_path", "n_frames", "translation"))
    rep = extract_manifest(m, model, tmp_path / "nocrop", TINY, num_workers=0, progress=False)
    assert rep["failures"][0]["reason"] == "wrong_size"
    rep = extract_manifest(m, model, tmp_path / "crop", TINY, num_workers=1, progress=False,
                           crop=PreprocessConfig(crop_method="none"))
    assert rep["extracted"] == 1, rep["failures"]
    box = center_box(96, 64)
    wins = [(np.stack([crop_frame(f, box, 64) for f in w]), p) for w, p in iter_windows(tmp_path / "full.mp4", TINY)]
    with torch.inference_mode():
        f, v = model.extract_features(normalize_batch(torch.from_numpy(np.stack([w for w, _ in wins])), TINY),
                                      torch.from_numpy(np.stack([p for _, p in wins])))
    expected = torch.cat([fi[vi] for fi, vi in zip(f, v)])
    assert torch.allclose(load_features(tmp_path / "crop" / "full.pt"), expected, atol=ATOL)


def test_auto_batch_and_progress_lines_in_a_log(corpus, reference, tmp_path, capsys, monkeypatch):
    """batch_size="auto" measures one window, prints its choice (≤ the cap); a non-TTY stderr gets plain progress lines."""
    import sonar_thesis.extract as ex
    root, manifest, model = corpus
    rep = extract_manifest(manifest, model, tmp_path / "auto", TINY, num_workers=0, max_batch_size=3)
    out, err = capsys.readouterr()
    assert rep["batch_size"] == 3 and "batch_size auto: 3 windows per forward pass" in out and "cap 3" in out
    lines = [l for l in err.splitlines() if l.startswith("extract ")]
    assert " 1/8 clips (12%)" in lines[0]     # the first clip at once
    assert " 8/8 clips (100%)" in lines[-1] and "windows 12" in lines[-1] and "failed 2" in lines[-1]
    assert "\r" not in err                                                                 # no tqdm redraws in a log
    assert_matches(tmp_path / "auto", reference)
    # little memory left: auto goes below the cap (0.8 × 100 MiB / (measured peak + 5 uint8 windows in flight:
    # one worker × (prefetch 2 + the one it builds) + 2 in the main process))
    cost = ex.WindowCost(20 * 2**20, 0.01)
    monkeypatch.setattr(ex, "measure_peak", lambda fn, dev: (fn(), cost))
    monkeypatch.setattr(ex, "available_memory", lambda dev: 100 * 2**20)
    rep = extract_manifest(manifest, model, tmp_path / "low", TINY, num_workers=1, progress=False, max_batch_size=8)
    assert rep["batch_size"] == int(0.8 * 100 * 2**20 // (cost.peak_bytes + 5 * 32 * 64 * 64 * 3)) == 3
    assert_matches(tmp_path / "low", reference)


def test_mirror_folder_redoes_changed_inputs_drops_removed_clips_restarts_on_new_settings(corpus, reference, tmp_path,
                                                                                           capsys):
    """A DVC stage's persistent folder: reused only where the input clip is unchanged; nothing stale survives."""
    import shutil
    root, manifest, model = corpus
    rows = [r for r in read_tsv(manifest) if r["id"] in GOOD[:4]]
    work = tmp_path / "crops"
    (work / "test").mkdir(parents=True)
    for r in rows:                                                  # own copies of the clips, to change one
        shutil.copy(root / r["video_path"], work / r["video_path"])
    m = write_tsv(work / "m.tsv", rows, HEADER)
    out = tmp_path / "features"
    first = extract_manifest(m, model, out, TINY, num_workers=0, progress=False, mirror=True)
    assert first["extracted"] == 4
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    shutil.copy(root / "test" / "clip4.mp4", work / "test" / "clip1.mp4")   # clip1 now shows other frames
    (out / ".lengths.tsv.abcd1234.tmp").write_text("half")                  # a killed run's unfinished writes
    (out / "shards" / ".failures-00000-of-00001.ab_d1234.tmp.json").write_text("{")
    m = write_tsv(work / "m.tsv", [r for r in rows if r["id"] != "clip3"], HEADER)   # clip3 left the manifest
    rep = extract_manifest(m, model, out, TINY, num_workers=0, progress=False, mirror=True)
    assert (rep["skipped_existing"], rep["extracted"]) == (2, 1)
    assert not (out / "clip3.pt").exists() and not (out / "clip3.info.json").exists()
    assert not [p.name for p in out.rglob(".*.tmp*")]                            # gone: the folder hashes as before
    assert torch.allclose(load_features(out / "clip1.pt"), reference["clip4"], atol=ATOL)
    assert all((out / n).read_bytes() == before[n] for n in ("clip0.pt", "clip2.pt", "clip0.info.json"))
    rep = extract_manifest(m, model, out, TINY, num_workers=0, progress=False, mirror=True, overlap_policy="trim")
    assert rep["extracted"] == 3 and "starting over" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other settings"):         # without mirror: stop, as before
        extract_manifest(m, model, out, TINY, num_workers=0, progress=False)
