"""sonar_thesis.video: windows, resampling, signer crop (mediapipe, dlib), manifest faults, resume, streaming memory."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from sonar_thesis.config_sections import PRESETS, PreprocessConfig
from sonar_thesis.io import MANIFEST_COLUMNS, read_json, read_tsv, write_tsv
from sonar_thesis.crop import dlib_model_path, get_detector
from sonar_thesis.video_probe import VideoError
from sonar_thesis.signer_box import find_signer_box
from sonar_thesis.video import preprocess_clip, preprocess_manifest
from sonar_thesis.video_io import iter_frames, iter_windows, normalize, resample_indices, window_spans, write_video

TINY, SONAR = PRESETS["tiny"], PRESETS["sonar"]
MP = PreprocessConfig(crop_method="mediapipe")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures (synthetic composites)
def astronaut_frame(width=480, height=270, face_px=45, x=None, y=20, bg=90):
    """480×270 grey frame with the astronaut photo scaled so the face is ~face_px wide; returns (frame, face box)."""
    s = face_px / 100
    small = cv2.resize(skimage.data.astronaut(), None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    fr = np.full((height, width, 3), bg, np.uint8)
    x = width - small.shape[1] - 10 if x is None else x
    h, w = min(small.shape[0], height - y), min(small.shape[1], width - x)
    fr[y:y + h, x:x + w] = small[:h, :w]
    return fr, (x + 176 * s, y + 70 * s, x + 276 * s, y + 175 * s)


def two_people_frames(n=50, mover="right", seed=0):
    """Two astronauts side by side; one jitters and waves a 'hand' block, the other holds still."""
    rng = np.random.default_rng(seed)
    small = cv2.resize(skimage.data.astronaut(), None, fx=0.45, fy=0.45, interpolation=cv2.INTER_AREA)[:230]
    for i in range(n):
        fr = np.full((270, 480, 3), 90, np.uint8)
        dx, dy = rng.integers(-6, 7, size=2)
        still_x, move_x = (5, 244) if mover == "right" else (244, 10)
        fr[20:250, still_x:still_x + 230] = small
        fr[20 + dy:250 + dy, move_x + dx:move_x + dx + 230] = small
        hy, hx = 150 + int(40 * np.sin(i * 1.3)), move_x + 56 + i % 7 * 8
        fr[hy:hy + 25, hx:hx + 30] = (230, 180, 150)
        yield fr


def sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


# ---------------------------------------------------------------- sampling
def test_resample_30_to_25():
    idx = resample_indices(300, 30, 25)
    assert len(idx) == 250 and idx[-1] == 298
    assert set(range(300)) - set(idx.tolist()) == set(range(5, 300, 6))
    assert np.array_equal(resample_indices(40, 25, 25), np.arange(40))
    assert len(resample_indices(29, 29.97, 25)) == 25
    with pytest.raises(ValueError):
        resample_indices(0, 30, 25)


def test_windows_overlap_and_padding():
    ws = window_spans(300, 128, 2)                       # sonar: span 256, stride 128
    assert [w.start for w in ws] == [0, 128]
    assert np.array_equal(ws[0].indices[64:], ws[1].indices[:64])
    last = ws[1]
    assert last.pad.sum() == 128 - 86 and last.pad[86:].all() and not last.pad[:86].any()
    assert (last.indices[last.pad] == 299).all()
    one = window_spans(5, 32, 2)
    assert len(one) == 1 and one[0].pad.sum() == 29 and list(one[0].indices[:4]) == [0, 2, 4, 4]


def test_iter_windows_decodes_the_right_frames(tmp_path):
    # 4 s at 30 fps, frame i a flat grey of level 10 + 2i → 100 frames at 25 fps → tiny windows at 0, 32, 64
    p = write_video(tmp_path / "g.mp4", (np.full((32, 64, 3), 10 + 2 * i, np.uint8) for i in range(120)), fps=30, crf=4)
    wins = list(iter_windows(p, TINY))
    spans = window_spans(100, 32, 2)
    assert len(wins) == len(spans) == 3
    src = resample_indices(120, 30, 25)
    for (frames, pad), w in zip(wins, spans):
        assert frames.shape == (32, 32, 64, 3) and np.array_equal(pad, w.pad)
        assert np.abs(frames.reshape(32, -1).mean(1) - (10 + 2 * src[w.indices])).max() < 2
    x = normalize(wins[0][0], TINY)
    assert tuple(x.shape) == (3, 32, 32, 64)
    assert abs(float(x.mean()) - float(((10 + 2 * src[spans[0].indices]) / 255 - 0.45).mean() / 0.225)) < 0.03


# ---------------------------------------------------------------- signer crop
def test_astronaut_crop_with_mediapipe(tmp_path):
    frame, face = astronaut_frame()
    src = write_video(tmp_path / "astro.mp4", [frame] * 40, fps=25)
    info = preprocess_clip(src, tmp_path / "crop.mp4", PreprocessConfig(crop_method="mediapipe", mode="resample"), SONAR)
    assert info["method"] == "mediapipe" and info["n_detections"] == 3 and info["n_frames"] == 40
    x0, y0, x1, y1 = info["box"]
    assert x1 - x0 == y1 - y0 and x0 < face[0] and face[2] < x1 and y0 < face[1] and face[3] < y1
    assert abs((x0 + x1) / 2 - (face[0] + face[2]) / 2) < 10        # centred on the face, not the frame (240)
    crop = next(iter_frames(tmp_path / "crop.mp4"))
    assert crop.shape == (224, 224, 3)
    faces = get_detector("mediapipe")(crop)
    assert len(faces) == 1
    cx, cy = (faces[0][0] + faces[0][2]) / 448, (faces[0][1] + faces[0][3]) / 448
    assert 0.4 < cx < 0.6 and 0.15 < cy < 0.45


def test_one_pass_and_two_passes_write_the_same_clip(tmp_path):
    """Short clips are decoded once and held; with no buffer the two-pass path must give the same clip."""
    frame, _ = astronaut_frame()
    frames = [np.roll(frame, 2 * i, axis=1) for i in range(40)]            # moving, so frames differ
    src = write_video(tmp_path / "astro.mp4", frames, fps=30)              # 30 fps: repeated-frame resampling
    one = preprocess_clip(src, tmp_path / "one.mp4", MP, TINY)
    two = preprocess_clip(src, tmp_path / "two.mp4", MP, TINY, buffer_mb=0)
    assert one["method"] == "mediapipe" and {k: v for k, v in one.items() if k != "seconds"} == \
        {k: v for k, v in two.items() if k != "seconds"}
    a, b = list(iter_frames(tmp_path / "one.mp4")), list(iter_frames(tmp_path / "two.mp4"))
    assert len(a) == one["n_frames"] == 34 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dlib_cnn_detector_on_one_frame(tmp_path):
    pytest.importorskip("dlib", reason="dlib not installed (pip install dlib-bin)")
    try:
        dlib_model_path()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"dlib CNN face model unavailable: {e}")
    frame, face = astronaut_frame()
    boxes = get_detector("dlib")(frame)              # 270 px high → upsampled once, finds the 45-px face
    assert len(boxes) == 1
    b = boxes[0]
    assert b[0] < (face[0] + face[2]) / 2 < b[2] and b[1] < (face[1] + face[3]) / 2 < b[3]
    src = write_video(tmp_path / "one.mp4", [frame], fps=25)
    sb = find_signer_box(src, PreprocessConfig(crop_method="dlib"), TINY)
    assert sb.method == "dlib" and sb.n_detections == 1 and sb.box[0] < face[0] and sb.box[2] > face[2]


@pytest.mark.parametrize("mover", ["right", "left"])
def test_two_faces_the_mover_wins(tmp_path, mover):
    src = write_video(tmp_path / "two.mp4", two_people_frames(mover=mover), fps=25)
    sb = find_signer_box(src, MP, TINY)
    assert sb.method == "mediapipe" and sb.n_sampled == 4 and sb.n_detections == 8
    cx = (sb.box[0] + sb.box[2]) / 2
    assert (cx > 300) if mover == "right" else (cx < 180), sb
    assert "most moving" in sb.reason


def test_no_face_falls_back_to_centre_with_reason(tmp_path, caplog):
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (27, 48, 3), dtype=np.uint8), (480, 270), interpolation=cv2.INTER_NEAREST)
    src = write_video(tmp_path / "noface.mp4", (np.roll(base, 4 * i, 1) for i in range(30)), fps=25)
    with caplog.at_level("WARNING", logger="sonar_thesis.video"):
        info = preprocess_clip(src, tmp_path / "crop.mp4", MP, TINY)
    assert info["method"] == "center" and info["box"] == [105, 0, 375, 270]
    assert "no face" in info["reason"] and "2 sampled" in info["reason"]
    assert "centre crop" in caplog.text and "noface.mp4" in caplog.text


# ---------------------------------------------------------------- manifest: faults and resume
def _zero_frame_mp4(path):
    import av
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    c.start_encoding()
    c.close()


@pytest.fixture
def corpus(tmp_path):
    """A manifest with three good clips (one faceless) and four bad rows (missing, corrupt, truncated, 0 frames)."""
    v = tmp_path / "prepared" / "videos"
    v.mkdir(parents=True)
    frame, _ = astronaut_frame()
    write_video(v / "a.mp4", [frame] * 30, fps=30)
    write_video(v / "b.mp4", two_people_frames(n=35), fps=25)
    write_video(v / "c.mp4", [np.full((120, 160, 3), 128, np.uint8)] * 20, fps=25)
    (v / "corrupt.mp4").write_bytes(os.urandom(4000))
    (v / "trunc.mp4").write_bytes((v / "a.mp4").read_bytes()[:2000])
    _zero_frame_mp4(v / "zero.mp4")
    ids = ["a", "gone", "corrupt", "b", "trunc", "zero", "c"]
    rows = [{"id": i, "video_path": f"videos/{i}.mp4", "n_frames": 30, "translation": f"sentence {i}",
             "speaker": f"s{k}"} for k, i in enumerate(ids)]
    rows[2]["video_path"] = str(v / "corrupt.mp4")                  # absolute paths work too
    m = tmp_path / "prepared" / "test.tsv"
    write_tsv(m, rows, [*MANIFEST_COLUMNS, "speaker"])
    return m


def test_bad_videos_are_reported_and_the_run_continues(corpus, tmp_path):
    out = tmp_path / "crops" / "test"
    rep = preprocess_manifest(corpus, out, MP, TINY, workers=1, progress=False)
    assert rep["counts"]["rows"] == 7 and rep["counts"]["ok"] == 3 and rep["counts"]["failed"] == 4
    fails = {f["id"]: f for f in rep["failures"]}
    assert set(fails) == {"gone", "corrupt", "trunc", "zero"}
    for i, f in fails.items():
        assert f"{i}.mp4" in f["error"] and f["file"].endswith(f"{i}.mp4")
    assert "no such video file" in fails["gone"]["error"]
    assert rep["clips"]["c"]["method"] == "center" and rep["fallbacks"] == [{"id": "c", "reason": rep["clips"]["c"]["reason"]}]
    assert rep["methods"] == {"mediapipe": 2, "center": 1}
    rows = read_tsv(tmp_path / "crops" / "test.tsv")
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert [r["video_path"] for r in rows] == ["test/a.mp4", "test/b.mp4", "test/c.mp4"]
    assert [r["n_frames"] for r in rows] == ["25", "35", "20"] and rows[1]["speaker"] == "s3"
    stored = read_json(tmp_path / "crops" / "test.report.json")       # resume counts printed, not stored:
    assert stored["counts"] == {k: v for k, v in rep["counts"].items() if k not in ("written", "skipped_existing")}
    assert "seconds" not in stored and "seconds" in rep                   # the same bytes on a rerun
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.mp4", "b.json", "b.mp4", "c.json", "c.mp4"]


def test_resume_skips_finished_and_reproduces_output(corpus, tmp_path):
    out = tmp_path / "crops" / "test"
    rep1 = preprocess_manifest(corpus, out, MP, TINY, workers=2, progress=False)   # the process-pool path
    assert rep1["counts"]["ok"] == 3 and rep1["counts"]["failed"] == 4
    first = {p.name: (sha(p), p.stat().st_mtime_ns) for p in out.glob("*.mp4")}
    manifest1 = (tmp_path / "crops" / "test.tsv").read_text()

    rep2 = preprocess_manifest(corpus, out, MP, TINY, workers=1, progress=False)
    assert rep2["counts"]["skipped_existing"] == 3 and rep2["counts"]["written"] == 0
    assert rep2["counts"]["failed"] == 4                                         # bad rows are retried, still fail
    assert {p.name: (sha(p), p.stat().st_mtime_ns) for p in out.glob("*.mp4")} == first   # untouched
    assert (tmp_path / "crops" / "test.tsv").read_text() == manifest1

    (out / "b.mp4").unlink()                                                     # lose one crop → only it is redone
    (out / ".b.half.tmp.mp4").write_bytes(b"junk from a killed run")
    rep3 = preprocess_manifest(corpus, out, MP, TINY, workers=1, progress=False)
    assert rep3["counts"]["written"] == 1 and rep3["counts"]["skipped_existing"] == 2
    assert sha(out / "b.mp4") == first["b.mp4"][0]                               # identical bytes
    assert (tmp_path / "crops" / "test.tsv").read_text() == manifest1

    rep4 = preprocess_manifest(corpus, out, PreprocessConfig(crop_method="none"), TINY, workers=1, progress=False)
    assert rep4["counts"]["written"] == 3 and rep4["methods"] == {"center": 3}   # other settings → redone
    assert rep4["fallbacks"] == []                                               # centre was asked for


# ---------------------------------------------------------------- streaming memory
_RSS_SCRIPT = """
import sys
from sonar_thesis.config_sections import PRESETS, PreprocessConfig
from sonar_thesis.video import preprocess_clip
from sonar_thesis.video_io import iter_windows
what, path = sys.argv[1], sys.argv[2]
if what == "windows":                       # the consumer works between windows, like a model would
    import numpy as np
    n = 0
    for frames, pad in iter_windows(path, PRESETS["tiny"]):
        x = (frames.astype(np.float32) / 255 - 0.45) / 0.225
        n += 1
