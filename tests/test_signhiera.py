"""SignHiera: checkpoint compatibility with the published layout, padding, freezing, checkpointing, determinism."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sonar_thesis.signhiera import (
    HIERA_BASE_128x224, SIGNHIERA_TINY, SignHieraConfig, build_signhiera, drop_padded, hiera_base_128x224,
    padding_mask_from_counts, reroll, signhiera_tiny, unroll,
)

SPEC_PATH = Path(__file__).parents[1].parent / "shared/specs/signhiera_base_128x224.json"


@pytest.fixture(scope="module")
def spec() -> dict:
    if not SPEC_PATH.exists():
        pytest.skip(f"reference spec {SPEC_PATH} missing: clone the shared/ folder beside the repo to run this check")
    return json.loads(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def base_meta():
    with torch.device("meta"):
        return hiera_base_128x224()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return signhiera_tiny().eval()


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 64, 64)


# ---- published layout ------------------------------------------------------------------------------
def test_base_state_dict_matches_spec(spec, base_meta):
    got = [(k, list(v.shape)) for k, v in base_meta.state_dict().items()]
    want = [(k, list(v)) for k, v in spec["tensors"].items()]
    assert dict(got) == dict(want), {"missing": sorted(set(dict(want)) - set(dict(got))),
                                     "extra": sorted(set(dict(got)) - set(dict(want)))}
    assert got == want  # same order too
    assert len(got) == spec["num_tensors"] == 300
    assert base_meta.num_params() == sum(math.prod(s) for _, s in want) == spec["total_params"] == 50_790_336


def test_base_checkpoint_subset(spec, base_meta):
    """What the published checkpoint must supply: everything except the expected-missing keys (norm.*, head.*)."""
    sd = base_meta.state_dict()
    missing = set(spec["checkpoint"]["expected_missing"])
    assert not any(k.startswith("head") for k in sd)
    from_ckpt = {k: v for k, v in sd.items() if k not in missing}
    assert len(from_ckpt) == spec["checkpoint"]["keys_expected_from_checkpoint"]
    assert sum(v.numel() for v in from_ckpt.values()) == spec["checkpoint"]["params_expected_from_checkpoint"]


def test_base_config_and_blocks_match_spec(spec, base_meta):
    mc, cfg = spec["model_config"], HIERA_BASE_128x224
    for name in ("input_size", "in_chans", "embed_dim", "num_heads", "stages", "q_pool", "q_stride", "mask_unit_size",
                 "mask_unit_attn", "dim_mul", "head_mul", "patch_kernel", "patch_stride", "patch_padding",
                 "mlp_ratio", "layer_norm_eps", "sep_pos_embed"):
        got = getattr(cfg, name)
        assert (list(got) if isinstance(got, tuple) else got) == mc[name], name
    assert list(cfg.tokens_spatial_shape) == mc["tokens_spatial_shape"]
    assert list(cfg.mask_spatial_shape) == mc["mask_spatial_shape"]
    assert cfg.stage_ends == mc["stage_ends"] and cfg.q_pool_blocks == mc["q_pool_blocks"]
    assert base_meta.feature_dim == mc["feature_dim"] and base_meta.num_frames == 128 and base_meta.feature_frames == 64
    assert cfg.block_specs() == spec["block_config"]
    for b, blk in zip(spec["block_config"], base_meta.blocks, strict=True):  # the built modules follow the table
        a = blk.attn
        assert (a.dim, a.dim_out, a.heads, a.q_stride, a.window_size, a.use_mask_unit_attn, blk.proj is not None) == (
            b["dim"], b["dim_out"], b["heads"], b["q_stride"], b["window_size"], b["use_mask_unit_attn"], b["has_proj"])


# ---- presets and config --------------------------------------------------------------------------------
def test_presets(tiny):
    assert (tiny.feature_dim, tiny.num_frames, tiny.feature_frames) == (256, 32, 16)
    assert SIGNHIERA_TINY.tokens_spatial_shape == (16, 8, 8) and SIGNHIERA_TINY.mask_spatial_shape == (16, 1, 1)
    assert tiny.num_params() == 1_200_928
    assert build_signhiera("tiny", patch_stride=(2, 4, 4)).config.tokens_spatial_shape == (16, 16, 16)
    with torch.device("meta"):
        assert build_signhiera("sonar").num_params() == 50_790_336
        assert build_signhiera("tiny", drop_path_rate=0.1).config.drop_path_rate == 0.1
    with pytest.raises(ValueError, match="unknown SignHiera preset"):
        build_signhiera("large")
    assert SignHieraConfig(**{"input_size": [32, 64, 64], "stages": [1, 1, 2, 1]}).input_size == (32, 64, 64)
    with pytest.raises(ValueError, match="mask_unit_size"):
        SignHieraConfig(mask_unit_size=(1, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        SignHieraConfig(input_size=(32, 48, 48))


def test_unroll_reroll_roundtrip():
    x = torch.randn(2, 16 * 16 * 16, 3)
    strides = [(1, 2, 2)] * 3
    assert torch.equal(reroll(unroll(x, (16, 16, 16), strides), (16, 2, 2), strides).reshape(2, -1, 3), x)


def _windowed_blocks(model, x, size, strides):
    """Token map [1, *size, 32] through the unroll and the model's three windowed blocks."""
    y = unroll(x.reshape(1, -1, 32), size, strides)
    for blk in model.blocks[:3]:
        y = blk(y)
    return y


