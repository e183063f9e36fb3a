"""Landmarks baseline (nbs/11_landmarks.ipynb): mediapipe Holistic on a real photograph, missing marks and counted
skips, the renderer's ground truth in the same format, resume/atomic files through the shared extractor, failures,
the T5-base shape, training, checkpoints, and the stage end to end on a tiny synthetic corpus."""
import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe")

from sonar_thesis.config import Config
from sonar_thesis.config_sections import (DataConfig, HardwareConfig, LandmarksConfig, LoggingConfig, ModelConfig,
                                          SynthConfig, SynthDomainConfig, TrainingConfig)
from sonar_thesis.data import prepare
from sonar_thesis.evaluate import EvaluateConfig, evaluate_predictions
from sonar_thesis.extract import extract_manifest
from sonar_thesis.extract_store import load_features
from sonar_thesis.io import read_json, read_tsv, write_tsv
from sonar_thesis.landmark_model import (LANDMARK_PRESETS, build_landmark_model, count_parameters, load_landmark_model,
                                         save_landmark_model, t5_parameter_count)
from sonar_thesis.landmarks import (LandmarkProducer, extract_landmarks, first_frame, groundtruth_clip, groundtruth_index,
                                    holistic_landmarks, landmark_dim, landmark_names, normalize_landmarks,
                                    panned_photo, predict_landmarks, skdata_astronaut, train_landmarks, unflatten,
                                    write_photo_clips)
from sonar_thesis.sonar import SonarTokenizer, train_synthetic_tokenizer
from sonar_thesis.synth import generate_corpus
from sonar_thesis.video_io import iter_frames, write_video

K = len(landmark_names())                 # 11 face + 6 body + 2 × 21 hand points
NOSE, L_SHOULDER, R_SHOULDER, HANDS = 0, 11, 12, slice(17, None)
MP_SKIP = LandmarksConfig(method="mediapipe", fallback="skip")