else:
    n = preprocess_clip(path, path + ".crop.mp4", PreprocessConfig(crop_method="none"), PRESETS["tiny"])["n_frames"]
# VmHWM = this process's peak RSS; ru_maxrss would also count the forked parent (pytest) from before exec
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(n, hwm)
"""


def _synthetic_video(path, seconds, w=320, h=240, fps=25):
    rng = np.random.default_rng(1)
    base = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    return write_video(path, (np.roll(base, (2 * i, 3 * i), (0, 1)) for i in range(seconds * fps)),
                       fps=fps, crf=30, preset="ultrafast")


def _peak_rss_kb(what, path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, what, str(path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n, rss = out.stdout.split()[-2:]
    return int(n), int(rss)


pytestmark_linux = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM")


@pytestmark_linux
def test_memory_does_not_grow_with_video_length(tmp_path):
    short = _synthetic_video(tmp_path / "short.mp4", 10)
    long = _synthetic_video(tmp_path / "long.mp4", 150)          # 2.5 min: 3750 frames = 864 MB as raw RGB
    n_s, rss_s = _peak_rss_kb("windows", short)
    n_l, rss_l = _peak_rss_kb("windows", long)
    assert (n_s, n_l) == (len(window_spans(250, 32, 2)), len(window_spans(3750, 32, 2)))
    print(f"iter_windows peak RSS: 10 s {rss_s / 1024:.0f} MiB, 150 s {rss_l / 1024:.0f} MiB")
    assert rss_l < 1.5 * rss_s
    c_s, crss_s = _peak_rss_kb("clip", short)
    c_l, crss_l = _peak_rss_kb("clip", long)
    assert (c_s, c_l) == (250, 3750)
    print(f"preprocess_clip peak RSS: 10 s {crss_s / 1024:.0f} MiB, 150 s {crss_l / 1024:.0f} MiB")
    assert crss_l < 1.5 * crss_s


def test_frame_size_disagreement_falls_back_to_decord(tmp_path):
    """Sequential passes decode with PyAV; if its frame size disagrees with decord's (rotation), decord is used."""
    from sonar_thesis.video_probe import probe_video
    from sonar_thesis.video_io import _select_frames
    p = write_video(tmp_path / "g.mp4", (np.full((48, 64, 3), 10 + 3 * i, np.uint8) for i in range(36)), fps=30)
    info = probe_video(p)
    n, fps, shape = info.n_frames, info.fps, info.shape
    assert (n, fps, shape) == (36, 30.0, (48, 64))
    idx = resample_indices(n, fps, 25)
    ks, pyav = zip(*_select_frames(p, idx, n, shape))
    ks2, via_decord = zip(*_select_frames(p, idx, n, (64, 48)))      # pretend decord saw 64×48 (rotation)
    assert ks == ks2 == tuple(range(30))
    assert np.array_equal(np.stack(pyav), np.stack(via_decord))
    assert np.abs(np.stack(pyav).reshape(30, -1).mean(1) - (10 + 3 * idx)).max() < 2
    assert [k for k, _ in _select_frames(p, idx, n, shape, [7, 3, 3, 29])] == [3, 7, 29]


