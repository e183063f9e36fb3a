"""The re-implementations against the reference code's own outputs (shared/golden; semantics and tolerances in its
README): SignHiera with padded clips, the SONAR ASL encoder, and the SONAR text decoder's logits and generations.

The golden checkpoints load through the published-layout loader (`load_published`) into models built from the
golden config.json values, so a loader or config mapping slip fails here too. The preprocessing files of
shared/golden (windows, boxes, crops) belong to 03_video's tests."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch

from conftest import SHARED
from sonar_thesis.checkpoints import load_published
from sonar_thesis.signhiera import SignHiera, SignHieraConfig, padding_mask_from_counts
from sonar_thesis.sonar import SonarTextDecoderConfig
from sonar_thesis.sonar_encoder import SignT5SonarEncoder, SonarEncoderConfig
from sonar_thesis.sonar_text_decoder import SonarTextDecoder

GOLDEN = SHARED / "golden"
if not GOLDEN.is_dir():
    pytest.skip(f"{GOLDEN} is missing: put a copy of the shared/ folder beside the repo (CI has one) to compare "
                "with the reference outputs", allow_module_level=True)

REL_L2 = 1e-5        # README: features, embeddings, logits: relative L2 about 1e-5 or better
MAX_ABS = 1e-5       # ... and max abs about 1e-5 x max |ref|
SCORE_ABS = 1e-5     # beam `score`
STEP_ABS = 1e-4      # `step_scores` are differences of float32 cumulative scores (|cum| ~ 400: ulp 3e-5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: extra threads only contend (the 62-step beam search took 44 s with 2 threads on a busy
    2-core machine, 0.05 s with 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _load(path):
    return torch.load(path, weights_only=True)


def assert_matches(got: torch.Tensor, ref: torch.Tensor, what: str):
    """Relative L2 and max abs (scaled by max |ref|) at the README's tolerances."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != reference {tuple(ref.shape)}"
    got, ref = got.detach().double(), ref.double()
    rel = float((got - ref).norm() / ref.norm())
    mx = float((got - ref).abs().max())
    scale = float(ref.abs().max())
    assert rel <= REL_L2 and mx <= MAX_ABS * scale, \
        f"{what}: rel L2 {rel:.2e} (<= {REL_L2:g}), max abs {mx:.2e} (<= {MAX_ABS * scale:.2e})"


# ---- SignHiera ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signhiera_golden():
    cfg = json.loads((GOLDEN / "signhiera/config.json").read_text())
    args = cfg["constructor_args"]
    ours = {f.name for f in fields(SignHieraConfig)}
    assert set(args) - ours == {"num_classes", "head_dropout", "head_init_scale"}  # the head is Identity
    assert "eps=1e-6" in cfg["norm_layer"]
    model = SignHiera(SignHieraConfig(**{k: v for k, v in args.items() if k in ours}, layer_norm_eps=1e-6)).eval()
    rep = load_published(model, GOLDEN / "signhiera/signhiera_tiny_seed1.pth", verbose=False)
    assert rep.ok and not rep.missing and not rep.unexpected
    assert model.frames_per_unit == cfg["frames_per_mask_unit"] == 2
    return (model, cfg, _load(GOLDEN / "signhiera/inputs.pt"), _load(GOLDEN / "signhiera/reference_features.pt"))


@pytest.mark.parametrize("p", [0, 3, 8])
def test_signhiera_padding_matches_reference(signhiera_golden, p):
    """One clip with p padded frames (copies of the last real frame): features before and after dropping the
    padded units, and the zeroed / visible frames the reference reports."""
    model, cfg, inputs, ref = signhiera_golden
    x, counts = inputs["inputs"][p], inputs["padding"][p]
    T = x.shape[2]
    mask = padding_mask_from_counts(counts, T)                                  # [1, T]
    facts = cfg["padding_facts"][str(p)]
    zeroed = (~model.frame_keep(mask)[0]).nonzero().flatten().tolist()
    assert zeroed == facts["zeroed_frame_indices"]
    visible = [i for i in range(T) if mask[0, i] and i not in zeroed]
    assert visible == facts["padded_frames_that_stay_visible"]
    with torch.no_grad():
        out = model.extract_features(x, mask)
    assert int(out.valid.sum()) == facts["feature_units_kept"]
    assert_matches(out.features[0], ref["features_before_drop"][p], f"SignHiera p={p} features_before_drop")
    assert_matches(torch.cat(out.unpadded()), ref["features"][p], f"SignHiera p={p} features")