@contextlib.contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The panned astronaut (12 frames), an empty clip and a corrupt file, with their manifest."""
    root = tmp_path_factory.mktemp("photos")
    return root, write_photo_clips(root)


@pytest.fixture(scope="module")
def photo_landmarks(photos):
    root, manifest = photos
    out = root / "lm"
    rep = extract_manifest(manifest, None, out, None, num_workers=0, progress=False, producer=LandmarkProducer(MP_SKIP))
    return out, rep


# ---------------------------------------------------------------- mediapipe on a real photograph

def test_astronaut_pose_face_and_normalisation(photos, photo_landmarks):
    root, _ = photos
    out, rep = photo_landmarks
    row = {r["id"]: r for r in read_tsv(out / "lengths.tsv")}["astronaut"]
    assert row["source"] == "mediapipe" and float(row["mp_pose"]) == 1.0 and int(row["n_features"]) == 12
    x = unflatten(load_features(out / "astronaut.pt")).numpy()               # [F, K, 3]
    assert x.shape == (12, K, 3)
    assert x[:, :13, 2].all()                                               # face points and shoulders found
    assert x[:, HANDS, 2].any(axis=1).mean() <= 0.2                         # no hands in the photo: marked missing
    assert (x[x[..., 2] == 0][:, :2] == 0).all()                            # a missing point is (0, 0, 0)
    # signer-centred, shoulder-width scaled (per video): exact medians, concrete positions
    mid, width = (x[:, L_SHOULDER, :2] + x[:, R_SHOULDER, :2]) / 2, np.linalg.norm(x[:, L_SHOULDER, :2] - x[:, R_SHOULDER, :2], axis=-1)
    assert np.allclose(np.median(mid, 0), 0, atol=1e-5) and abs(np.median(width) - 1) < 1e-5
    assert np.median(x[:, L_SHOULDER, 0]) > 0.4 and np.median(x[:, R_SHOULDER, 0]) < -0.4   # signer's left: image right
    assert -0.75 < np.median(x[:, NOSE, 1]) < -0.5 and abs(np.median(x[:, NOSE, 0])) < 0.15
    # the pan (subject 8 px left per frame) survives the per-video normalisation: slope = -8 px / shoulder width
    pts, pres, _ = holistic_landmarks(iter_frames(root / "clips" / "astronaut.mp4"))
    again, norm = normalize_landmarks(pts, pres)
    assert np.allclose(again, x, atol=1e-5)                                  # the file is exactly this
    slope = np.polyfit(np.arange(12), x[:, NOSE, 0], 1)[0]
    assert abs(slope * norm["scale"] + 8) < 1.5, (slope, norm)
    assert 150 < norm["scale"] < 230                                          # ~194 px shoulders in the 512-px photo


def test_frames_without_a_person_are_marked_missing():
    video = panned_photo(skdata_astronaut())
    video[4:7] = 0                                                            # three empty frames in the middle
    pts, pres, rates = holistic_landmarks(video)
    assert rates["pose"] == 0.75 and not pres[4:7].any() and pres[[0, 1, 2, 3, 7, 8, 9, 10, 11], L_SHOULDER].all()
    x, _ = normalize_landmarks(pts, pres)
    assert (x[4:7] == 0).all()


def test_nobody_is_a_counted_skip_and_corrupt_a_reported_failure(photo_landmarks):
    out, rep = photo_landmarks
    assert (rep["extracted"], rep["failed"]) == (1, 2)
    fails = read_json(out / "failures.json")
    assert fails["failed_by_reason"] == {"no_signer": 1, "unreadable_video": 1}
    why = {f["id"]: f["detail"] for f in fails["failures"]}
    assert "pose in 0% of 12 frames" in why["nobody"] and "fallback: skip" in why["nobody"]
    assert "corrupt.mp4" in why["corrupt"]
    assert not (out / "nobody.pt").exists() and not (out / "corrupt.pt").exists()


def test_nobody_falls_back_to_the_ground_truth(photos, tmp_path):
    """With fallback groundtruth, a clip mediapipe finds no signer in takes the renderer's keypoints instead."""
    root, manifest = photos
    rng = np.random.default_rng(0)
    pose, hands = rng.uniform(50, 300, (40, 25, 2)), rng.uniform(50, 300, (40, 2, 21, 2))
    np.savez(tmp_path / "kp.npz", pose=pose, hands=hands, fps=np.array(25))
    prod = LandmarkProducer(LandmarksConfig(method="mediapipe", fallback="groundtruth"), {"nobody": tmp_path / "kp.npz"})
    rep = extract_manifest(manifest, None, tmp_path / "lm", None, num_workers=0, progress=False, producer=prod)
    rows = {r["id"]: r for r in read_tsv(tmp_path / "lm" / "lengths.tsv")}
    assert rows["nobody"]["source"] == "groundtruth" and float(rows["nobody"]["mp_pose"]) == 0.0
    assert rows["astronaut"]["source"] == "mediapipe" and rep["failed"] == 1        # corrupt: still a failure
    x = unflatten(load_features(tmp_path / "lm" / "nobody.pt"))
    assert x.shape == (12, K, 3) and (x[..., 2] == 1).all()                       # start 0.00: frames 0..11
    want, _ = normalize_landmarks(*groundtruth_clip(tmp_path / "kp.npz", {"id": "nobody", "start": "0.00"}, 12, 25))
    assert np.allclose(x.numpy(), want)


# ---------------------------------------------------------------- resume, atomic files, workers

class _Interrupt:
    """Wraps a producer; raises KeyboardInterrupt (a kill) on the video with id `at`."""
    def __init__(self, inner, at):
        self.inner, self.at, self.settings, self.columns = inner, at, inner.settings, inner.columns

    def __call__(self, row, file):
        if row["id"] == self.at:
            raise KeyboardInterrupt
        return self.inner(row, file)


