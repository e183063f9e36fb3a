"""Data preparation: planted faults, resume, comma-delimited CSVs, decodability."""
import os
import time
from pathlib import Path

import decord
import pytest

from sonar_thesis.config_sections import DataConfig
from sonar_thesis.data import make_fixture, prepare, read_how2sign_csv, write_test_video, HOW2SIGN_COLUMNS
from sonar_thesis.io import MANIFEST_COLUMNS, read_json, read_tsv


@pytest.fixture
def fixture_dir(tmp_path):
    return make_fixture(tmp_path / "h2s")


def test_planted_faults_are_counted_and_good_rows_written(fixture_dir, tmp_path):
    out = tmp_path / "out"
    rep = prepare(fixture_dir, out, DataConfig(splits=["test"], num_workers=2), progress=False)["test"]
    assert rep["written"] == 3 and rep["skipped"] == 6
    assert rep["skipped_by_reason"] == {"bad_timestamps": 2, "duplicate_id": 1, "empty_text": 1,
                                        "missing_video": 1, "unreadable_video": 1}
    on_disk = read_json(out / "report.json")["test"]
    assert on_disk["skipped_by_reason"] == rep["skipped_by_reason"]
    # every problem names its row and sentence id
    assert all(p["row"] >= 2 and p["id"] for p in on_disk["problems"])
    rows = read_tsv(out / "test.tsv", required=MANIFEST_COLUMNS)
    for r in rows:
        assert len(decord.VideoReader(r["video_path"])) == int(r["n_frames"]) > 0
    assert not list((out / "clips" / "test").glob(".*tmp*")), "temp files left behind"