def test_mask_unit_attention_is_local():
    """Windowed blocks (0-2 of the tiny topology) never mix mask units; the first global block does.
    Checked at Base's patch stride 4 (token grid 16x16x16: 2x2 mask units per frame)."""
    fine = build_signhiera("tiny", patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3)).eval()
    size, strides = (16, 16, 16), fine.unroll_strides
    torch.manual_seed(2)
    x0 = torch.randn(1, 16, 16, 16, 32)
    x1 = x0.clone()
    x1[0, 5, 8:16, 0:8] += 1.0  # one mask unit: t=5, second row, first column of 8x8 cells
    with torch.no_grad():
        ys = [_windowed_blocks(fine, xr, size, strides) for xr in (x0, x1)]
        m0, m1 = (reroll(y, (16, 2, 2), strides[2:]) for y in ys)  # [1, 16, 4, 4, 128]
        changed = (m0 - m1).abs().amax(-1)[0] > 0
        assert changed.sum() == 4 and changed[5, 2:4, 0:2].all()  # the 2x2 pooled cells of that unit, nothing else
        g0, g1 = fine.blocks[3](ys[0]), fine.blocks[3](ys[1])       # global: everything moves
        assert ((g0 - g1).abs().amax(-1) > 0).all()


def test_tiny_windows_are_frames(tiny):
    """The tiny preset (token grid 16x8x8): one mask unit per temporal token, so windowed blocks mix only within a frame."""
    size, strides = (16, 8, 8), tiny.unroll_strides
    torch.manual_seed(3)
    x0 = torch.randn(1, *size, 32)
    x1 = x0.clone()
    x1[0, 5, 3, 4] += 1.0  # one token of frame 5
    with torch.no_grad():
        ys = [_windowed_blocks(tiny, xr, size, strides) for xr in (x0, x1)]
        m0, m1 = (reroll(y, (16, 1, 1), strides[2:]) for y in ys)  # [1, 16, 2, 2, 128]
        changed = (m0 - m1).abs().amax(-1)[0] > 0                    # [16, 2, 2]
        assert changed[5].all() and changed.sum() == 4               # all of frame 5, no other frame
        g0, g1 = tiny.blocks[3](ys[0]), tiny.blocks[3](ys[1])
        assert ((g0 - g1).abs().amax(-1) > 0).all()