def test_resume_after_a_kill_and_atomic_files(photos, tmp_path):
    root, manifest = photos
    out = tmp_path / "lm"
    prod = LandmarkProducer(MP_SKIP)
    with pytest.raises(KeyboardInterrupt):
        extract_manifest(manifest, None, out, None, num_workers=0, progress=False, producer=_Interrupt(prod, "nobody"))
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["astronaut.info.json", "astronaut.pt", "extract.json"]
    first = load_features(out / "astronaut.pt")
    # what a kill inside torch.save / the info write leaves behind is cleaned up by the next run
    (out / ".astronaut.ab12cd34.tmp.pt").write_bytes(b"partial")
    (out / ".nobody.info.ab12cd34.tmp.json").write_text("{")
    rep = extract_manifest(manifest, None, out, None, num_workers=0, progress=False, producer=prod)
    assert (rep["extracted"], rep["skipped_existing"], rep["failed"]) == (0, 1, 2)   # finished clip not redone
    assert not list(out.glob(".*.tmp.*")) and torch.equal(load_features(out / "astronaut.pt"), first)
    assert read_tsv(out / "lengths.tsv")[0]["source"] == "mediapipe"                 # info kept across the resume
    (out / "astronaut.info.json").unlink()                                           # features without info: redone
    rep = extract_manifest(manifest, None, out, None, num_workers=0, progress=False, producer=prod)
    assert rep["extracted"] == 1 and (out / "astronaut.info.json").is_file()
    with pytest.raises(ValueError, match="other settings"):                         # another landmark set: refused
        extract_manifest(manifest, None, out, None, progress=False,
                         producer=LandmarkProducer(dataclasses.replace(MP_SKIP, face_subset=False)))


def test_loader_workers_give_the_same_landmarks(photos, photo_landmarks, tmp_path):
    root, manifest = photos
    rep = extract_manifest(manifest, None, tmp_path / "lm", None, num_workers=2, progress=False,
                           producer=LandmarkProducer(MP_SKIP))
    assert (rep["extracted"], rep["failed"]) == (1, 2)
    assert torch.equal(load_features(tmp_path / "lm" / "astronaut.pt"), load_features(photo_landmarks[0] / "astronaut.pt"))


def test_groundtruth_method_still_reports_a_corrupt_video(photos, tmp_path):
    root, manifest = photos
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "kp.npz", pose=rng.uniform(0, 300, (40, 25, 2)), hands=rng.uniform(0, 300, (40, 2, 21, 2)),
             fps=np.array(25))
    np.savez(tmp_path / "flat.npz", pose=np.ones((40, 25, 2)), hands=np.ones((40, 2, 21, 2)), fps=np.array(25))
    gt = {"astronaut": tmp_path / "kp.npz", "nobody": tmp_path / "flat.npz", "corrupt": tmp_path / "kp.npz"}
    rep = extract_manifest(manifest, None, tmp_path / "lm", None, num_workers=0, progress=False,
                           producer=LandmarkProducer(LandmarksConfig(method="groundtruth"), gt))
    assert {f["id"]: f["reason"] for f in rep["failures"]} == {"corrupt": "unreadable_video", "nobody": "no_signer"}
    assert read_tsv(tmp_path / "lm" / "lengths.tsv")[0]["mp_pose"] == ""          # mediapipe did not run
    with pytest.raises(ValueError, match="synthetic data only"):
        LandmarkProducer(LandmarksConfig(method="groundtruth"))


# ---------------------------------------------------------------- the synthetic corpus: ground truth ⇄ mediapipe

