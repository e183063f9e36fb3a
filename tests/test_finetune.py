"""Stage-1/2 freezing: frozen parameters are bit-identical after training steps; trainable ones move; stage 2's
embedding loss."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sonar_thesis.config import PRESETS, Config, HardwareConfig, LoggingConfig
from sonar_thesis.finetune import stage1_model, stage2_model
from sonar_thesis.io import MANIFEST_COLUMNS, write_tsv
from sonar_thesis.signhiera import build_signhiera
from sonar_thesis.sonar import SonarTokenizer, train_synthetic_tokenizer
from sonar_thesis.trainer import train
from sonar_thesis.translate import (ClipDataset, FeatureList, FeatureModel, Pretrained, _text_encoder_path,
                                    attach_teacher, build_text_encoder, build_translator, collate_clips,
                                    collate_features, embedding_distance)
from sonar_thesis.video import write_video


def _models(tmp_path):
    torch.manual_seed(0)
    tok = SonarTokenizer(train_synthetic_tokenizer(["Mix the flour.", "Cut the paper."] * 5, tmp_path, vocab_size=30))
    return Pretrained(build_signhiera("tiny"), build_translator("tiny", len(tok), dropout=0.1), tok)


def _clips(tmp_path, n=4):
    rows = []
    for i in range(n):
        frames = [np.full((64, 64, 3), (40 * i, 200 - 40 * i, 90), np.uint8)] * 20
        p = write_video(tmp_path / f"c{i}.mp4", frames)
        rows.append(dict(id=f"c{i}", video_path=str(p), n_frames=20, translation=["Mix the flour.", "Cut the paper."][i % 2]))
    return write_tsv(tmp_path / "m.tsv", rows, MANIFEST_COLUMNS)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train(model, ds, collate, out, cfg):
    torch.set_num_threads(1)
    stage = replace(cfg.stage1, epochs=1, batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-2)
    training = replace(cfg.training, warmup_steps=0, weight_decay=0.5, eval_every_n_steps=1000)
    return train(model, ds, out, stage=stage, training=training, hardware=HardwareConfig(device="cpu", num_workers=0),
                 logging_cfg=LoggingConfig(), collate_fn=collate, lengths=[1] * len(ds), progress=False, dvclive=False)


def test_stage1_freezes_exactly_the_first_80_percent(tmp_path):
    cfg = Config()
    models = _models(tmp_path)
    model = stage1_model(models, cfg)
    before = _snapshot(model)
    ds = ClipDataset(_clips(tmp_path), models.tokenizer, PRESETS["tiny"], progress=False)
    res = _train(model, ds, collate_clips, tmp_path / "run", cfg)
    assert res.steps == 2
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not (moved & frozen), f"frozen parameters changed: {sorted(moved & frozen)[:5]}"
    # what moved: only SignHiera's last block (tiny: 5 blocks, round(0.8 * 5) = 4 frozen)
    assert moved and all(n.startswith("signhiera.blocks.4.") for n in moved), sorted(moved)[:5]
    assert all(n.startswith(("translator.", "signhiera.blocks.0", "signhiera.blocks.1", "signhiera.blocks.2",
                             "signhiera.blocks.3", "signhiera.patch_embed", "signhiera.pos_embed"))
               for n in frozen if not n.startswith("signhiera.norm"))


def test_stage2_with_frozen_decoder_trains_only_the_encoder(tmp_path):
    cfg = Config()
    cfg.stage2.freeze_decoder = True
    models = _models(tmp_path)
    model = stage2_model(models, cfg)
    before = _snapshot(model)
    tok = models.tokenizer
    items = [dict(features=torch.randn(7 + i, 256), tgt=tok.encode_target(t), id=str(i), reference=t)
             for i, t in enumerate(["Mix the flour.", "Cut the paper."] * 2)]
    _train(model, items, collate_features, tmp_path / "run2", cfg)
    for n, p in model.named_parameters():
        if n.startswith("translator.decoder."):
            assert torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith("translator.encoder."))


def test_stage2_embedding_loss_adds_the_teacher_distance(tmp_path):
    cfg = Config()
    cfg.stage2.embedding_loss_weight = 0.5
    models = _models(tmp_path)
    model = stage2_model(models, cfg).eval()
    tok = models.tokenizer
    sents = ["Mix the flour.", "Cut the paper."]
    ds = FeatureList([dict(features=torch.randn(5 + i, 256), tgt=tok.encode_target(t), id=t, reference=t)
                      for i, t in enumerate(sents)])
    with pytest.raises(ValueError, match="teacher"):
        model.training_loss(collate_features([ds[0], ds[1]]))
    attach_teacher(ds, build_text_encoder("tiny", len(tok)), tok)
    batch = collate_features([ds[0], ds[1]])
    with torch.no_grad():
        total = float(model.training_loss(batch))
        distance = float(embedding_distance(model.translator.embed(batch["features"], batch["mask"]), batch["teacher"]))
        model.embedding_loss_weight = 0.0
        plain = float(model.training_loss(batch))
    assert distance > 0 and total == pytest.approx(plain + 0.5 * distance, rel=1e-5)


def test_missing_text_encoder_names_the_key(tmp_path):
    cfg = Config()
    cfg.model.text_encoder = ""
    with pytest.raises(FileNotFoundError, match="model.text_encoder"):
        _text_encoder_path(cfg)
    cfg.model.text_encoder = str(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="embedding_loss_weight"):
        _text_encoder_path(cfg)
