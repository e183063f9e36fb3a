"""Synthetic corpus (nbs/01_synth.ipynb): How2Sign file format, determinism, detectable faces, domain shift."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

decord = pytest.importorskip("decord")

from sonar_thesis.config_sections import SynthConfig, SynthDomainConfig
from sonar_thesis.synth import CSV_COLUMNS, face_detection_rate, generate_corpus
from sonar_thesis.synth_render import POSE_NAMES
from sonar_thesis.synth_signs import DOMAINS, SHARED_WORDS, SOURCE_WORDS, SPLITS, TARGET_WORDS, sentence_text, vocabulary

HEADER = "\t".join(CSV_COLUMNS)
SMALL = SynthConfig(
    seed=3, width=480, height=270,
    source=SynthDomainConfig(train_videos=3, val_videos=1, test_videos=1, sentences_per_video=[2, 3]),
    target=SynthDomainConfig(train_videos=3, val_videos=1, test_videos=1, sentences_per_video=[2, 3], n_signers=3,
                             speed_range=[0.75, 1.3], backgrounds="varied", position_jitter=0.08, scale_jitter=0.12))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = generate_corpus(SMALL, out, workers=2, progress=False)
    return out, summary


def read_csv(path: Path) -> list[dict]:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", ""), f"{path}: not CRLF throughout"
    lines = text.split("\r\n")[:-1]
    assert lines[0] == HEADER
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == 7, line
        rows.append(dict(zip(CSV_COLUMNS, cells)))
    return rows


def read_meta(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, l.split("\t"))) for l in lines[1:]]


def test_csv_format(corpus):
    out, summary = corpus
    seen_ids = set()
    for domain in DOMAINS:
        for split in SPLITS:
            rows = read_csv(out / domain / f"how2sign_realigned_{split}.csv")
            assert len(rows) == summary["domains"][domain][split]["sentences"] > 0
            by_video: dict[str, list[dict]] = {}
            for r in rows:
                vid = r["VIDEO_ID"]
                assert re.fullmatch(r"[A-Za-z0-9_-]{11}", vid)
                assert r["VIDEO_NAME"] == f"{vid}-1-rgb_front"
                k = r["SENTENCE_ID"].rsplit("_", 1)[1]
                assert r["SENTENCE_ID"] == f"{vid}_{k}" and r["SENTENCE_NAME"] == f"{vid}_{k}-1-rgb_front"
                assert re.fullmatch(r"\d+\.\d\d", r["START_REALIGNED"]) and re.fullmatch(r"\d+\.\d\d", r["END_REALIGNED"])
                assert r["SENTENCE"][0].isupper() and r["SENTENCE"].endswith(".")
                by_video.setdefault(vid, []).append(r)
            assert not set(by_video) & seen_ids, "a video id occurs in two splits/domains"
            seen_ids |= set(by_video)
            for vid, rs in by_video.items():
                assert [int(r["SENTENCE_ID"].rsplit("_", 1)[1]) for r in rs] == list(range(len(rs)))
                vr = decord.VideoReader(str(out / domain / "videos" / f"{vid}-1-rgb_front.mp4"))
                assert vr[0].shape == (SMALL.height, SMALL.width, 3) and round(vr.get_avg_fps()) == SMALL.fps
                duration = len(vr) / SMALL.fps
                times = [(float(r["START_REALIGNED"]), float(r["END_REALIGNED"])) for r in rs]
                assert all(0 < a < b <= duration for a, b in times)
                assert all(b1 < a2 for (_, b1), (a2, _) in zip(times, times[1:])), "sentences overlap"
                assert 2 <= len(rs) <= 3
            meta = read_meta(out / domain / f"synth_meta_{split}.tsv")
            assert [m["SENTENCE_NAME"] for m in meta] == [r["SENTENCE_NAME"] for r in rows]
            assert all(sentence_text(m["words"].split()) == r["SENTENCE"] for m, r in zip(meta, rows))
            for m, r in zip(meta, rows):   # one sign span per word, in order, inside the sentence's frames
                spans = [tuple(map(int, x.split(":"))) for x in m["word_frames"].split()]
                n = round((float(r["END_REALIGNED"]) - float(r["START_REALIGNED"])) * SMALL.fps)
                assert len(spans) == len(m["words"].split()) and spans[0][0] == 0 and spans[-1][1] == n, (spans, n)
                assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:] + [(n, 0)]))


def test_keypoint_side_files(corpus):
    out, _ = corpus
    for domain in DOMAINS:
        for f in sorted((out / domain / "keypoints").glob("*.npz")):
            z = np.load(f)
            F = z["hands"].shape[0]
            assert z["hands"].shape == (F, 2, 21, 2) and z["pose"].shape == (F, 25, 2) and z["face_box"].shape == (F, 4)
            assert tuple(z["pose_names"])[:17] == POSE_NAMES[:17] and POSE_NAMES[11:17] == (
                "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist")
            assert np.allclose(z["pose"][:, 15], z["hands"][:, 0, 0]) and np.allclose(z["pose"][:, 16], z["hands"][:, 1, 0])
            x0, y0, x1, y1 = z["face_box"].T
            assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= SMALL.width).all() and (y1 <= SMALL.height).all()
            assert (35 <= x1 - x0).all() and (x1 - x0 <= 55).all()
            for a, b in z["sentence_frames"]:   # while signing, the dominant hand is in the frame
                h = z["hands"][a:b, 1]
                assert (h[..., 0] >= 0).all() and (h[..., 0] < SMALL.width).all() and (h[..., 1] < SMALL.height).all()


def test_deterministic(corpus, tmp_path):
    out, summary = corpus
    again = generate_corpus(SMALL, tmp_path / "b", workers=1, progress=False)
    assert again["domains"] == summary["domains"] and again["counts"] == summary["counts"]
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "summary.json")
    assert len(files) > 20
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    other = generate_corpus(dataclasses.replace(SMALL, target=dataclasses.replace(SMALL.target, train_videos=0,
                                                                                   val_videos=0, test_videos=1)),
                            tmp_path / "c", seed=4, workers=1, progress=False)
    assert other["seed"] == 4
    assert (tmp_path / "c" / "source" / "how2sign_realigned_train.csv").read_bytes() != \
        (out / "source" / "how2sign_realigned_train.csv").read_bytes()


def test_resume_and_stale_files(tmp_path):
    cfg = SynthConfig(source=SynthDomainConfig(train_videos=2, val_videos=0, test_videos=0, sentences_per_video=[1, 1]),
                      target=SynthDomainConfig(train_videos=0, val_videos=0, test_videos=0))
    assert generate_corpus(cfg, tmp_path, workers=1, progress=False)["rendered"] == 2
    assert generate_corpus(cfg, tmp_path, workers=1, progress=False)["rendered"] == 0
    smaller = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, train_videos=1))
    assert generate_corpus(smaller, tmp_path, workers=1, progress=False)["rendered"] == 0   # same first video
    assert len(list((tmp_path / "source" / "videos").glob("*.mp4"))) == 1
    assert len(list((tmp_path / "source" / "keypoints").glob("*.npz"))) == 1
    assert len(read_csv(tmp_path / "target" / "how2sign_realigned_test.csv")) == 0


def _sampled_frames(out: Path, domain: str, step: int = 12) -> list[np.ndarray]:
    frames = []
    for f in sorted((out / domain / "videos").glob("*.mp4")):
        vr = decord.VideoReader(str(f))
        frames += list(vr.get_batch(list(range(0, len(vr), step))).asnumpy())
    return frames


def test_face_detectable_both_domains(corpus):
    out, _ = corpus
    for domain in DOMAINS:
        frames = _sampled_frames(out, domain)
        assert len(frames) >= 50
        rate = face_detection_rate(frames, model_selection=1)
        print(f"{domain}: mediapipe full-range face detection on {len(frames)} frames: {rate:.1%}")
        assert rate >= 0.9, (domain, rate)


def test_target_differs_from_source(corpus):
    out, _ = corpus
    meta = {d: [m for s in SPLITS for m in read_meta(out / d / f"synth_meta_{s}.tsv")] for d in DOMAINS}
    assert {m["signer"] for m in meta["source"]} == {"src0"}
    assert len({m["signer"] for m in meta["target"]}) == 3
    assert {m["background"] for m in meta["source"]} == {"plain"}
    assert len({m["background"] for m in meta["target"]}) >= 2 and "plain" not in {m["background"] for m in meta["target"]}
    assert {float(m["speed"]) for m in meta["source"]} == {1.0}
    sp = [float(m["speed"]) for m in meta["target"]]
    assert 0.75 <= min(sp) < max(sp) <= 1.3 and np.std(sp) > 0.05
    # pixels: the source background is one flat colour, the target's is not; the target signer moves around
    stats = {}
    for d in DOMAINS:
        frames = np.stack(_sampled_frames(out, d, step=50)).astype(np.float32)
        corner = frames[:, :40, -40:]                       # top-right corner: background only
        boxes = np.concatenate([np.load(f)["face_box"][:1] for f in sorted((out / d / "keypoints").glob("*.npz"))])
        stats[d] = (corner.std(axis=(1, 2)).mean(), np.ptp(boxes[:, 0]), np.ptp(boxes[:, 2] - boxes[:, 0]))
    assert stats["source"][0] < 3 < stats["target"][0]
    assert stats["source"][1] == 0 and stats["target"][1] > 20        # signer position differs per video
    assert stats["source"][2] == 0 and stats["target"][2] > 2         # and size


def test_vocabulary_per_domain(corpus):
    out, summary = corpus
    voc = summary["vocabulary"]
    assert 20 <= len(voc["shared"]) <= 30 and 15 <= len(voc["source_only"]) <= 20 and 15 <= len(voc["target_only"]) <= 20
    words = {d: [w for s in SPLITS for m in read_meta(out / d / f"synth_meta_{s}.tsv") for w in m["words"].split()]
             for d in DOMAINS}
    for d, other in (("source", TARGET_WORDS), ("target", SOURCE_WORDS)):
        assert set(words[d]) <= set(vocabulary(d))
        assert not set(words[d]) & set(other), f"{d} uses the other domain's words"
        assert set(words[d]) & set(SHARED_WORDS)
        assert all(3 <= len(m["words"].split()) <= 8 for s in SPLITS for m in read_meta(out / d / f"synth_meta_{s}.tsv"))


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"synth\.width/height must be even"):
        generate_corpus(dataclasses.replace(SMALL, height=271), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"synth\.target\.speed_range"):
        generate_corpus(dataclasses.replace(SMALL, target=dataclasses.replace(SMALL.target, speed_range=[1.3, 0.7])),
                        tmp_path, progress=False)