@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A tiny rendered corpus (target domain only), cut into sentence clips by the prepare code."""
    root = tmp_path_factory.mktemp("mini")
    synth = SynthConfig(output_dir=str(root / "synthetic"), seed=1,
                        source=SynthDomainConfig(train_videos=0, val_videos=0, test_videos=0),
                        target=SynthDomainConfig(train_videos=2, val_videos=1, test_videos=1, sentences_per_video=[2, 2],
                                                 n_signers=2, speed_range=[0.8, 1.2], backgrounds="varied"))
    generate_corpus(synth, workers=2, progress=False)
    data = DataConfig(root=str(root / "synthetic"), prepared_dir=str(root / "prepared"), num_workers=1)
    prepare(root / "synthetic" / "target", root / "prepared" / "target", data, progress=False)
    texts = [r["translation"] for r in read_tsv(root / "prepared" / "target" / "train.tsv")]
    tok = train_synthetic_tokenizer(texts * 3, root / "tok", vocab_size=60, name="tokenizer")
    cfg = Config(synth=synth, data=data, model=ModelConfig(tokenizer=str(tok), beam_size=2, max_len=24),
                 landmarks=LandmarksConfig(method="groundtruth", feature_dir=str(root / "landmarks"),
                                           output_dir=str(root / "models" / "landmarks"), epochs=2, batch_size=2),
                 training=TrainingConfig(warmup_steps=1, eval_every_n_steps=2, save_every_n_steps=2, max_val_samples=2,
                                          early_stopping_metric="val_loss"),
                 hardware=HardwareConfig(device="cpu", num_workers=1), logging=LoggingConfig(log_every_n_steps=1))
    return root, cfg


def test_groundtruth_clip_frames_are_the_renderers_sentence_frames(mini):
    """The clip → full-video frame mapping (start time, 02_data's cut rule) lands exactly on the rendered sentence."""
    root, cfg = mini
    rows = read_tsv(root / "prepared" / "target" / "train.tsv")
    assert rows
    for r in rows:
        vid = r["video_id"]                                                  # id = {vid}_{k}-1-rgb_front
        k = int(r["id"][len(vid) + 1:].split("-")[0])
        with np.load(root / "synthetic" / "target" / "keypoints" / f"{vid}-1-rgb_front.npz") as z:
            f0, f1 = z["sentence_frames"][k]
            kp = {n: z[n] for n in ("pose", "hands", "fps")}
        assert first_frame(float(r["start"]), 25) == f0 and int(r["n_frames"]) == f1 - f0
        pts, pres = groundtruth_clip(kp, r, int(r["n_frames"]), 25.0)
        assert np.array_equal(pts[:, 17:38], kp["hands"][f0:f1, 0]) and pres.all()


def test_groundtruth_and_mediapipe_write_the_same_format(mini, tmp_path):
    root, cfg = mini
    manifest = root / "prepared" / "target" / "test.tsv"
    one = write_tsv(tmp_path / "one.tsv", read_tsv(manifest)[:1], list(read_tsv(manifest)[0]))
    gt = groundtruth_index(root / "synthetic" / "target", "test")
    a = extract_manifest(one, None, tmp_path / "gt", None, num_workers=0, progress=False,
                         producer=LandmarkProducer(dataclasses.replace(cfg.landmarks, method="groundtruth"), gt))
    b = extract_manifest(one, None, tmp_path / "mp", None, num_workers=0, progress=False,
                         producer=LandmarkProducer(dataclasses.replace(cfg.landmarks, method="mediapipe"), gt))
    assert a["extracted"] == b["extracted"] == 1
    ra, rb = read_tsv(tmp_path / "gt" / "lengths.tsv")[0], read_tsv(tmp_path / "mp" / "lengths.tsv")[0]
    assert (ra["source"], rb["source"]) == ("groundtruth", "mediapipe") and list(ra) == list(rb)
    sa, sb = read_json(tmp_path / "gt" / "extract.json")["producer"], read_json(tmp_path / "mp" / "extract.json")["producer"]
    assert sa["names"] == sb["names"] == landmark_names() and sa["channels"] == sb["channels"] == ["x", "y", "present"]
    xa, xb = (unflatten(load_features(tmp_path / d / f"{ra['id']}.pt")).numpy() for d in ("gt", "mp"))
    assert xa.shape == xb.shape == (int(ra["n_frames"]), K, 3)
    for x in (xa, xb):                                                       # the same normalisation
        both = (x[:, L_SHOULDER, 2] > 0) & (x[:, R_SHOULDER, 2] > 0)
        w = np.linalg.norm(x[both, L_SHOULDER, :2] - x[both, R_SHOULDER, :2], axis=-1)
        assert abs(np.median(w) - 1) < 1e-5
        assert set(np.unique(x[..., 2])) <= {0.0, 1.0}
    assert float(rb["mp_pose"]) >= 0.9                                       # mediapipe finds the rendered signer
    present = xb[..., 2] > 0                                                 # where it does, it agrees with the renderer
    assert np.median(np.linalg.norm(xa[..., :2] - xb[..., :2], axis=-1)[present]) < 0.3


# ---------------------------------------------------------------- the model

def test_t5_base_shaped_preset_on_meta():
    with torch.device("meta"):
        m = build_landmark_model("sonar", landmark_dim(), vocab_size=32128)
    assert all(p.is_meta for p in m.parameters())
    assert count_parameters(m.t5) == t5_parameter_count(32128, **LANDMARK_PRESETS["sonar"]) == 222_903_552  # t5-base
    assert count_parameters(m) == 222_903_552 + landmark_dim() * 768 + 768
    cfg = m.t5.config
    assert (cfg.d_model, cfg.num_layers, cfg.num_decoder_layers, cfg.num_heads, cfg.d_ff) == (768, 12, 12, 12, 3072)
    with torch.device("meta"):                                               # with the SONAR tokenizer's 256k vocabulary
        big = build_landmark_model("sonar", landmark_dim(), vocab_size=256_206)
    assert count_parameters(big) == t5_parameter_count(256_206, **LANDMARK_PRESETS["sonar"]) + landmark_dim() * 768 + 768


def _toy_batch():
    torch.manual_seed(0)
    feats = torch.randn(4, 30, 12)
    mask = torch.arange(30)[None] < torch.tensor([30, 25, 20, 9])[:, None]
    tgt = torch.tensor([[3, 30, 5, 6, 7, 3], [3, 30, 8, 9, 3, 0], [3, 30, 10, 3, 0, 0], [3, 30, 11, 12, 13, 3]])
    return {"features": feats, "mask": mask, "tgt": tgt}


def test_tiny_model_loss_decreases():
    with one_thread():
        torch.manual_seed(0)
        model = build_landmark_model("tiny", 12, vocab_size=40)
        batch = _toy_batch()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for _ in range(10):
            loss = model.training_loss(batch)
            opt.zero_grad(); loss.backward(); opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0] and all(np.isfinite(losses)), losses