def test_resume_recuts_only_missing_clips(fixture_dir, tmp_path):
    out = tmp_path / "out"
    cfg = DataConfig(splits=["test"], num_workers=1)
    prepare(fixture_dir, out, cfg, progress=False)
    clips = sorted((out / "clips" / "test").glob("*.mp4"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in clips}
    manifest = (out / "test.tsv").read_text()
    clips[0].unlink()
    time.sleep(0.01)
    prepare(fixture_dir, out, cfg, progress=False)
    assert (out / "test.tsv").read_text() == manifest
    for p in clips[1:]:
        assert p.stat().st_mtime_ns == mtimes[p.name], f"{p.name} was cut again"
    assert clips[0].exists()


def test_comma_delimited_copy_gives_same_manifest(fixture_dir, tmp_path):
    tsv = fixture_dir / "how2sign_realigned_test.csv"
    a = prepare(fixture_dir, tmp_path / "a", DataConfig(splits=["test"], num_workers=1), progress=False)
    lines = tsv.read_text().split("\r\n")
    tsv.write_text("\n".join(",".join(f'"{c}"' if "," in c else c for c in l.split("\t")) for l in lines))
    b = prepare(fixture_dir, tmp_path / "b", DataConfig(splits=["test"], num_workers=1), progress=False)
    assert a["test"]["skipped_by_reason"] == b["test"]["skipped_by_reason"]
    ra, rb = read_tsv(tmp_path / "a" / "test.tsv"), read_tsv(tmp_path / "b" / "test.tsv")
    assert [(r["id"], r["n_frames"], r["translation"]) for r in ra] == [(r["id"], r["n_frames"], r["translation"]) for r in rb]


def test_wrong_header_and_missing_folder_are_clear(tmp_path):
    (tmp_path / "how2sign_realigned_test.csv").write_text("id\tpath\n1\tx\n")
    with pytest.raises(ValueError, match="header is not How2Sign's"):
        read_how2sign_csv(tmp_path / "how2sign_realigned_test.csv")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        prepare(tmp_path / "nope", tmp_path / "out")


def test_video_truncated_midway_is_reported_not_fatal(tmp_path):
    root = tmp_path / "h2s"
    v = write_test_video(root / "v-1-rgb_front.mp4", n_frames=100)
    data = v.read_bytes()
    v.write_bytes(data[: len(data) // 2])  # cut the file: header claims 100 frames
    rows = [["v", "v-1-rgb_front", f"v_{i}", f"v_{i}-1-rgb_front", f"{i:.2f}", f"{i + 0.8:.2f}", f"Sentence {i}."] for i in range(3)]
    (root / "how2sign_realigned_test.csv").write_text(
        "\r\n".join(["\t".join(HOW2SIGN_COLUMNS)] + ["\t".join(r) for r in rows]) + "\r\n", newline="")
    rep = prepare(root, tmp_path / "out", DataConfig(splits=["test"], num_workers=1), progress=False)["test"]
    assert rep["rows"] == 3 and rep["written"] + rep["skipped"] == 3
    for r in read_tsv(tmp_path / "out" / "test.tsv"):
        assert len(decord.VideoReader(r["video_path"])) == int(r["n_frames"])


@pytest.mark.parametrize("pix_fmt, size, fps", [("yuv420p", (64, 48), 25), ("yuv420p", (64, 48), 30000 / 1001),
                                                 ("yuv444p", (63, 47), 25)])
def test_cut_video_frames_timing_and_pixels(tmp_path, pix_fmt, size, fps):
    """yuv420p frames go to the encoder as decoded, anything else through RGB; both keep frames, rate and grey levels."""
    import av
    import numpy as np
    from fractions import Fraction
    from sonar_thesis.data import Sentence, cut_video
    from sonar_thesis.video_probe import probe_video
    src = tmp_path / "full.mp4"
    with av.open(str(src), "w", format="mp4") as c:    # the source, in the pixel format under test
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt, s.options = size[0], size[1], pix_fmt, {"crf": "0"}
        for i in range(60):
            img = np.full((size[1], size[0], 3), (3 * i) % 256, np.uint8)
            for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    info = probe_video(src)
    sents = [Sentence(2, "v", "full", "v_0", "a", 10 / info.fps, 30 / info.fps, "x"),
             Sentence(3, "v", "full", "v_1", "b", 20 / info.fps, 50 / info.fps, "y")]   # overlapping
    done = cut_video(info, sents, tmp_path / "clips")
    assert done == {"a": 20, "b": 30}
    for name, first, n in (("a", 10, 20), ("b", 20, 30)):
        with av.open(str(tmp_path / "clips" / f"{name}.mp4")) as c:
            st = c.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
            assert abs(float(st.average_rate) - fps) < 1e-3
            assert abs(float(st.duration * st.time_base) - n / fps) < 1e-3
        assert (len(frames), frames[0].shape[:2]) == (n, (size[1] - size[1] % 2, size[0] - size[0] % 2))
        grey = [float(f.mean()) for f in frames]
        assert max(abs(g - (3 * (first + k)) % 256) for k, g in enumerate(grey)) < 3, grey[:5]


def _csv(rows, header=HOW2SIGN_COLUMNS):
    return "\r\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\r\n"


def test_unreadable_csv_names_the_file_and_the_other_splits_go_on(fixture_dir, tmp_path):
    """A latin-1 CSV: one line naming the file and the fix; the other split is prepared; report.json says why."""
    row = ["vidA", "vidA-1-rgb_front", "vidA_9", "vidA_9-1-rgb_front", "0.00", "1.00", "Crème brûlée."]
    (fixture_dir / "how2sign_realigned_val.csv").write_bytes(_csv([row]).encode("latin-1"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"how2sign_realigned_val\.csv: not UTF-8 .*iconv -f latin1") as e:
        prepare(fixture_dir, out, DataConfig(splits=["val", "test"], num_workers=1), progress=False)
    assert "\n" not in str(e.value)
    rep = read_json(out / "report.json")
    assert "not UTF-8" in rep["val"]["error"] and rep["test"]["written"] == 3
    assert len(read_tsv(out / "test.tsv")) == 3


def test_header_only_csv_is_an_error_not_an_empty_manifest(fixture_dir, tmp_path):
    (fixture_dir / "how2sign_realigned_val.csv").write_text(_csv([]))
    with pytest.raises(ValueError, match=r"how2sign_realigned_val\.csv: only a header, no sentences"):
        prepare(fixture_dir, tmp_path / "out", DataConfig(splits=["val"], num_workers=1), progress=False)
    assert read_json(tmp_path / "out" / "report.json")["val"]["error"]


def test_extra_leading_column_and_nan_timestamps(tmp_path):
    """Every needed column is there, after an extra one: accepted. `nan` times are bad_timestamps, not empty clips."""
    header = ("ROW",) + HOW2SIGN_COLUMNS
    rows = [["1", "v", "v-1-rgb_front", "v_0", "v_0-1-rgb_front", "0.10", "0.90", "Good."],
            ["2", "v", "v-1-rgb_front", "v_1", "v_1-1-rgb_front", "nan", "1.00", "Bad start."]]
    p = tmp_path / "how2sign_realigned_test.csv"
    p.write_text(_csv(rows, header))
    sentences, problems = read_how2sign_csv(p)
    assert [s.sentence_name for s in sentences] == ["v_0-1-rgb_front"] and sentences[0].text == "Good."
    assert [(q["id"], q["reason"]) for q in problems] == [("v_1-1-rgb_front", "bad_timestamps")]


def test_cutting_many_sentences_of_one_video_gives_the_same_bytes_every_time(tmp_path):
    """x264's MB-tree once made the last clip of a multi-sentence cut depend on stale memory (2-5 variants in 6 cuts)."""
    import hashlib
    from sonar_thesis.data import Sentence, cut_video
    from sonar_thesis.video_probe import probe_video
    from sonar_thesis.config import load_config
    from sonar_thesis.synth import plan_corpus, write_video
    from sonar_thesis.synth_render import render_video
    synth = load_config(Path(__file__).parents[1] / "params.yaml").synth
    plan = next(p for p in plan_corpus(synth) if p["video_id"] == "Rtay6n2ESFo")  # one that showed it
    frames, _ = render_video(plan)
    write_video(tmp_path / "full.mp4", frames, plan["fps"], plan["width"], plan["height"])
    v = probe_video(tmp_path / "full.mp4")
    spans = [(0.92, 3.96), (5.44, 8.76), (10.12, 12.28), (13.52, 15.24)]   # its sentences in the default corpus
    sents = [Sentence(2 + k, "v", "full", f"v_{k}", f"s{k}", a, b, "x") for k, (a, b) in enumerate(spans)]
    variants = set()
    for k in range(6):
        cut_video(v, sents, tmp_path / f"cut{k}")
        variants.add(tuple(hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / f"cut{k}").glob("*.mp4"))))
    assert len(variants) == 1, f"{len(variants)} different results from 6 cuts"