def test_signhiera_batch_matches_reference(signhiera_golden):
    """Two clips (0 and 8 padded frames) in one batch: the kept units of both, concatenated."""
    model, _, inputs, ref = signhiera_golden
    x = inputs["batch_input"]
    mask = padding_mask_from_counts(inputs["batch_padding"], x.shape[2])
    with torch.no_grad():
        out = model.extract_features(x, mask)
    assert [f.shape[0] for f in out.unpadded()] == [16, 12]
    assert_matches(torch.cat(out.unpadded()), ref["batch_features"], "SignHiera batch [0, 8] features")


# ---- SONAR ASL encoder -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoder_golden():
    cfg = json.loads((GOLDEN / "encoder/config.json").read_text())
    enc = SignT5SonarEncoder(SonarEncoderConfig(**cfg["project_SonarEncoderConfig_equivalent"])).eval()
    assert enc.cfg.output_dim == cfg["SignT5SonarEncoder_output_dim"]
    rep = load_published(enc, GOLDEN / "encoder/encoder_small_seed1.pth", verbose=False)
    assert rep.ok and not rep.missing and not rep.unexpected
    return enc, _load(GOLDEN / "encoder/inputs.pt"), _load(GOLDEN / "encoder/reference_outputs.pt")


def test_encoder_matches_reference(encoder_golden):
    enc, inp, ref = encoder_golden
    n1 = int(inp["lengths"][1])
    assert inp["attention_mask"][1].sum() == n1 and inp["attention_mask"][0].all()
    with torch.no_grad():
        got = {"e1": enc(inp["x1"]),
               "e2": enc(inp["x2"], inp["attention_mask"]),
               "e2_item1_alone": enc(inp["x2"][1:, :n1]),
               "e2_without_mask": enc(inp["x2"])}
    for k, v in got.items():
        assert_matches(v, ref[k], f"encoder {k}")
    assert not torch.allclose(got["e2"][1], got["e2_without_mask"][1], atol=1e-3)  # the mask matters


# ---- SONAR text decoder ------------------------------------------------------------------------------------------
def _decoder_config() -> tuple[SonarTextDecoderConfig, dict]:
    raw = json.loads((GOLDEN / "decoder/config.json").read_text())
    c, v = raw["SonarTextDecoderConfig"], raw["SonarTextDecoderConfig"]["vocab_info"]
    # what this re-implementation supports: the "basic" family (pre-norm, ReLU, scaled sinusoidal positions)
    assert c["normalize_before"] and c["activation_fn"] == "ReLU" and not c["learned_pos"]
    assert not c["no_scale_embedding"] and not c["layernorm_embedding"] and c["input_dim"] is None
    cfg = SonarTextDecoderConfig(model_dim=c["model_dim"], num_layers=c["num_decoder_layers"],
                                 num_heads=c["num_decoder_attn_heads"], ffn_inner_dim=c["ffn_inner_dim"],
                                 max_seq_len=c["max_seq_len"], vocab_size=v["size"], pad_idx=v["pad_idx"],
                                 unk_idx=v["unk_idx"], bos_idx=v["bos_idx"], eos_idx=v["eos_idx"])
    return cfg, raw


@pytest.fixture(scope="module")
def decoder_golden():
    cfg, raw = _decoder_config()
    decs = {}
    for name, file in (("plain", "decoder_small_seed1.pt"), ("eosrow", "decoder_small_seed1_eosrow.pt")):
        dec = SonarTextDecoder(cfg).eval()
        rep = load_published(dec, GOLDEN / "decoder" / file, verbose=False)
        assert rep.ok and not rep.missing and not rep.unexpected
        decs[name] = dec
    gen = json.loads((GOLDEN / "decoder/reference_generation.json").read_text())
    return (decs, raw, _load(GOLDEN / "decoder/inputs.pt"), _load(GOLDEN / "decoder/reference_logits.pt"), gen)


