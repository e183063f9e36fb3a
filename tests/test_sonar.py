"""SONAR ASL encoder / text decoder / tokenizer / generation: checkpoint layouts and search correctness."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sonar_thesis.sign_to_text import SignToText
from sonar_thesis.sonar import (DATA_TAGS, EOS_ID, PAD_ID, SONAR_LANGS, SonarTokenizer, TokenLayout, langs_path,
                                pad_batch, state_dict_shapes, train_synthetic_tokenizer, unique_params)
from sonar_thesis.sonar_encoder import sonar_asl_encoder, sonar_encoder_tiny
from sonar_thesis.sonar_text_decoder import (SonarTextDecoder, decoder_state_from_fairseq2, decoder_state_to_fairseq2,
                                             sonar_text_decoder_basic, sonar_text_decoder_tiny)

SPECS = Path(__file__).resolve().parents[2] / "shared/specs"
CORPUS = ["now you take the brush and paint the fence", "add the flour to the bowl and stir it well",
          "hold the racket with both hands", "this is how you tie a simple knot",
          "the water should be warm but not hot", "then you fold the paper in half"] * 4


def _spec(name: str) -> dict:
    p = SPECS / name
    if not p.exists():
        pytest.skip(f"{p} missing: clone the shared/ folder beside the repo to check published layouts")
    return json.loads(p.read_text())


def _scrambled_decoder(vocab_size: int = 40, seed: int = 0) -> SonarTextDecoder:
    """Tiny decoder with a varied output distribution (random LayerNorms, large </s> row) so beams differ and end."""
    torch.manual_seed(seed)
    d = sonar_text_decoder_tiny(vocab_size=vocab_size).eval()
    with torch.no_grad():
        for n, p in d.named_parameters():
            if "layer_norm" in n:
                p.normal_(0, 1.0)
        d.decoder_frontend.embed.weight[d.cfg.eos_idx] *= 4
    return d


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads; one thread keeps timings steady on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> SonarTokenizer:
    return SonarTokenizer(train_synthetic_tokenizer(CORPUS, tmp_path_factory.mktemp("spm"), vocab_size=120))


# -- published layouts -----------------------------------------------------------------------------
def test_encoder_full_matches_spec():
    spec = _spec("sonar_asl_encoder.json")
    with torch.device("meta"):
        enc = sonar_asl_encoder()
    shapes = state_dict_shapes(enc)
    assert shapes == spec["tensors"] and list(shapes) == list(spec["tensors"])
    assert unique_params(enc) == spec["total_params"]
    assert sum(math.prod(s) for s in shapes.values()) == spec["state_dict_numel_including_tied_duplicates"]
    for group in spec["tied_groups"]:  # one tensor under every tied name
        assert len({id(enc.get_parameter(k)) for k in group}) == 1


def test_decoder_full_matches_spec():
    spec = _spec("sonar_text_decoder_fairseq2.json")
    with torch.device("meta"):
        dec = sonar_text_decoder_basic()
    shapes = state_dict_shapes(dec)
    assert shapes == spec["tensors"] and list(shapes) == list(spec["tensors"])
    assert unique_params(dec) == spec["total_params"]
    assert sum(math.prod(s) for s in shapes.values()) == spec["state_dict_numel_including_tied_duplicates"]
    for group in spec["tied_groups"]:
        assert len({id(dec.get_parameter(k)) for k in group}) == 1
    buffers = {k: list(v.shape) for k, v in dec.named_buffers()}
    for k, shape in spec["non_persistent_buffers_not_in_checkpoint"].items():
        assert buffers[k] == shape and k not in shapes
    cfg = spec["config_basic"]
    assert (dec.cfg.model_dim, dec.cfg.max_seq_len, dec.cfg.vocab_size, dec.cfg.num_layers, dec.cfg.ffn_inner_dim) == (
        cfg["model_dim"], cfg["max_seq_len"], cfg["vocab_size"], cfg["num_decoder_layers"], cfg["ffn_inner_dim"])
    vi = cfg["vocab_info"]
    assert (dec.cfg.unk_idx, dec.cfg.bos_idx, dec.cfg.eos_idx, dec.cfg.pad_idx) == (
        vi["unk_idx"], vi["bos_idx"], vi["eos_idx"], vi["pad_idx"])


def test_token_layout_matches_spec():
    t = _spec("sonar_text_decoder_fairseq2.json")["tokenizer"]
    layout = TokenLayout(256_000)
    assert layout.vocab_size == t["vocab_size"]
    assert list(SONAR_LANGS) == t["card_languages_in_order"]
    assert {f"__{lang}__": layout.lang_id(lang) for lang in SONAR_LANGS} == t["language_token_id_table"]
    assert {tag: layout.data_tag_id(tag) for tag in DATA_TAGS} == t["internal_control_ids"]
    assert t["special_ids"] == {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    assert layout.prompt("eng_Latn") == [3, t["examples"]["__eng_Latn__"]]


# -- tokenizer -------------------------------------------------------------------------------------
def test_tokenizer_roundtrip(tok, tmp_path):
    P = tok.layout.num_pieces
    assert tok.langs == ("eng_Latn",) and tok.vocab_size == len(tok) == P + 1 + 3 + 1
    ids = tok.encode_target("hold the bowl with both hands", "eng_Latn")
    assert ids[:2] == tok.prompt("eng_Latn") == [EOS_ID, P + 1] and ids[-1] == EOS_ID
    assert all(4 <= i <= P for i in ids[2:-1])
    assert tok.decode(ids) == "hold the bowl with both hands"
    assert tok.decode(torch.tensor([PAD_ID, *ids, PAD_ID])) == tok.decode(ids[2:-1])
    assert tok.encode_source("hold it", "eng_Latn")[0] == P + 1
    with pytest.raises(KeyError, match="fra_Latn"):
        tok.encode_target("x", "fra_Latn")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    # the same file with the full card list (no sidecar) has the NLLB arithmetic
    full = SonarTokenizer(tok.model_path, langs=SONAR_LANGS)
    assert full.vocab_size == 1 + P + 202 + 3 and full.lang_id("eng_Latn") == P + 47
    assert langs_path(tok.model_path).read_text().split() == ["eng_Latn"]
    with pytest.raises(FileNotFoundError, match="train_synthetic_tokenizer"):
        SonarTokenizer(tmp_path / "missing.model")


def test_synthetic_tokenizer_is_deterministic_and_handles_tiny_corpora(tmp_path):
    a = train_synthetic_tokenizer(["a b c", "a c b"], tmp_path / "a", vocab_size=5000)
    b = train_synthetic_tokenizer(["a b c", "a c b"], tmp_path / "b", vocab_size=5000)
    assert a.read_bytes() == b.read_bytes()
    assert SonarTokenizer(a).decode(SonarTokenizer(a).encode("a b c")) == "a b c"
    with pytest.raises(ValueError, match="no non-empty"):
        train_synthetic_tokenizer(["", "  "], tmp_path / "c")


# -- encoder ---------------------------------------------------------------------------------------
def test_encoder_mask_semantics():
    torch.manual_seed(0)
    enc = sonar_encoder_tiny(feature_dim=16).eval()
    x = torch.randn(3, 10, 16)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        emb = enc(x, mask)
        assert emb.shape == (3, 256)
        assert torch.allclose(emb[1], enc(x[1:2, :6])[0], atol=1e-5)
        assert torch.allclose(enc(x, mask.bool()), emb)
        assert torch.allclose(enc(x)[0], emb[0], atol=1e-6)
    bad = mask.clone()
    bad[2] = 0
    with pytest.raises(ValueError, match="no valid frame"):
        enc(x, bad)
    with pytest.raises(ValueError, match=r"\[B, N, 16\]"):
        enc(torch.randn(1, 4, 8))


# -- decoder ---------------------------------------------------------------------------------------
def test_kv_cache_equals_full_forward():
    dec = _scrambled_decoder()
    e, toks = torch.randn(4, 256), torch.randint(0, 40, (4, 11))
    with torch.no_grad():
        full = dec(toks, e)
        cache = dec.new_cache(e)
        parts = [dec(toks[:, :3], cache=cache), dec(toks[:, 3:5], cache=cache)]  # multi-token chunk after a prefix
        parts += [dec(toks[:, t:t + 1], cache=cache) for t in range(5, 11)]
    assert cache.step == 11
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def _reference_beam(dec, emb, prompt, K, max_len, length_penalty=1.0):
    """fairseq2's beam search written plainly: one item, no cache, full prefix re-run every step."""
    eos, pad, P = dec.cfg.eos_idx, dec.cfg.pad_idx, len(prompt)
    max_total, min_total = min(dec.cfg.max_seq_len, P + max_len), min(dec.cfg.max_seq_len, P + 1)
    with torch.no_grad():
        lp = dec(torch.tensor([prompt]), emb[None]).float().log_softmax(-1)[0]
        beams = [(list(prompt), float(sum(lp[t, prompt[t + 1]] for t in range(P - 1))))]
        finished = []
        for step in range(P, max_total):
            cands = []
            for seq, score in beams:
                lp = dec(torch.tensor([seq]), emb[None])[0, -1].float().log_softmax(-1)
                if step == max_total - 1:
                    lp = torch.where(torch.arange(lp.numel()) == eos, lp, -torch.inf)
                else:
                    lp[pad] = -torch.inf
                    if step < min_total - 1:
                        lp[eos] = -torch.inf
                cands += [(score + float(lp[v]), seq, v) for v in range(lp.numel())]
            cands = sorted(cands, key=lambda c: -c[0])[:2 * K]
            for score, seq, v in cands[:K]:
                if v == eos and math.isfinite(score):
                    finished.append((score / step ** length_penalty, seq[P:]))
                    if len(finished) == K:
                        return max(finished, key=lambda f: f[0])[1]
            beams = [(seq + [v], score) for score, seq, v in cands if v != eos][:K]
    return max(finished, key=lambda f: f[0])[1]