# ---- padding -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_real", [1, 20, 21, 31])
def test_padding_equals_cut_clip(tiny, clip, n_real):
    """Padded as the pipeline pads (copies of the last real frame), the valid features equal those of the clip cut
    to its valid 2-frame units (the real frames + the visible copy when the count is odd), whatever the zeroed
    frames hold; the unpadded sample of the batch is unaffected."""
    p = 32 - n_real
    pm = padding_mask_from_counts([p, 0], 32)
    padded = clip.clone()
    padded[0, :, n_real:] = clip[0, :, n_real - 1: n_real]      # the last real frame, repeated
    n_units, kept = 16 - p // 2, 32 - 2 * (p // 2)                # the reference masks floor(p/2) whole units
    junk = padded.clone()
    junk[0, :, kept:] = torch.randn_like(junk[0, :, kept:]) * 10
    with torch.no_grad():
        a = tiny.extract_features(padded, pm)
        b = tiny.extract_features(junk, pm)
        cut = tiny.extract_features(padded[:1, :, :kept])
        alone = tiny.extract_features(clip[1:])
        ea, eb, ecut = tiny(padded, pm)[0], tiny(junk, pm)[0], tiny(padded[:1, :, :kept])[0]
    assert tiny.frame_keep(pm)[0].tolist() == [True] * kept + [False] * (32 - kept) and tiny.frame_keep(pm)[1].all()
    assert a.valid[0].tolist() == [True] * n_units + [False] * (16 - n_units) and a.valid[1].all()
    assert cut.features.shape == (1, n_units, 256) and cut.valid.all()
    torch.testing.assert_close(a.features[0, :n_units], b.features[0, :n_units], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.features[0, :n_units], cut.features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.features[1], alone.features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ea, eb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ea, ecut, atol=1e-5, rtol=1e-5)
    lst = drop_padded(*a)
    assert [t.shape for t in lst] == [(n_units, 256), (16, 256)] and torch.equal(lst[0], a.features[0, :n_units])
    if p % 2:                                                     # odd: the first padded frame stays visible
        other = padded.clone()
        other[0, :, n_real] = torch.randn_like(other[0, :, n_real]) * 10
        with torch.no_grad():
            c = tiny.extract_features(other, pm)
        assert not torch.allclose(c.features[0, n_units - 1], a.features[0, n_units - 1], atol=1e-3)