def test_decoder_logits_match_reference(decoder_golden):
    decs, _, inp, ref, _ = decoder_golden
    assert inp["tokens"][:, :2].tolist() == inp["prompt"].tolist() and int(inp["prompt"][0, 1]) == inp["lang_id"]
    with torch.no_grad():
        assert_matches(decs["plain"](inp["tokens"], inp["embeddings"]), ref["logits"], "decoder logits")
        assert_matches(decs["eosrow"](inp["tokens"], inp["embeddings"]), ref["logits_eosrow"], "decoder logits_eosrow")
    assert_matches(decs["plain"].decoder_frontend.pos_encoder.freqs, ref["pos_encoder_freqs"], "pos_encoder_freqs")


def test_decoder_length_rule(decoder_golden):
    """total ≤ min(max_seq_len, P + model_dim + 128): one embedding, 2-token prompt -> max_seq_len - 3 tokens + EOS."""
    decs, raw, inp, _, _ = decoder_golden
    dec, obs = decs["plain"], raw["length_rule_observed"]
    P, D = inp["prompt"].shape[1], dec.cfg.model_dim
    assert obs["max_source_len"] == D and obs["max_gen_len"] == D + 128
    assert dec.max_total_len(P, D) == obs["effective_max_seq_len"] == dec.cfg.max_seq_len
    capped = dec.beam_search(inp["embeddings"], inp["prompt"], beam_size=2, max_len=10)   # a user cap: 9 + EOS
    assert all(len(h.seq) == 10 and h.seq[-1] == dec.cfg.eos_idx for hs in capped for h in hs)
    with pytest.raises(ValueError, match="max_len"):
        dec.generate(inp["embeddings"], inp["prompt"], max_len=-1)


@pytest.mark.parametrize("key", ["beam5", "beam1_greedy", "eosrow_beam5", "eosrow_beam1_greedy"])
def test_decoder_generation_matches_reference(decoder_golden, key):
    """Every hypothesis, best first: ids exact, score and step scores within the README's tolerance; the same
    ids for each embedding alone; greedy() gives the beam-1 ids."""
    decs, _, inp, _, gen = decoder_golden
    dec = decs["eosrow" if key.startswith("eosrow") else "plain"]
    K = 5 if key.endswith("beam5") else 1
    emb, prompt, eos = inp["embeddings"], inp["prompt"], dec.cfg.eos_idx
    hyps = dec.beam_search(emb, prompt, beam_size=K)
    for item, (ours, refs) in enumerate(zip(hyps, gen[key], strict=True)):
        assert [h.seq for h in ours] == [r["seq"] for r in refs], f"{key} item {item}: ids differ"
        for rank, (h, r) in enumerate(zip(ours, refs)):
            assert abs(h.score - r["score"]) <= SCORE_ABS, f"{key} item {item} hyp {rank}: score {h.score} vs {r['score']}"
            diff = max(abs(a - b) for a, b in zip(h.step_scores, r["step_scores"], strict=True))
            assert diff <= STEP_ABS, f"{key} item {item} hyp {rank}: step_scores differ by {diff:.2e}"
            assert abs(h.score * (prompt.shape[1] + len(h.seq) - 1) - sum(h.step_scores)) < 1e-3
    for i in range(emb.shape[0]):
        alone = dec.beam_search(emb[i:i + 1], prompt[i:i + 1], beam_size=K)[0]
        assert [h.seq for h in alone] == [h.seq for h in hyps[i]], f"{key}: embedding {i} alone differs from the batch"
    best = dec.generate(emb, prompt, beam_size=K)
    assert best == [hs[0].seq[:-1] for hs in hyps] and all(eos not in b for b in best)
    if K == 1:
        assert dec.greedy(emb, prompt) == best
    if key in ("beam5", "beam1_greedy", "eosrow_beam1_greedy"):                      # README: these reach the limit
        assert all(len(hs[0].seq) == dec.cfg.max_seq_len - 2 for hs in hyps)          # 61 + EOS
    else:
        assert all(len(hs[0].seq) < 10 for hs in hyps)                               # eosrow beam 5 ends early
