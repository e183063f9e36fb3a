"""Stage-1/2 freezing: frozen parameters are bit-identical after training steps; trainable ones move; stage 2's
embedding loss."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sonar_thesis.config import Config, load_config
from sonar_thesis.config_sections import PRESETS, HardwareConfig, LoggingConfig
from sonar_thesis.finetune import stage1_model, stage2_model
from sonar_thesis.io import MANIFEST_COLUMNS, write_tsv
from sonar_thesis.signhiera import build_signhiera
from sonar_thesis.sonar import SonarTokenizer, train_synthetic_tokenizer
from sonar_thesis.trainer import train
from sonar_thesis.assemble import Pretrained, _text_encoder_path, build_text_encoder, build_translator
from sonar_thesis.datasets import ClipDataset, FeatureList, attach_teacher, collate_clips, collate_features
from sonar_thesis.objectives import FeatureModel, embedding_distance
from sonar_thesis.video_io import write_video


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
    cfg.stage1.train_encoder = False                                      # the guide's stage 1 (configs/how2sign.yaml)
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


# ---------------------------------------------------------------- stage 2 on one 24 GB GPU (10_finetune)
def _feature_items(tok, n=4):
    return [dict(features=torch.randn(7 + i, 256), tgt=tok.encode_target(t), id=str(i), reference=t)
            for i, t in enumerate(["Mix the flour.", "Cut the paper."] * (n // 2))]


@pytest.mark.parametrize("optimizer", ["adamw8bit", "adafactor", "adamw"])
def test_stage2_frozen_embeddings_stay_frozen_and_the_optimizer_steps(tmp_path, optimizer):
    if optimizer == "adamw8bit":
        pytest.importorskip("bitsandbytes")
    cfg = Config()
    cfg.stage2.optimizer = optimizer
    cfg.stage2.freeze_embeddings = True
    h2s = load_config(Path(__file__).resolve().parents[1] / "params.yaml",
                      Path(__file__).resolve().parents[1] / "configs" / "how2sign.yaml")
    assert h2s.stage2.freeze_embeddings                                   # the sonar setting (262 M parameters)
    models = _models(tmp_path)
    model = stage2_model(models, cfg)
    dec = model.translator.decoder
    before = _snapshot(model)
    torch.set_num_threads(1)
    stage = replace(cfg.stage2, epochs=2, batch_size=2, learning_rate=1e-2)
    training = replace(cfg.training, optimizer=cfg.stage2.optimizer, warmup_steps=0, eval_every_n_steps=1000)
    res = train(model, _feature_items(models.tokenizer), tmp_path / "run", stage=stage, training=training,
                hardware=HardwareConfig(device="cpu", num_workers=0), logging_cfg=LoggingConfig(),
                collate_fn=collate_features, lengths=[1] * 4, progress=False, dvclive=False)
    assert res.steps == 4
    emb = "translator.decoder.decoder_frontend.embed.weight"
    assert torch.equal(dec.decoder_frontend.embed.weight, before[emb]) and dec.final_proj.weight is dec.decoder_frontend.embed.weight
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("translator.decoder.decoder.layers.") for n in moved)
    assert any(n.startswith("translator.encoder.") for n in moved)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)       # the frozen table is not in last.pt
    assert emb not in ck["model"] and "translator.decoder.final_proj.weight" not in ck["model"]
    assert ck["frozen"]["keys"] == [emb, "translator.decoder.final_proj.weight"]


def test_stage2_gradient_checkpointing_reaches_encoder_and_decoder(tmp_path):
    from sonar_thesis.train_setup import set_gradient_checkpointing
    models = _models(tmp_path)
    model = stage2_model(models, Config()).train()
    batch = collate_features(_feature_items(models.tokenizer))
    grads = []
    for on in (False, True):
        switched = set_gradient_checkpointing(model, on)
        assert switched == ["translator.encoder", "translator.decoder"]
        assert model.translator.decoder.gradient_checkpointing is on and model.translator.encoder.is_activation_checkpointing is on
        model.zero_grad()
        torch.manual_seed(1)
        model.training_loss(batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and all(torch.allclose(grads[0][n], grads[1][n], atol=1e-5) for n in grads[0])


def test_stage2_memory_keys_are_validated():
    from sonar_thesis.config_checks import ConfigError, from_dict
    from sonar_thesis.config_sections import Stage2Config, TrainingConfig
    with pytest.raises(ConfigError, match="stage2.optimizer"):
        from_dict(Config, {"stage2": {"optimizer": "sgd"}})
    with pytest.raises(ConfigError, match="stage2.freeze_embeddings"):
        from_dict(Config, {"stage2": {"freeze_embeddings": "yes"}})
    with pytest.raises(ConfigError, match="training.optimizer"):
        TrainingConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="stage2.learning_rate"):
        Stage2Config(learning_rate=0.0)
    cfg = from_dict(Config, {"stage2": {"optimizer": "adafactor", "freeze_embeddings": False}})
    assert (cfg.stage2.optimizer, cfg.stage2.freeze_embeddings, cfg.training.optimizer) == ("adafactor", False, "adamw")


def test_frozen_models_are_recorded_not_rewritten(tmp_path):
    from sonar_thesis.finetune import save_trained, stage_files, system_paths
    from sonar_thesis.io import write_json
    models = _models(tmp_path)
    tr = models.translator
    cfg = Config()
    cfg.stage2.output_dir = str(tmp_path / "stage2")
    cfg.stage2.freeze_decoder = True
    stage2_model(models, cfg)                                          # freezes the decoder
    files = save_trained(cfg.stage2.output_dir, dict(encoder=tr.encoder, decoder=tr.decoder),
                         dict(encoder="pre/enc.pth", decoder="pre/dec.pt"))
    write_json(tmp_path / "stage2" / "stage2.json", dict(files=files))
    assert (tmp_path / "stage2" / "sonar_encoder.pth").is_file() and not (tmp_path / "stage2" / "sonar_text_decoder.pt").exists()
    assert stage_files(tmp_path / "stage2")["decoder"] == "pre/dec.pt"
    _, enc, dec = system_paths(cfg, "stage2")                         # the evaluation loads the recorded file
    assert enc == str(tmp_path / "stage2" / "sonar_encoder.pth") and dec == "pre/dec.pt"


def test_cli_checkpoint_folder_uses_recorded_files(tmp_path):
    from sonar_thesis.cli import _system_files
    from sonar_thesis.io import write_json
    (tmp_path / "sonar_encoder.pth").write_bytes(b"x")                 # the encoder stage 1 trained
    write_json(tmp_path / "stage1.json", dict(files=dict(signhiera=str(tmp_path / "signhiera.pth"),
                                                         encoder=str(tmp_path / "sonar_encoder.pth"),
                                                         decoder="models/pretrained/sonar_text_decoder.pt")))
    files = _system_files(Config(), tmp_path)
    assert files["encoder"] == str(tmp_path / "sonar_encoder.pth")
    assert files["decoder"] == "models/pretrained/sonar_text_decoder.pt"   # frozen in stage 1: the recorded file


def test_cli_and_dvc_stage_start_stage2_from_the_same_inputs(tmp_path, monkeypatch):
    """`sonar-thesis finetune --stage 2` and the stage2 / ablation DVC stages (10_finetune's stage cell) call
    run_stage2 with the same features, output folder and starting weights: one function decides them."""
    import json

    from typer.testing import CliRunner

    import sonar_thesis.finetune as ft
    from sonar_thesis.cli import app
    from sonar_thesis.config import load_config
    root = Path(__file__).resolve().parents[1]
    calls = []

    def fake_run_stage2(cfg, features_root, out_dir, start_from=None, progress=True):
        calls.append((str(features_root), str(out_dir), None if start_from is None else str(start_from)))
        return dict(best_bleu_4_target_val=1.0, best_step=1)

    monkeypatch.setattr(ft, "run_stage2", fake_run_stage2)
    params = tmp_path / "params.yaml"
    params.write_text((root / "params.yaml").read_text())
    r = CliRunner().invoke(app, ["finetune", "--stage", "2", "--config", str(params), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    nb = json.loads((root / "nbs" / "10_finetune.ipynb").read_text())
    cell = next(s for s in ("".join(c["source"]) for c in nb["cells"]) if s.startswith("#| stage") and "run_stage2(" in s)
    for stage in ("stage2", "ablation"):          # the DVC stages run this cell (sonar_thesis.stage)
        exec(cell, {**vars(ft), "params_path": str(params), "stage": stage, "load_config": load_config})
    cfg = load_config(params)
    assert calls[0] == calls[1] == ("data/features/stage1", cfg.stage2.output_dir, cfg.stage1.output_dir)
    assert calls[2] == ("data/features/pretrained", ft.ABLATION_DIR, None)