def test_padding_frames_do_not_change_the_encoding():
    """Frames beyond a clip's length (mask False) are ignored, also after stacking frames into positions."""
    with one_thread():
        torch.manual_seed(0)
        model = build_landmark_model("tiny", 12, vocab_size=40).eval()
        x = torch.randn(1, 17, 12)
        padded = torch.cat([x, torch.zeros(1, 3, 12), torch.randn(1, 4, 12)], 1)   # collate pads with zeros
        short, long = model.encode(x, torch.ones(1, 17, dtype=torch.bool)), model.encode(
            padded, torch.arange(24)[None] < 17)
        n = short[1].sum()
        assert n == 5 and torch.equal(short[1], long[1][:, :5])
        # position 4 holds frame 16 + zero padding in both; position 5 (random, masked) changes nothing
        assert torch.allclose(short[0].last_hidden_state, long[0].last_hidden_state[:, :5], atol=1e-5)


def test_checkpoint_roundtrip_gives_identical_outputs(tmp_path):
    with one_thread():
        torch.manual_seed(0)
        model = build_landmark_model("tiny", 12, vocab_size=40, d_model=64, num_heads=2, d_kv=32)
        batch = _toy_batch()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(3):
            loss = model.training_loss(batch)
            opt.zero_grad(); loss.backward(); opt.step()
        model.eval()
        back = load_landmark_model(save_landmark_model(model, tmp_path / "m.pt"))
        assert back.config == model.config and back.frame_stack == model.frame_stack == 4
        f, m, t = batch["features"], batch["mask"], batch["tgt"][:, :-1]
        assert torch.equal(model(f, m, t), back(f, m, t))
        assert torch.equal(model.generate_ids(f, m, [3, 30], beam_size=3, max_len=8),
                           back.generate_ids(f, m, [3, 30], beam_size=3, max_len=8))
        n = model.generate_ids(f[:1], m[:1], [3, 30], beam_size=1, max_len=0).shape[1]   # 0: SONAR's 512 positions
        assert 2 < n <= 512
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a landmarks model"):
        load_landmark_model(tmp_path / "other.pt")


