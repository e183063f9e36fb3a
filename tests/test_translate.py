"""Translation pieces for the full-size real path (nbs/08_translate.ipynb): the tokenizer must fit the decoder,
and long clips are streamed through SignHiera with the same features as the all-at-once path."""
from pathlib import Path

import numpy as np
import pytest
import torch

from how2sign_layout import SENTENCES, write_tokenizer
from sonar_thesis.config import Config
from sonar_thesis.config_sections import PRESETS, DataConfig
from sonar_thesis.extract import merge_windows
from sonar_thesis.signhiera import build_signhiera
from sonar_thesis.sonar import SonarTokenizer, langs_path
from sonar_thesis.assemble import check_tokenizer_fits, decoder_vocab_rows, load_pretrained
from sonar_thesis.datasets import clip_windows, normalize_windows
from sonar_thesis.translate import stream_features
from sonar_thesis.video_io import write_video


@pytest.fixture(scope="module")
def nllb_tokenizer(tmp_path_factory) -> Path:
    """A SentencePiece model of 256,000 pieces in the NLLB layout (no .langs.txt: the 202 SONAR languages)."""
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "sentencepiece.source.256000.model", SENTENCES, 256_000)


def test_tokenizer_must_fit_the_decoder_sonar_numbers(nllb_tokenizer, tmp_path):
    """sonar preset: 1 + 256,000 + 202 + 3 = 256,206 ids fit the decoder; a tokenizer with other languages does not,
    and load_pretrained says so (both files, both numbers, the fix) before building any full-size model."""
    dec = tmp_path / "sonar_text_decoder.pt"
    torch.save({"model": {"decoder_frontend.embed.weight": torch.empty(256_206, 1)}}, dec)   # only the shape matters
    assert decoder_vocab_rows(dec) == 256_206
    tok = SonarTokenizer(nllb_tokenizer)
    assert len(tok) == 256_206
    check_tokenizer_fits(tok, dec)                                          # fits: silent

    wrong = tmp_path / "wrong.model"                                        # the same pieces, one language only
    wrong.write_bytes(nllb_tokenizer.read_bytes())
    langs_path(wrong).write_text("eng_Latn\n")
    cfg = Config(dataset="how2sign", preset="sonar", data=DataConfig(root=str(tmp_path / "how2sign")))
    for what in ("signhiera", "encoder"):                                   # never opened: the check comes first
        (tmp_path / what).write_bytes(b"")
        setattr(cfg.model, what, str(tmp_path / what))
    cfg.model.decoder, cfg.model.tokenizer = str(dec), str(wrong)
    with pytest.raises(ValueError) as e:
        load_pretrained(cfg)
    msg = str(e.value)
    assert str(wrong) in msg and str(dec) in msg
    assert "1 + 256,000 pieces + 1 languages (from wrong.langs.txt) + 3 tags = 256,005 token ids" in msg
    assert "has 256,206 embedding rows" in msg and "sonar-thesis download --model sonar_decoder" in msg
    assert "\n" not in msg


def test_streamed_features_equal_the_all_at_once_path(tmp_path):
    """A 5-window uncropped clip: streaming (cropped per batch, any batch size) gives the stacked path's features."""
    rng = np.random.default_rng(1)
    base = [rng.integers(0, 255, (6, 8, 3)).astype(np.uint8) for _ in range(4)]
    frames = [np.kron(np.roll(base[i // 50], i % 8, axis=1), np.ones((12, 12, 1), np.uint8)) for i in range(190)]
    clip = write_video(tmp_path / "clip.mp4", frames, fps=25)                        # 72×96, 7.6 s
    sizes, box = PRESETS["tiny"], (10, 2, 80, 72)                                     # a 70-px box, resized to 64
    torch.manual_seed(0)
    sh = build_signhiera("tiny").eval()
    w, p = clip_windows(clip, sizes, box)
    with torch.inference_mode():
        out = sh.extract_features(normalize_windows(torch.from_numpy(w), sizes), torch.from_numpy(p))
    old = merge_windows([f[v] for f, v in zip(out.features, out.valid)])
    assert len(w) == 5 and old.shape == (5 * 16, 256)              # the last window: 62 frames → 31 slots → 16 units
    for b in (1, 2, 8):
        assert torch.equal(stream_features(clip, sh, sizes, box, batch_windows=b), old), b
    # max_units: no batch after the one that reaches it (2 + 2 windows = 64 units of 80)
    assert torch.equal(stream_features(clip, sh, sizes, box, batch_windows=2, max_units=40), old[:64])


@pytest.fixture(scope="module")
def tiny_published(tmp_path_factory):
    """Random tiny checkpoints in the published names/layouts, and a params.yaml that points at them."""
    from how2sign_layout import write_published_checkpoints
    d = tmp_path_factory.mktemp("published")
    paths = write_published_checkpoints(d, "tiny", SENTENCES, text_encoder=False)
    params = d / "params.yaml"
    params.write_text("model:\n" + "".join(f"  {k}: {paths[k]}\n" for k in ("signhiera", "encoder", "decoder", "tokenizer"))
                      + "  max_len: 12\n  beam_size: 2\n")
    return params


def test_translate_command_many_videos_a_manifest_and_a_tsv(tiny_published, tmp_path):
    """Models load once; `id<TAB>text` per video; a missing video is an error line, the rest go on; --output TSV."""
    import subprocess
    from conftest import VENV_BIN
    from sonar_thesis.extract_loader import write_test_clip
    from sonar_thesis.io import read_tsv, write_tsv
    for name, n, seed in (("a", 40, 0), ("b", 90, 1), ("c", 70, 2)):
        write_test_clip(tmp_path / "clips" / f"{name}.mp4", n, 64, seed=seed)          # 64×64 signer crops
    m = write_tsv(tmp_path / "clips" / "m.tsv", [{"id": "c", "video_path": "c.mp4"}, {"id": "gone", "video_path": "nowhere.mp4"}],
                  ("id", "video_path"))
    exe, common = str(VENV_BIN / "sonar-thesis"), ["--no-crop", "--device", "cpu", "--params", str(tiny_published)]
    run = lambda *a: subprocess.run([exe, "translate", *a, *common], capture_output=True, text=True, timeout=300)
    r = run(str(tmp_path / "clips" / "a.mp4"), str(tmp_path / "clips" / "b.mp4"), "--manifest", str(m),
            "--output", str(tmp_path / "out.tsv"))
    assert r.returncode == 1, r.stderr
    lines = [l.split("\t") for l in r.stdout.splitlines()]
    assert [l[0] for l in lines] == ["a", "b", "c"] and all(len(l) == 2 for l in lines)
    err = r.stderr.splitlines()
    assert f"error: {tmp_path / 'clips' / 'nowhere.mp4'}: no such video file" in err
    assert err[-1] == "error: 1 of 4 videos could not be translated (error lines above)"
    rows = read_tsv(tmp_path / "out.tsv")
    assert [x["id"] for x in rows] == ["a", "b", "c", "gone"] and rows[3]["text"] == "" and "no such" in rows[3]["error"]
    assert [x["text"] for x in rows[:3]] == [l[1] for l in lines] and all(float(x["t_total"]) > 0 for x in rows[:3])
    one = run(str(tmp_path / "clips" / "a.mp4"))                                        # one video: just the sentence
    assert one.returncode == 0 and one.stdout == lines[0][1] + "\n", one.stderr