def test_beam_search_matches_reference_and_greedy():
    dec = _scrambled_decoder()
    torch.manual_seed(1)
    e, prompt = torch.randn(6, 256), [EOS_ID, 36]
    beams = dec.generate(e, prompt, beam_size=3, max_len=12)
    lengths = {len(h) for h in beams}
    assert len(lengths) > 1, "fixture should give hypotheses of different lengths"
    assert beams == [_reference_beam(dec, e[i], prompt, 3, 12) for i in range(6)]
    assert beams == [dec.generate(e[i:i + 1], prompt, beam_size=3, max_len=12)[0] for i in range(6)]
    greedy = dec.greedy(e, prompt, max_len=12)
    assert dec.generate(e, prompt, beam_size=1, max_len=12) == greedy
    assert greedy == [_reference_beam(dec, e[i], prompt, 1, 12) for i in range(6)]
    assert all(len(h) <= 11 and EOS_ID not in h and dec.cfg.pad_idx not in h for h in beams + greedy)
    per_item = dec.generate(e[:2], torch.tensor([[EOS_ID, 36], [EOS_ID, 37]]), beam_size=3, max_len=12)
    assert per_item[0] == beams[0]
    with pytest.raises(ValueError, match="no room"):
        dec.generate(e, list(range(4, 4 + 128)), max_len=5)


