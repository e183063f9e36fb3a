"""Stand-in pretraining pieces (nbs/08_translate.ipynb): sign timings from the synthetic corpus, the video phase."""
import numpy as np
import pytest
import torch

from sonar_thesis.config import Config
from sonar_thesis.config_sections import PRESETS, DataConfig, SynthConfig
from sonar_thesis.io import MANIFEST_COLUMNS, write_tsv
from sonar_thesis.signhiera import build_signhiera
from sonar_thesis.sonar import SonarTokenizer, train_synthetic_tokenizer
from sonar_thesis.synth import META_COLUMNS
from sonar_thesis.datasets import ClipDataset, clip_units, collate_clips
from sonar_thesis.pretrain import SignRecognizer, sign_spans
from sonar_thesis.video_io import write_video


def test_sign_spans_read_the_renderer_timings(tmp_path):
    cfg = Config(synth=SynthConfig(output_dir=str(tmp_path)), data=DataConfig(root=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="dvc repro synth"):
        sign_spans(cfg, "source", "train")
    (tmp_path / "source").mkdir()
    write_tsv(tmp_path / "source" / "synth_meta_train.tsv",
              [{"SENTENCE_NAME": "v_0-1-rgb_front", "signer": "src0", "speed": 1.0, "background": "plain",
                "words": "mix the flour", "word_frames": "0:12 15:27 30:41"}], META_COLUMNS)
    assert sign_spans(cfg, "source", "train") == {"v_0-1-rgb_front": [(0, 12, "mix"), (15, 27, "the"), (30, 41, "flour")]}


def test_video_phase_learns_toy_signs(tmp_path):
    """Two solid-colour 'signs' in one clip: the per-unit word head learns them in a few steps."""
    torch.manual_seed(0)
    red, blue = np.full((64, 64, 3), (220, 40, 40), np.uint8), np.full((64, 64, 3), (30, 60, 200), np.uint8)
    rows = []
    for i in range(2):
        frames = [red] * 32 + [blue] * 32 if i == 0 else [blue] * 32 + [red] * 32
        write_video(tmp_path / f"c{i}.mp4", frames)
        rows.append(dict(id=f"c{i}", video_path=str(tmp_path / f"c{i}.mp4"), n_frames=64, translation="Mix the."))
    write_tsv(tmp_path / "m.tsv", rows, MANIFEST_COLUMNS)
    tok = SonarTokenizer(train_synthetic_tokenizer(["Mix the."] * 10, tmp_path, vocab_size=20))
    ds = ClipDataset(tmp_path / "m.tsv", tok, PRESETS["tiny"], progress=False)
    spans = {"c0": [(0, 32, "mix"), (32, 64, "the")], "c1": [(0, 32, "the"), (32, 64, "mix")]}
    rec = SignRecognizer(build_signhiera("tiny"), PRESETS["tiny"], ["mix", "the"], spans)
    batch = collate_clips([ds[0], ds[1]])
    validate = rec.validator(ds)
    before = validate(rec)
    assert set(before) == {"sign_accuracy", "parameter_accuracy", "val_loss"}
    opt = torch.optim.AdamW(rec.parameters(), lr=2e-3)
    first = float(rec.training_loss(batch)["loss"])
    for _ in range(40):
        opt.zero_grad()
        rec.training_loss(batch)["loss"].backward()
        opt.step()
    after = validate(rec.eval())
    assert after["val_loss"] < 0.3 * before["val_loss"] and float(rec.training_loss(batch)["loss"]) < 0.3 * first
    assert after["sign_accuracy"] > 0.9 and 0.0 <= after["parameter_accuracy"] <= 1.0
    with pytest.raises(KeyError, match="no sign timings"):
        rec.labels("unknown", 4)


def test_video_phase_windows_without_overlap_give_the_same_units(tmp_path):
    """`overlap=0` cuts fewer windows; trimming overlapping windows gives the same per-frame units."""
    frames = [np.full((64, 64, 3), (3 * k, 100, 255 - 3 * k), np.uint8) for k in range(150)]
    write_video(tmp_path / "c.mp4", frames)
    write_tsv(tmp_path / "m.tsv", [dict(id="c", video_path=str(tmp_path / "c.mp4"), n_frames=150,
                                        translation="Mix the.")], MANIFEST_COLUMNS)
    tok = SonarTokenizer(train_synthetic_tokenizer(["Mix the."] * 10, tmp_path, vocab_size=20))
    sizes, sh = PRESETS["tiny"], build_signhiera("tiny").eval()
    units = {}
    for overlap in (0.5, 0.0):
        ds = ClipDataset(tmp_path / "m.tsv", tok, sizes, progress=False, overlap=overlap)
        b = collate_clips([ds[0]])
        units[overlap] = (len(b["frames"]), clip_units(sh, sizes, b["frames"], b["pad"], b["owner"], 1, "trim", overlap)[0])
    assert units[0.5][0] == 4 and units[0.0][0] == 3           # 150 frames: windows of 64 frames, stride 32 vs 64
    # one unit per 4 frames either way: 150 frames -> 38 units (the last window's padded units dropped)
    assert len(units[0.5][1]) == len(units[0.0][1]) == 38