def test_padding_mixed_counts_in_a_batch(tiny):
    """Clips with different padding counts in one batch give the features each gives alone."""
    torch.manual_seed(5)
    counts = [0, 3, 8, 11, 1, 31]
    x = torch.randn(len(counts), 3, 32, 64, 64)
    for i, p in enumerate(counts):
        if p:
            x[i, :, 32 - p:] = x[i, :, 31 - p: 32 - p]
    pm = padding_mask_from_counts(counts, 32)
    with torch.no_grad():
        batch = tiny.extract_features(x, pm)
        alone = [tiny.extract_features(x[i: i + 1], pm[i: i + 1]) for i in range(len(counts))]
    assert batch.valid.sum(1).tolist() == [16 - p // 2 for p in counts]
    for got, one in zip(batch.unpadded(), alone):
        torch.testing.assert_close(got, one.unpadded()[0], atol=1e-5, rtol=1e-5)


def test_padding_mask_from_counts():
    m = padding_mask_from_counts(torch.tensor([0, 3, 32]), 32)
    assert m.shape == (3, 32) and m.sum(1).tolist() == [0, 3, 32] and m[1, 29:].all() and not m[1, :29].any()
    with pytest.raises(ValueError, match=r"\[0, 32\]"):
        padding_mask_from_counts([33], 32)


def test_padding_edge_cases(tiny, clip):
    with torch.no_grad():
        plain = tiny.extract_features(clip)
        nopad = tiny.extract_features(clip, torch.zeros(2, 32, dtype=torch.bool))
        allpad = tiny.extract_features(clip, torch.tensor([[True] * 32, [False] * 32]))
        emb = tiny(clip, torch.tensor([[True] * 32, [False] * 32]))
    assert torch.equal(plain.features, nopad.features) and plain.valid.all()
    assert not allpad.valid[0].any() and allpad.valid[1].all()
    assert torch.isfinite(allpad.features).all() and torch.isfinite(emb).all()
    torch.testing.assert_close(allpad.features[1], plain.features[1], atol=1e-5, rtol=1e-5)
    hole = torch.zeros(2, 32, dtype=torch.bool)
    hole[:, 6:10] = True  # a gap in the middle: units 3, 4 flagged
    assert tiny.valid_units(hole)[0].tolist() == [True] * 3 + [False] * 2 + [True] * 11


def test_input_errors(tiny, clip):
    with pytest.raises(TypeError, match="bool"):
        tiny(clip, torch.zeros(2, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        tiny(clip, torch.zeros(2, 31, dtype=torch.bool))
    with pytest.raises(ValueError, match="crop/resize"):
        tiny(torch.randn(1, 3, 32, 32, 32))
    with pytest.raises(ValueError, match="at most 32"):
        tiny(torch.randn(1, 3, 40, 64, 64))
    with pytest.raises(ValueError, match="disagree"):
        drop_padded(torch.zeros(2, 16, 8), torch.ones(2, 15, dtype=torch.bool))


# ---- training switches ---------------------------------------------------------------------------------
@pytest.mark.parametrize("frac,n_blocks", [(0.0, 0), (0.2, 1), (0.5, 2), (0.6, 3), (1.0, 5)])
def test_freeze_fraction(frac, n_blocks):
    m = signhiera_tiny()
    m.set_freeze_fraction(0.8)  # start from a different state: the call must also unfreeze
    frozen = m.set_freeze_fraction(frac)
    prefixes = ("pos_embed", "patch_embed.", *(f"blocks.{i}." for i in range(n_blocks))) if frac else ()
    want = [n for n, _ in m.named_parameters() if n.startswith(prefixes)]
    assert frozen == want
    assert {n for n, p in m.named_parameters() if not p.requires_grad} == set(want)
    m.train()
    m(torch.randn(1, 3, 32, 64, 64)).sum().backward()
    for n, p in m.named_parameters():
        assert (p.grad is None) == (n in want), n  # frozen params get no gradient, trainable ones do
    with pytest.raises(ValueError):
        m.set_freeze_fraction(-0.1)


def _run(model, x, pm, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    y = model.extract_features(x, pm).features
    (y.square().mean()).backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_same_output_and_grads(clip):
    torch.manual_seed(0)
    m = signhiera_tiny(drop_path_rate=0.2).train()  # drop path: the recompute must replay the same RNG draws
    pm = torch.zeros(2, 32, dtype=torch.bool)
    pm[0, 25:] = True
    y0, g0 = _run(m.set_gradient_checkpointing(False), clip, pm, seed=3)
    y1, g1 = _run(m.set_gradient_checkpointing(True), clip, pm, seed=3)
    torch.testing.assert_close(y0, y1, atol=1e-6, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for k in g0:
        torch.testing.assert_close(g0[k], g1[k], atol=1e-6, rtol=1e-5, msg=k)
    assert signhiera_tiny(gradient_checkpointing=True).gradient_checkpointing


def test_determinism(clip):
    torch.manual_seed(5)
    a = signhiera_tiny().eval()
    torch.manual_seed(5)
    b = signhiera_tiny().eval()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(a.extract_features(clip).features, a.extract_features(clip).features)
        assert torch.equal(a(clip), b(clip))
        torch.testing.assert_close(a(clip[:1]), a(clip)[:1], atol=1e-5, rtol=1e-5)  # batch-independent


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tiny, clip):
    pm = torch.zeros(2, 32, dtype=torch.bool)
    pm[0, 21:] = True
    with torch.no_grad():
        ref = tiny.extract_features(clip, pm)
        dev = tiny.to("cuda").extract_features(clip.cuda(), pm.cuda())
    tiny.to("cpu")
    assert torch.equal(ref.valid, dev.valid.cpu())
    torch.testing.assert_close(ref.features, dev.features.cpu(), atol=1e-3, rtol=1e-3)