def test_decoder_checkpoint_roundtrip_and_meta_loading(tmp_path):
    dec = _scrambled_decoder()
    fs2 = decoder_state_to_fairseq2(dec.state_dict())
    assert "final_proj.weight" in fs2 and "decoder_frontend.pos_encoder.freqs" not in fs2
    torch.save({"model": {f"module.{k}": v for k, v in fs2.items() if k != "final_proj.weight"}}, tmp_path / "d.pt")
    sd = decoder_state_from_fairseq2(torch.load(tmp_path / "d.pt", weights_only=True))
    with torch.device("meta"):
        meta = sonar_text_decoder_tiny(vocab_size=40)
    meta.load_state_dict(sd, strict=True, assign=True)  # tie and position table restored on first use
    meta.eval()
    assert meta.final_proj.weight is meta.decoder_frontend.embed.weight
    e, toks = torch.randn(2, 256), torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(meta(toks, e), dec(toks, e))
    with torch.device("meta"):
        empty = sonar_text_decoder_tiny(vocab_size=40)
    empty.to_empty(device="cpu")
    assert empty.final_proj.weight is empty.decoder_frontend.embed.weight
    with pytest.raises(KeyError, match="FAIRSEQ2_DECODER_KEY_MAP"):
        decoder_state_from_fairseq2({"model": {**fs2, "encoder.x": torch.zeros(1)}})


# -- bundle ----------------------------------------------------------------------------------------
def test_sign_to_text_overfits_and_translates(tok):
    torch.manual_seed(0)
    model = SignToText(sonar_encoder_tiny(feature_dim=32), sonar_text_decoder_tiny(tok.vocab_size, dropout_p=0.0))
    feats = torch.randn(2, 6, 32)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    tgt = pad_batch([tok.encode_target(CORPUS[0]), tok.encode_target(CORPUS[2])])
    assert tgt[1, -1] == PAD_ID
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model.loss(feats, mask, tgt, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    out = model.translate(feats, mask, tok, "eng_Latn", beam_size=2, max_len=20)
    assert model.training and len(out) == 2 and all(isinstance(s, str) for s in out)
    with pytest.raises(ValueError, match="output_dim"):
        SignToText(sonar_encoder_tiny(), sonar_text_decoder_tiny(10, model_dim=128, num_heads=4))