# ---------------------------------------------------------------- the two stages end to end (tiny corpus)

def test_stages_end_to_end_on_a_tiny_synthetic_corpus(mini, monkeypatch):
    root, cfg = mini
    monkeypatch.chdir(root)                         # dvclive must not find (or touch) the project's DVC repo
    rep = extract_landmarks(cfg, progress=False, check_clips=1)
    assert rep["synthetic"] and rep["sources"] == {"groundtruth": sum(s["clips"] for s in rep["splits"].values())}
    assert set(rep["splits"]) == {"target/train", "target/val", "target/test"} and rep["failed"] == 0
    check = rep["mediapipe_check"]
    assert check["rates"]["pose"] >= 0.9 and "SYNTHETIC" in check["note"]
    assert read_json(Path(cfg.landmarks.feature_dir) / "report.json")["title"].endswith("(SYNTHETIC corpus)")
    with one_thread():
        summary = train_landmarks(cfg, progress=False)
        assert summary["steps"] > 0 and summary["best_metric"] == "val_loss" and summary["sources"]["groundtruth"] > 0
        assert (Path(cfg.landmarks.output_dir) / "run" / "dvclive").is_dir()
        info = predict_landmarks(cfg, out_dir=root / "predictions" / "landmarks", progress=False)
    rows = read_tsv(root / "predictions" / "landmarks" / "predictions.tsv")
    n_test = len(read_tsv(root / "prepared" / "target" / "test.tsv"))
    assert info["n"] == len(rows) == n_test and info["synthetic"] and info["landmark_sources"] == {"groundtruth": n_test}
    times = read_tsv(root / "timings" / "landmarks.tsv")                          # timings apart from predictions
    assert [t["id"] for t in times] == [r["id"] for r in rows] and all(r["domain"] == "target" for r in rows)
    assert all(t["t_encoder"] and t["t_decoding"] for t in times)
    assert all(t["t_total"] == "" and t["t_decode_crop"] == "" for t in times)     # no mediapipe: no end-to-end latency
    assert len(read_tsv(root / "timings" / "landmarks_extract.tsv")) == sum(s["clips"] for s in rep["splits"].values())
    # the evaluate stage scores it like every other system
    ev = evaluate_predictions(root / "predictions" / "landmarks" / "predictions.tsv", root / "eval",
                              EvaluateConfig(metrics=["bleu4", "chrf"], bootstrap_samples=20), system="landmarks",
                              timings_tsv=root / "timings" / "landmarks.tsv")
    assert ev["synthetic"] and ev["n"] == n_test and "t_total" not in ev["latency"] and "t_encoder" in ev["latency"]
    # a rerun of the training stage finds the finished run
    with one_thread():
        again = train_landmarks(cfg, progress=False)
    assert again["steps"] == summary["steps"] and again["best"] == summary["best"]