# ---------------------------------------------------------------- reference mode (ssvp_slt; golden cases: test_golden_preprocess)
def _counter_video(path, n, fps, w=96, h=64):
    """Frame k shows k: three flat thirds at levels 20·d + 25 for its decimal digits (any fps, a Fraction)."""
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "4", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for k in range(n):
            f = np.empty((h, w, 3), np.uint8)
            for j in range(3):
                f[:, j * w // 3:(j + 1) * w // 3] = 20 * (k // 10 ** j % 10) + 25
            vf = av.VideoFrame.from_ndarray(f, format="rgb24"); vf.pts = k
            for pk in s.encode(vf): c.mux(pk)
        for pk in s.encode(): c.mux(pk)
    return path


def _counter_value(frames):
    w = frames.shape[2]
    digit = lambda j: np.round((frames[:, 8:-8, j * w // 3 + 6:(j + 1) * w // 3 - 6].mean((1, 2, 3)) - 25) / 20)
    return sum(10 ** j * digit(j) for j in range(3)).astype(int)


def test_config_mode_is_validated():
    from sonar_thesis.config import Config
    from sonar_thesis.config_checks import ConfigError, from_dict
    with pytest.raises(ConfigError, match="preprocess.mode"):
        from_dict(Config, {"preprocess": {"mode": "exact"}})
    cfg = from_dict(Config, {"preset": "small"})
    assert cfg.preprocess.mode == "auto" and cfg.preprocess.resolved_mode(cfg.sizes) == "reference"
    assert PreprocessConfig(mode="resample").resolved_mode(SONAR) == "resample"
    assert PreprocessConfig(mode="reference").resolved_mode(TINY) == "reference"


@pytest.mark.parametrize("n,fps", [(300, "2997/100"), (255, "25"), (37, "60"), (700, "30000/1001")])
def test_reference_windows_decode_the_reference_frames(tmp_path, n, fps):
    """iter_windows(mode='reference') on a raw clip: each slot holds the source frame reference_windows names."""
    from fractions import Fraction
    from sonar_thesis.video_io import reference_windows
    src = _counter_video(tmp_path / "k.mp4", n, Fraction(fps))
    wins = list(iter_windows(src, SONAR, mode="reference"))
    ref = reference_windows(n, float(Fraction(fps)), SONAR)
    assert len(wins) == len(ref)
    for (frames, pad), w in zip(wins, ref):
        assert frames.shape == (128, 64, 96, 3)
        assert _counter_value(frames).tolist() == w.indices.tolist()
        assert pad.sum() == w.padding and pad[128 - w.padding:].all()


def test_reference_crop_clip_is_lossless_reproducible_and_self_describing(tmp_path):
    from fractions import Fraction
    from sonar_thesis.crop import crop_frame
    from sonar_thesis.video_probe import probe_video
    from sonar_thesis.video_io import read_crop_meta, reference_windows, _select_frames
    src = _counter_video(tmp_path / "k.mp4", 400, Fraction(30000, 1001), w=320, h=180)
    cfg = PreprocessConfig(crop_method="none")                         # the reference's centre fallback box
    with pytest.raises(ValueError, match="mkv"):
        preprocess_clip(src, tmp_path / "crop.mp4", cfg, SONAR)
    info = preprocess_clip(src, tmp_path / "a.mkv", cfg, SONAR)
    again = preprocess_clip(src, tmp_path / "b.mkv", cfg, SONAR, buffer_mb=0)    # two decode passes
    assert info["mode"] == "reference" and info["box"] == [115, 45, 205, 135] and info["method"] == "center"
    assert sha(tmp_path / "a.mkv") == sha(tmp_path / "b.mkv")                      # same bytes, either path
    meta = read_crop_meta(tmp_path / "a.mkv")
    ref = reference_windows(400, 30000 / 1001, SONAR)
    assert meta["frames"] == sorted(set(np.concatenate([w.indices for w in ref]).tolist()))
    assert len(meta["frames"]) == info["n_frames"] and read_crop_meta(src) is None
    probe = probe_video(src)
    n, shape = probe.n_frames, probe.shape
    every = dict(_select_frames(src, np.arange(n), n, shape))
    for mode in ("resample", "reference"):                              # a reference clip brings its own windows
        stored = list(iter_windows(tmp_path / "a.mkv", SONAR, mode=mode))
        assert len(stored) == len(ref)
        for (x, pad), w in zip(stored, ref):
            want = np.stack([crop_frame(every[k], info["box"], 224, bilinear=True) for k in w.indices])
            assert np.array_equal(x, want) and pad.sum() == w.padding
    with pytest.raises(VideoError, match="the preset needs 32"):
        next(iter_windows(tmp_path / "a.mkv", TINY))


def test_reference_manifest_writes_mkv_and_resumes(corpus, tmp_path):
    from sonar_thesis.video_io import reference_windows
    out = tmp_path / "crops" / "test"
    rep = preprocess_manifest(corpus, out, PreprocessConfig(crop_method="none"), SONAR, workers=1, progress=False)
    assert rep["counts"]["ok"] == 3 and rep["counts"]["failed"] == 4 and rep["settings"]["mode"] == "reference"
    rows = read_tsv(tmp_path / "crops" / "test.tsv")
    assert [r["video_path"] for r in rows] == ["test/a.mkv", "test/b.mkv", "test/c.mkv"]
    assert all(read_json(out / f"{r['id']}.json")["mode"] == "reference" for r in rows)
    assert rows[0]["n_frames"] == str(len(set(np.concatenate([w.indices for w in reference_windows(30, 30.0, SONAR)]))))
    again = preprocess_manifest(corpus, out, PreprocessConfig(crop_method="none"), SONAR, workers=1, progress=False)
    assert again["counts"]["skipped_existing"] == 3 and again["counts"]["written"] == 0



# ---------------------------------------------------------------- one reading rule (decord, PyAV where decord refuses)
@pytest.mark.parametrize("size, pix_fmt", [((48, 34), "yuv420p"), ((64, 48), "yuv420p"), ((63, 47), "yuv444p")])
def test_every_reader_gives_pyavs_frames(tmp_path, size, pix_fmt):
    """48×34 H.264 decodes in PyAV but not in decord: probe, batch reads, iter_frames and iter_windows (both modes)
    all read it, with PyAV's frame count and pixels — as they read the sizes decord handles."""
    import av
    import sonar_thesis.data
    from sonar_thesis.video_probe import probe_video
    from sonar_thesis.video_io import FrameReader, reference_windows, _select_frames
    w, h = size
    p = tmp_path / f"{w}x{h}.mp4"
    rng = np.random.default_rng(w)
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"crf": "10"})
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        for _ in range(50):
            for pk in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (h, w, 3), np.uint8), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    with av.open(str(p)) as c:
        ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])   # [50, H, W, 3] PyAV's frames
    assert sonar_thesis.data.probe_video is probe_video                             # one probe, one place
    info = probe_video(p)
    assert (info.n_frames, info.fps, info.shape) == (50, 25.0, (h, w))
    assert info.reader == ("pyav" if w == 48 else "decord")
    fr = FrameReader(p)
    assert (fr.n, fr.fps) == (50, 25.0) and np.array_equal(fr.get_batch(range(50)), ref)
    assert np.array_equal(fr.get_batch([3, 7]), ref[[3, 7]])                       # a step back
    fr.close()
    assert np.array_equal(np.stack(list(iter_frames(p))), ref)
    assert np.array_equal(np.stack([f for _, f in _select_frames(p, np.arange(50), 50, info.shape)]), ref)
    for mode, spans in (("resample", [w_.indices for w_ in window_spans(50, TINY.num_frames, TINY.sampling_rate)]),
                        ("reference", [w_.indices for w_ in reference_windows(50, 25.0, TINY)])):
        wins = list(iter_windows(p, TINY, mode=mode))
        assert len(wins) == len(spans)
        for (frames, _), idx in zip(wins, spans):
            assert np.array_equal(frames, ref[idx])
