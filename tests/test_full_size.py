"""The real path at FULL size, on one How2Sign-layout clip (slow: run with `pytest -m slow`; not in the default run).

One 8-s 1280x720 29.97-fps sentence in How2Sign's CSV/video layout goes through prepare → preprocess (face
crop, 224x224) → extract (full-size SignHiera-base, `batch_size="auto"`) → zero-shot translation (the
`zeroshot` stage's `translate_manifests`), with random-weight checkpoints of the published sizes written in the
published layouts (SignHiera `{"model"}` + MAE leftovers, ASL encoder `{"student"}`, fairseq2-named decoder
`{"model"}`) and a 256,000-piece SentencePiece model: 1 + 256,000 + 202 + 3 = 256,206 ids = the decoder's rows.
`model.max_len` 32 bounds the beam search of the random decoder. Measured on 2 CPU cores (AMD EPYC): 3 min 56 s,
peak RSS 10.1 GiB (checkpoints 59 s, prepare 1 s, preprocess 2 s, extract 74 s of which 39 s is the auto batch
size's one measured window, load_pretrained 32 s, zero-shot translation 58 s).
"""
import time
from pathlib import Path

import pytest
import torch

from how2sign_layout import fixture_texts, make_how2sign_fixture, write_published_checkpoints
from sonar_thesis.config import apply_overlay, load_config
from sonar_thesis.data import prepare
from sonar_thesis.extract import build_extractor, extract_manifest
from sonar_thesis.extract_store import load_features
from sonar_thesis.io import read_json, read_tsv
from sonar_thesis.assemble import load_pretrained
from sonar_thesis.translate import translate_manifests
from sonar_thesis.video_probe import probe_video
from sonar_thesis.video import preprocess_manifest, resolve_video_path

pytestmark = pytest.mark.slow


def test_one_clip_through_the_full_size_real_path(tmp_path, repo_root):
    t0, times = time.perf_counter(), {}
    lap = lambda k: times.__setitem__(k, round(time.perf_counter() - t0 - sum(times.values()), 1))  # noqa: E731
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    apply_overlay(params, repo_root / "configs" / "how2sign.yaml")
    cfg = load_config(params)
    assert (cfg.dataset, cfg.preset) == ("how2sign", "sonar")
    root = make_how2sign_fixture(tmp_path / "how2sign", videos={"test": 1}, sentences_per_video=1,
                                 sentence_seconds=8.0)
    cfg.data.root, cfg.data.prepared_dir, cfg.data.splits = str(root), str(tmp_path / "prepared"), ["test"]
    cfg.data.num_workers = cfg.preprocess.num_workers = cfg.hardware.num_workers = 1
    cfg.preprocess.output_dir = str(tmp_path / "crops")
    cfg.hardware.device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.model.max_len = 32
    pub = write_published_checkpoints(tmp_path / "published", "sonar", fixture_texts(root), text_encoder=False)
    for what in ("signhiera", "encoder", "decoder", "tokenizer"):
        setattr(cfg.model, what, str(pub[what]))
    assert "mask_token" in torch.load(pub["signhiera"], mmap=True, weights_only=True)["model"]
    assert torch.load(pub["decoder"], mmap=True, weights_only=True)["model"][
        "decoder_frontend.embed.weight"].shape == (256_206, 1024)
    lap("fixture_and_checkpoints")

    rep = prepare(root, Path(cfg.data.prepared_dir) / "target", cfg.data, progress=False)
    manifest = Path(cfg.data.prepared_dir) / "target" / "test.tsv"
    (row,) = read_tsv(manifest)
    assert rep["test"]["written"] == 1 and row["id"].startswith("-")
    info = probe_video(resolve_video_path(manifest, row["video_path"]))
    n_src, fps, (h, w) = info.n_frames, info.fps, info.shape
    assert (w, h) == (1280, 720) and abs(fps - 29.97) < 0.01 and abs(n_src / fps - 8.0) < 0.2
    lap("prepare")

    crops = Path(cfg.preprocess.output_dir) / "target"
    rep = preprocess_manifest(manifest, crops / "test", cfg.preprocess, cfg.sizes, workers=1, progress=False,
                              out_manifest=crops / "test.tsv")
    assert rep["counts"]["written"] == 1 and rep["methods"] == {"mediapipe": 1}, rep   # the fixture's face is found
    (crop_row,) = read_tsv(crops / "test.tsv")
    assert probe_video(resolve_video_path(crops / "test.tsv", crop_row["video_path"])).shape == (224, 224)
    lap("preprocess")

    feats_dir = tmp_path / "features" / "target" / "test"
    rep = extract_manifest(crops / "test.tsv", build_extractor("sonar", cfg.model.signhiera), feats_dir, cfg.sizes,
                           device=cfg.hardware.device, num_workers=1, progress=False)
    assert rep["extracted"] == 1 and rep["failed"] == 0 and 1 <= rep["batch_size"] <= 8
    f = load_features(feats_dir / f"{row['id']}.pt")
    n25 = int(crop_row["n_frames"])                             # 8 s → ~200 frames at 25 fps (one 128-slot window)
    assert 195 <= n25 <= 205 and f.shape == (((n25 + 1) // 2 + 1) // 2, 768) and torch.isfinite(f).all()  # 2 slots/unit
    lap("extract")

    models = load_pretrained(cfg, device=cfg.hardware.device)  # the tokenizer/decoder check passes: 256,206 = 256,206
    assert len(models.tokenizer) == 256_206 and models.tokenizer.lang_id("eng_Latn") == 256_047
    sd = torch.load(pub["encoder"], mmap=True, weights_only=True)["student"]
    assert torch.equal(models.translator.encoder.state_dict()["projection_out.weight"].cpu(), sd["projection_out.weight"])
    lap("load_pretrained")

    info = translate_manifests({"target": manifest}, models, cfg, tmp_path / "predictions" / "zeroshot", "zeroshot",
                               device=cfg.hardware.device, progress=False)
    assert info["n"] == 1 and not info["failures"], info["failures"]
    (pred,) = read_tsv(tmp_path / "predictions" / "zeroshot" / "predictions.tsv")
    assert pred["id"] == row["id"] and pred["reference"] == row["translation"]
    assert all(float(pred[k]) > 0 for k in ("t_decode_crop", "t_signhiera", "t_encoder", "t_decoding"))
    assert read_json(tmp_path / "predictions" / "zeroshot" / "info.json")["preset"] == "sonar"
    lap("zero_shot")
    print(f"full-size path: {times} (total {time.perf_counter() - t0:.0f} s); hypothesis: {pred['hypothesis'][:80]!r}")
