"""Checkpoint compatibility (published layouts from shared/specs), loud failures, round trips, downloads."""

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

from sonar_thesis import checkpoints as ck
from sonar_thesis import download as dl
from sonar_thesis.checkpoint_layouts import CheckpointError
from sonar_thesis.checkpoints import (
    describe_checkpoint, load_published, published_state_dict, read_checkpoint, save_published,
)
from sonar_thesis.download import PUBLISHED, ChecksumError, DownloadError, PublishedFile, download
from sonar_thesis.io import read_json, sha256sum
from sonar_thesis.signhiera import SignHiera, hiera_base_128x224, signhiera_tiny
from sonar_thesis.sonar_encoder import sonar_asl_encoder, sonar_encoder_tiny
from sonar_thesis.sonar_text_decoder import sonar_text_decoder_basic, sonar_text_decoder_tiny

SPECS = Path(__file__).resolve().parents[2] / "shared/specs"
needs_specs = pytest.mark.skipif(not SPECS.is_dir(), reason=f"{SPECS} is missing (CI clones shared/ beside the repo)")


def spec(name: str) -> dict:
    return json.loads((SPECS / name).read_text())


def meta(shape) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def meta_sd(tensors: dict, skip=()) -> dict:
    return {k: meta(s) for k, s in tensors.items() if not k.startswith(tuple(skip))}


def shapes(sd: dict) -> dict:
    return {k: list(v.shape) for k, v in sd.items()}


# --------------------------------------------------------------------------------------------------------
# (a) full-size models on the meta device against the spec-shaped published files
# --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hiera_spec():
    if not SPECS.is_dir():
        pytest.skip(f"{SPECS} is missing (CI clones shared/ beside the repo)")
    return spec("signhiera_base_128x224.json")


def hiera_meta() -> SignHiera:
    with torch.device("meta"):
        return hiera_base_128x224()


def hiera_file(hs: dict, top: str = "model") -> dict:
    """A meta dict shaped like dm_70h_ub_signhiera.pth: no norm.*, plus the MAE leftovers."""
    sd = meta_sd(hs["tensors"], skip=("norm.",))
    sd.update(meta_sd(hs["checkpoint_extra_keys_if_mae_defaults"]["tensors"]))
    return {top: sd, "epoch": 99}


@needs_specs
def test_signhiera_published_names_match_spec(hiera_spec):
    assert shapes(published_state_dict(hiera_meta())) == hiera_spec["tensors"]


@needs_specs
@pytest.mark.parametrize("top", ["model", "model_state"])
def test_signhiera_spec_file_loads(hiera_spec, top, capsys):
    m = hiera_meta()
    f = hiera_file(hiera_spec, top)
    rep = load_published(m, f)
    assert rep.ok and rep.state_key == top
    assert not (rep.missing or rep.unexpected or rep.mismatched or rep.conflicts)
    assert len(rep.loaded) == hiera_spec["checkpoint"]["keys_expected_from_checkpoint"] == 298
    mae = set(hiera_spec["checkpoint_extra_keys_if_mae_defaults"]["tensors"])
    assert set(rep.expected_ignored) == mae | {"norm.weight", "norm.bias"}
    assert "OK" in capsys.readouterr().out


@needs_specs
def test_signhiera_head_and_wrapper_prefix(hiera_spec):
    f = hiera_file(hiera_spec)
    sd = f["model"]
    sd["head.projection.weight"], sd["head.projection.bias"] = meta((400, 768)), meta((400,))  # before head swap
    sd["norm.weight"] = meta((768,))  # a norm of the right shape is loaded …
    f["model"] = {"module." + k: v for k, v in sd.items()}  # … and a DDP prefix is stripped
    rep = load_published(hiera_meta(), f, verbose=False)
    assert rep.ok and rep.stripped_prefix == "module."
    assert "norm.weight" in rep.loaded and "norm.bias" in rep.expected_ignored
    assert "head.projection.weight" in rep.expected_ignored


@pytest.fixture(scope="module")
def enc_spec():
    if not SPECS.is_dir():
        pytest.skip(f"{SPECS} is missing (CI clones shared/ beside the repo)")
    return spec("sonar_asl_encoder.json")


@pytest.fixture(scope="module")
def dec_spec():
    if not SPECS.is_dir():
        pytest.skip(f"{SPECS} is missing (CI clones shared/ beside the repo)")
    return spec("sonar_text_decoder_fairseq2.json")


def enc_meta():
    with torch.device("meta"):
        return sonar_asl_encoder()


def dec_meta():
    with torch.device("meta"):
        return sonar_text_decoder_basic()


@needs_specs
def test_encoder_and_decoder_published_names_match_spec(enc_spec, dec_spec):
    assert shapes(published_state_dict(enc_meta())) == enc_spec["tensors"]
    assert shapes(published_state_dict(dec_meta())) == dec_spec["tensors"]


@needs_specs
def test_encoder_spec_file_loads(enc_spec):
    m = enc_meta()
    rep = load_published(m, {"student": meta_sd(enc_spec["tensors"])})
    assert rep.ok and rep.state_key == "student" and len(rep.loaded) == 563 == rep.n_model
    assert not (rep.renamed or rep.tied or rep.expected_ignored)
    assert m.encoder.embed_tokens.weight is m.shared.weight is m.decoder.embed_tokens.weight  # tie survives assign


@needs_specs
def test_encoder_old_names_one_alias_prefix_and_hf_extra(enc_spec):
    """The uncertain parts of the real file: old feature_proj names, only some embedding aliases, a wrapper."""
    old = enc_spec["checkpoint"]["old_style_names_accepted"]  # old -> new
    sd = meta_sd(enc_spec["tensors"], skip=("encoder.embed_tokens.", "decoder.embed_tokens."))
    for o, n in old.items():
        sd[o] = sd.pop(n)
    for k in enc_spec["checkpoint"]["hf_ignore_on_load_unexpected"]:
        sd[k] = meta((32, 16))
    f = {"model": {"module." + k: v for k, v in sd.items()}, "optimizer": {}, "epoch": 3}
    m = enc_meta()
    rep = load_published(m, f)
    assert rep.ok and rep.state_key == "model" and rep.stripped_prefix == "module."
    assert rep.renamed == old
    assert rep.tied == {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
    assert set(rep.expected_ignored) == set(enc_spec["checkpoint"]["hf_ignore_on_load_unexpected"])
    assert len(rep.loaded) == 563
    assert m.encoder.embed_tokens.weight is m.shared.weight


@needs_specs
def test_encoder_file_without_shared_alias(enc_spec):
    sd = meta_sd(enc_spec["tensors"], skip=("shared.",))  # only the two stack aliases
    rep = load_published(enc_meta(), {"student": sd}, verbose=False)
    assert rep.ok and rep.tied == {"shared.weight": "encoder.embed_tokens.weight"}


@needs_specs
@pytest.mark.parametrize("variant", ["as_published", "no_final_proj", "with_freqs"])
def test_decoder_spec_file_loads(dec_spec, variant):
    sd = meta_sd(dec_spec["tensors"])
    if variant == "no_final_proj":
        del sd["final_proj.weight"]
    if variant == "with_freqs":
        sd.update(meta_sd(dec_spec["non_persistent_buffers_not_in_checkpoint"]))
    m = dec_meta()
    rep = load_published(m, {"model": sd})
    assert rep.ok and len(rep.loaded) == 628
    assert rep.tied == ({"final_proj.weight": "decoder_frontend.embed.weight"} if variant == "no_final_proj" else {})
    assert list(rep.expected_ignored) == (["decoder_frontend.pos_encoder.freqs"] if variant == "with_freqs" else [])
    assert m.final_proj.weight is m.decoder_frontend.embed.weight


@needs_specs
def test_save_published_full_size_matches_spec_layout(hiera_spec, enc_spec, dec_spec, tmp_path):
    """Our full-size models written by save_published are key-for-key the published files (meta: no bytes)."""
    for build, sp, top in ((hiera_meta, hiera_spec, "model"), (enc_meta, enc_spec, "student"), (dec_meta, dec_spec, "model")):
        path = save_published(build(), tmp_path / f"{top}_{len(sp['tensors'])}.pth")
        f = read_checkpoint(path)
        assert list(f) == [top] and shapes(f[top]) == sp["tensors"]
        assert load_published(build(), path, verbose=False).ok


# --------------------------------------------------------------------------------------------------------
# (b) deliberately wrong checkpoints: clear errors naming keys and shapes
# --------------------------------------------------------------------------------------------------------
@needs_specs
def test_missing_block_is_an_error(hiera_spec):
    f = hiera_file(hiera_spec)
    f["model"] = {k: v for k, v in f["model"].items() if not k.startswith("blocks.5.")}
    with pytest.raises(CheckpointError) as e:
        load_published(hiera_meta(), f)
    msg = str(e.value)
    assert "MISSING from the file" in msg and "blocks.5.attn.qkv.weight: [1152, 192]" in msg
    assert "blocks.5.proj.weight: [384, 192]" in msg and "nothing was loaded" in msg
    assert len(e.value.report.missing) == 14


@needs_specs
def test_wrong_shape_is_an_error_not_pruned(hiera_spec):
    f = hiera_file(hiera_spec)
    f["model"]["pos_embed_temporal"] = meta((1, 32, 96))  # another clip length: the published loader prunes it
    with pytest.raises(CheckpointError, match=re.escape("pos_embed_temporal: [1, 32, 96] vs [1, 64, 96]")):
        load_published(hiera_meta(), f)


@needs_specs
def test_wrong_top_level_key(hiera_spec, tmp_path):
    sd = hiera_file(hiera_spec)["model"]
    with pytest.raises(CheckpointError, match=r"no state dict under any of \['model', 'model_state'\].*\['state_dict'\]"):
        load_published(hiera_meta(), {"state_dict": sd})
    with pytest.raises(CheckpointError, match="bare state dict"):
        load_published(hiera_meta(), sd)


@needs_specs
def test_wrong_model_kind(hiera_spec, enc_spec, dec_spec):
    enc_sd, dec_sd = meta_sd(enc_spec["tensors"]), meta_sd(dec_spec["tensors"])
    with pytest.raises(CheckpointError, match=r"'student' is how dm_70h_ub_sonar_encoder\.pth is laid out.*SignT5SonarEncoder"):
        load_published(hiera_meta(), {"student": enc_sd})  # encoder file into SignHiera
    with pytest.raises(CheckpointError) as e:  # same, re-saved under "model": caught by the key diff
        load_published(hiera_meta(), {"model": enc_sd})
    assert "the keys look like dm_70h_ub_sonar_encoder.pth" in str(e.value)
    assert "MISSING" in str(e.value) and "patch_embed.proj.weight: [96, 3, 3, 7, 7]" in str(e.value)
    with pytest.raises(CheckpointError, match=r"look like sonar_text_decoder\.pt"):
        load_published(enc_meta(), {"model": dec_sd})  # decoder into the encoder ("model" is its fallback key)
    with pytest.raises(CheckpointError, match=r"look like dm_70h_ub_signhiera\.pth"):
        load_published(dec_meta(), hiera_file(hiera_spec))


def test_tied_aliases_with_different_values_are_an_error():
    torch.manual_seed(0)
    m = sonar_encoder_tiny()
    sd = dict(published_state_dict(m))
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"] + 1  # not one tensor any more
    with pytest.raises(CheckpointError, match="encoder.embed_tokens.weight: tied alias of shared.weight but holds different values"):
        load_published(sonar_encoder_tiny(), {"student": sd})


def test_alias_our_model_does_not_register_is_ignored():
    class OneName(nn.Module):  # registers the shared table under one name only
        def __init__(self):
            super().__init__()
            self.shared = nn.Embedding(4, 2)

    lay = ck.Layout("toy", "toy.pth", ("OneName",), ("student",),
                    tied_groups=(("shared.weight", "encoder.embed_tokens.weight"),))
    w = torch.randn(4, 2)
    rep = load_published(OneName(), {"student": {"shared.weight": w, "encoder.embed_tokens.weight": w}}, layout=lay)
    assert rep.ok and list(rep.expected_ignored) == ["encoder.embed_tokens.weight"]
    rep = load_published(m := OneName(), {"student": {"encoder.embed_tokens.weight": w}}, layout=lay)
    assert rep.ok and rep.tied == {"shared.weight": "encoder.embed_tokens.weight"} and torch.equal(m.shared.weight, w)


def test_pickled_object_is_refused_naming_the_file(tmp_path):
    p = tmp_path / "whole_model.pth"
    torch.save({"model": nn.Linear(2, 2)}, p)  # a module object, not a state dict
    with pytest.raises(CheckpointError) as e:
        load_published(signhiera_tiny(), p)
    assert str(p) in str(e.value) and "torch.nn.modules.linear.Linear" in str(e.value)
    assert "weights_only=True" in str(e.value)
    p2 = tmp_path / "a_list.pth"
    torch.save([torch.zeros(2)], p2)  # loads with weights_only, but is no dict
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(p2))}: holds a list, not a dict"):
        load_published(signhiera_tiny(), p2)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_published(signhiera_tiny(), tmp_path / "nope.pth")


def test_strict_false_loads_the_rest_and_prints_the_diff(tmp_path, capsys):
    torch.manual_seed(0)
    src = signhiera_tiny()
    path = save_published(src, tmp_path / "tiny.pth")
    f = read_checkpoint(path)
    f["model"] = {k: v for k, v in f["model"].items() if not k.startswith("blocks.1.")}
    f["model"]["pos_embed_temporal"] = torch.zeros(1, 7, 32)
    torch.manual_seed(1)
    dst = signhiera_tiny()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_published(dst, f)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # strict: untouched
    rep = load_published(dst, f, strict=False)
    out = capsys.readouterr().out
    assert "WARNING (strict=False)" in out and "blocks.1.mlp.fc1.weight" in out and "pos_embed_temporal" in out
    assert not rep.ok and rep.mismatched == {"pos_embed_temporal": ((1, 7, 32), (1, 16, 32))}
    s, d = src.state_dict(), dst.state_dict()
    for k in d:  # loaded keys hold the file's values, the rest keep their initial values
        assert torch.equal(d[k], s[k] if k in rep.loaded else before[k]), k
    assert len(rep.loaded) == len(d) - 15


# --------------------------------------------------------------------------------------------------------
# (c) tiny-preset round trips: save_published -> load_published -> identical outputs
# --------------------------------------------------------------------------------------------------------
def test_signhiera_tiny_round_trip(tmp_path):
    torch.manual_seed(0)
    a = signhiera_tiny().eval()
    path = save_published(a, tmp_path / "signhiera.pth", extra={"epoch": 2, "params": {"lr": 1e-5}})
    f = read_checkpoint(path)
    assert set(f) == {"model", "epoch", "params"}
    torch.manual_seed(1)
    b = signhiera_tiny().eval()
    x = torch.randn(1, 3, 32, 64, 64)
    assert not torch.equal(a.extract_features(x).features, b.extract_features(x).features)
    assert load_published(b, path).ok
    with torch.no_grad():
        assert torch.equal(a.extract_features(x).features, b.extract_features(x).features)
    info = describe_checkpoint(path)
    assert info["model"]["tensors"] == len(a.state_dict()) and info["model"]["looks_like"] == "sonar_signhiera"


def test_encoder_tiny_round_trip(tmp_path):
    torch.manual_seed(0)
    a = sonar_encoder_tiny().eval()
    path = save_published(a, tmp_path / "encoder.pth")
    f = read_checkpoint(path)
    assert list(f) == ["student"] and {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} <= set(f["student"])
    torch.manual_seed(1)
    b = sonar_encoder_tiny().eval()
    x = torch.randn(2, 5, 256)
    assert load_published(b, path).ok
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert b.encoder.embed_tokens.weight is b.shared.weight


def test_decoder_tiny_round_trip_into_meta(tmp_path):
    torch.manual_seed(0)
    a = sonar_text_decoder_tiny(vocab_size=64).eval()
    path = save_published(a, tmp_path / "sonar_text_decoder.pt")
    f = read_checkpoint(path)["model"]
    assert "final_proj.weight" in f and "decoder_frontend.pos_encoder.freqs" not in f
    assert f["final_proj.weight"].data_ptr() == f["decoder_frontend.embed.weight"].data_ptr()  # one storage
    with torch.device("meta"):
        b = sonar_text_decoder_tiny(vocab_size=64).eval()
    rep = load_published(b, path)  # assign=True picked automatically
    assert rep.ok and rep.still_meta == []
    assert b.final_proj.weight is b.decoder_frontend.embed.weight
    tok, emb = torch.tensor([[3, 9, 4, 11]]), torch.randn(1, 256)
    with torch.no_grad():
        assert torch.equal(a(tok, emb), b(tok, emb))


def test_meta_model_with_expected_missing_reports_still_meta(tmp_path):
    torch.manual_seed(0)
    f = {"model": {k: v for k, v in signhiera_tiny().state_dict().items() if not k.startswith("norm.")}}
    with torch.device("meta"):
        m = signhiera_tiny()
    rep = load_published(m, f)
    assert rep.ok and rep.still_meta == ["norm.weight", "norm.bias"]
    assert not m.blocks[0].attn.qkv.weight.is_meta


def test_save_is_atomic(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_published(signhiera_tiny(), tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# (d) download against a local HTTP server with Range support
# --------------------------------------------------------------------------------------------------------
class _RangeHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if self.path not in srv.files:
            self.send_error(404)
            return
        data = srv.files[self.path]
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng and srv.honor_range else 0
        if start >= len(data) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng and srv.honor_range else 200)
        if rng and srv.honor_range:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if srv.cut_after is not None:  # drop the connection mid-transfer
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.files, srv.honor_range, srv.cut_after, srv.requests = {}, True, None, []
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes


def _pub(srv, data=PAYLOAD, name="weights.pth") -> dict:
    srv.files["/" + name] = data
    return {"toy": (PublishedFile(f"{srv.url}/{name}", name),)}


def test_fresh_download_records_lock(server, tmp_path):
    pub = _pub(server)
    got = download("toy", tmp_path, published=pub, progress=False, chunk_size=4096)
    dest = tmp_path / "weights.pth"
    assert got == {"weights.pth": dest} and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "weights.pth.part").exists()
    lock = read_json(tmp_path / "checksums.json")["weights.pth"]
    assert lock["size"] == len(PAYLOAD) and lock["sha256"] == sha256sum(dest) and lock["url"].endswith("/weights.pth")
    n = len(server.requests)
    download("all", tmp_path, published=pub, progress=False)  # verified from the lock file, nothing fetched
    assert len(server.requests) == n


def test_resume_from_partial_file(server, tmp_path):
    pub = _pub(server)
    (tmp_path / "weights.pth.part").write_bytes(PAYLOAD[:50_000])
    download("toy", tmp_path, published=pub, progress=False)
    assert server.requests == [("/weights.pth", "bytes=50000-")]
    assert (tmp_path / "weights.pth").read_bytes() == PAYLOAD


def test_interrupted_download_keeps_part_and_resumes(server, tmp_path):
    pub = _pub(server)
    server.cut_after = 70_000
    with pytest.raises(DownloadError, match=r"rerun `sonar-thesis download --model toy --output \S+` to resume"):
        download("toy", tmp_path, published=pub, progress=False, chunk_size=8192)
    part = tmp_path / "weights.pth.part"
    assert part.stat().st_size == 70_000 and not (tmp_path / "weights.pth").exists()
    download("toy", tmp_path, published=pub, progress=False)
    assert server.requests[-1] == ("/weights.pth", "bytes=70000-")
    assert (tmp_path / "weights.pth").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    pub = _pub(server)
    server.honor_range = False
    (tmp_path / "weights.pth.part").write_bytes(b"x" * 1000)
    download("toy", tmp_path, published=pub, progress=False)
    assert (tmp_path / "weights.pth").read_bytes() == PAYLOAD


def test_complete_part_is_verified_and_renamed(server, tmp_path):
    pub = _pub(server)
    (tmp_path / "weights.pth.part").write_bytes(PAYLOAD)  # killed between download and rename
    download("toy", tmp_path, published=pub, progress=False)
    assert (tmp_path / "weights.pth").read_bytes() == PAYLOAD


def test_tampered_file_is_detected(server, tmp_path):
    pub = _pub(server)
    download("toy", tmp_path, published=pub, progress=False)
    dest = tmp_path / "weights.pth"
    dest.write_bytes(b"\xff" + PAYLOAD[1:])  # same size, different content
    with pytest.raises(ChecksumError, match=rf"{re.escape(str(dest))}: sha256 .* does not match"):
        download("toy", tmp_path, published=pub, progress=False)
    dest.write_bytes(PAYLOAD[:-1])
    with pytest.raises(ChecksumError, match="204,799 bytes"):
        download("toy", tmp_path, published=pub, progress=False, verify=False)


def test_changed_remote_is_detected_before_rename(server, tmp_path):
    pub = _pub(server)
    download("toy", tmp_path, published=pub, progress=False)
    (tmp_path / "weights.pth").unlink()
    server.files["/weights.pth"] = PAYLOAD[::-1]  # upstream replaced the file
    with pytest.raises(ChecksumError, match="remote file differs"):
        download("toy", tmp_path, published=pub, progress=False)
    assert not (tmp_path / "weights.pth").exists() and not (tmp_path / "weights.pth.part").exists()


def test_file_put_by_hand_is_recorded_then_verified(server, tmp_path):
    pub = _pub(server)
    (tmp_path / "weights.pth").write_bytes(PAYLOAD)
    download("toy", tmp_path, published=pub, progress=False)
    assert server.requests == []
    assert read_json(tmp_path / "checksums.json")["weights.pth"]["sha256"] == sha256sum(tmp_path / "weights.pth")


def test_offline_message(tmp_path):
    with socket.socket() as s:  # a port where nothing listens: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dm_70h_ub_signhiera.pth"
    pub = {"sonar_signhiera": (PublishedFile(url, "dm_70h_ub_signhiera.pth"),)}
    with pytest.raises(DownloadError) as e:
        download("sonar_signhiera", tmp_path, published=pub, progress=False, timeout=5)
    msg = str(e.value)
    assert "Could not reach" in msg and url in msg and "by hand" in msg
    assert str(tmp_path / "dm_70h_ub_signhiera.pth") in msg and "checksums.json" in msg and "rerun" in msg
    # both ways out name the shell command, never a Python call
    assert f"curl -L -C - -o {tmp_path / 'dm_70h_ub_signhiera.pth'} {url}" in msg
    assert f"rerun `sonar-thesis download --model sonar_signhiera --output {tmp_path}`" in msg
    assert f"sonar-thesis download --model sonar_signhiera --output {tmp_path} --from DIR" in msg
    assert "download(" not in msg


def test_http_error_and_unknown_name(server, tmp_path):
    pub = {"toy": (PublishedFile(f"{server.url}/missing.pth", "missing.pth"),)}
    with pytest.raises(DownloadError, match=r"missing\.pth: HTTP 404"):
        download("toy", tmp_path, published=pub, progress=False)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        download("nope", tmp_path, published=pub)


def test_published_table():
    files = {f.filename: f.url for fs in PUBLISHED.values() for f in fs}
    assert set(PUBLISHED) >= {"sonar_signhiera", "sonar_encoder", "sonar_decoder"}
    for layout in ck.LAYOUTS.values():  # every layout's file can be downloaded under its layout id
        assert layout.file in {f.filename for f in PUBLISHED[layout.name]}
    assert "sentencepiece.source.256000.model" in {f.filename for f in PUBLISHED["sonar_decoder"]}
    assert all(u.startswith("https://dl.fbaipublicfiles.com/SONAR/") and u.endswith("/" + n) for n, u in files.items())


# --------------------------------------------------------------------------------------------------------
# (e) mirrors (`download(source=DIR)`, `sonar-thesis download --from DIR`) and file:// URLs
# --------------------------------------------------------------------------------------------------------
SMALL = bytes(range(256)) * 16  # 4,096 bytes


def _mirror(root: Path, files: dict, sums: str | None, sums_of: dict | None = None) -> Path:
    """A mirror folder holding `files`, with a checksums.json or SHA256SUMS of `sums_of` (default: of `files`)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    table = {n: hashlib.sha256(d).hexdigest() for n, d in (sums_of or files).items()}
    if sums == "checksums.json":
        (root / "checksums.json").write_text(json.dumps(
            {n: {"size": len((sums_of or files)[n]), "sha256": h} for n, h in table.items()}))
    elif sums == "SHA256SUMS":
        (root / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in table.items()))
    return root


def _toy(name="weights.pth", url=None, **kw) -> dict:
    return {"toy": (PublishedFile(url or f"https://example.invalid/{name}", name, **kw),)}


@pytest.mark.parametrize("sums", ["checksums.json", "SHA256SUMS", None])
def test_mirror_copy_is_verified_and_recorded(tmp_path, sums, capsys):
    mirror = _mirror(tmp_path / "mirror", {"weights.pth": SMALL}, sums)
    out = tmp_path / "out"
    got = download("toy", out, source=mirror, published=_toy(), progress=False, chunk_size=1000)
    dest = out / "weights.pth"
    assert got == {"weights.pth": dest} and dest.read_bytes() == SMALL
    assert not (out / "weights.pth.part").exists()
    rec = read_json(out / "checksums.json")["weights.pth"]
    assert rec["how"] == f"copied from {mirror}" and rec["size"] == len(SMALL)
    assert rec["sha256"] == hashlib.sha256(SMALL).hexdigest() and rec["url"] == "https://example.invalid/weights.pth"
    printed = capsys.readouterr().out
    assert (f"verified against {mirror / sums}" in printed) if sums else ("verified against" not in printed)
    (mirror / "weights.pth").unlink()  # a rerun verifies what is there and copies nothing
    download("toy", out, source=mirror, published=_toy(), progress=False)
    assert "present, verified" in capsys.readouterr().out


@pytest.mark.parametrize("sums", ["checksums.json", "SHA256SUMS"])
def test_corrupt_mirror_file_is_rejected(tmp_path, sums):
    bad = b"\xff" + SMALL[1:]  # same size, other content
    mirror = _mirror(tmp_path / "mirror", {"weights.pth": bad}, sums, sums_of={"weights.pth": SMALL})
    out = tmp_path / "out"
    with pytest.raises(ChecksumError) as e:
        download("toy", out, source=mirror, published=_toy(), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{mirror / 'weights.pth'}: sha256 {hashlib.sha256(bad).hexdigest()}")
    assert f"({mirror / sums})" in msg and f"rerun `sonar-thesis download --model toy --output {out} --from {mirror}`" in msg
    assert sorted(p.name for p in out.iterdir()) == []  # no file, no .part, no lock entry


def test_mirror_wrong_size_in_checksums_json(tmp_path):
    mirror = _mirror(tmp_path / "mirror", {"weights.pth": SMALL[:-1]}, "checksums.json", sums_of={"weights.pth": SMALL})
    with pytest.raises(ChecksumError, match=r"4,095 bytes, but .*mirror/checksums.json says 4,096"):
        download("toy", tmp_path / "out", source=mirror, published=_toy(), progress=False)
    assert not list((tmp_path / "out").iterdir())


def test_mirror_must_match_the_recorded_lock_and_pinned_hash(tmp_path):
    out = tmp_path / "out"
    download("toy", out, source=_mirror(tmp_path / "a", {"weights.pth": SMALL}, None), published=_toy(), progress=False)
    lock_before = (out / "checksums.json").read_text()
    (out / "weights.pth").unlink()
    other = SMALL[::-1]  # another version, consistent with its own SHA256SUMS
    mirror_b = _mirror(tmp_path / "b", {"weights.pth": other}, "SHA256SUMS")
    with pytest.raises(ChecksumError) as e:
        download("toy", out, source=mirror_b, published=_toy(), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and f"({out / 'checksums.json'} (recorded " in msg and "delete its entry" in msg
    assert str(mirror_b / "SHA256SUMS") not in msg  # that one matched
    assert not (out / "weights.pth").exists() and not (out / "weights.pth.part").exists()
    assert (out / "checksums.json").read_text() == lock_before
    with pytest.raises(ChecksumError, match="the pinned hash in PUBLISHED"):
        download("toy", tmp_path / "out2", source=mirror_b, published=_toy(sha256="0" * 64), progress=False)
    assert not (tmp_path / "out2" / "weights.pth").exists()


def test_missing_file_in_mirror_and_missing_mirror(tmp_path):
    mirror = _mirror(tmp_path / "mirror", {"other.bin": SMALL}, None)
    out = tmp_path / "out"
    with pytest.raises(DownloadError) as e:
        download("toy", out, source=mirror, published=_toy(), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{mirror}: no weights.pth in this mirror folder")
    assert f"rerun `sonar-thesis download --model toy --output {out} --from {mirror}`" in msg
    assert f"`sonar-thesis download --model toy --output {mirror}`" in msg  # how to fill the mirror
    with pytest.raises(DownloadError, match=r"nowhere: no such mirror folder .*sonar-thesis download"):
        download("toy", out, source=tmp_path / "nowhere", published=_toy(), progress=False)


def test_bad_sha256sums_line_names_file_and_line(tmp_path):
    mirror = _mirror(tmp_path / "mirror", {"weights.pth": SMALL}, None)
    (mirror / "SHA256SUMS").write_text(f"# made by hand\n{hashlib.sha256(SMALL).hexdigest()} *./weights.pth\nnot a hash\n")
    with pytest.raises(DownloadError, match=r"SHA256SUMS:3: not a `sha256  filename` line"):
        download("toy", tmp_path / "out", source=mirror, published=_toy(), progress=False)
    (mirror / "SHA256SUMS").write_text(f"{hashlib.sha256(SMALL).hexdigest()} *./weights.pth\n")  # binary mode, ./
    download("toy", tmp_path / "out", source=mirror, published=_toy(), progress=False)
    assert (tmp_path / "out" / "weights.pth").read_bytes() == SMALL


def test_present_file_is_checked_against_the_mirror_sums(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "weights.pth").write_bytes(SMALL[::-1])  # put there by hand, never recorded
    mirror = _mirror(tmp_path / "mirror", {"weights.pth": SMALL}, "SHA256SUMS")
    with pytest.raises(ChecksumError, match=r"out/weights.pth: sha256 .*mirror/SHA256SUMS.* delete it and rerun "
                                            r"`sonar-thesis download --model toy"):
        download("toy", out, source=mirror, published=_toy(), progress=False)
    assert not (out / "checksums.json").exists()


def test_file_url_download_and_resume(tmp_path):
    src = tmp_path / "upstream" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(SMALL)
    pub = _toy(url=src.as_uri())
    out = tmp_path / "out"
    out.mkdir()
    # an interrupted earlier run left 1,000 bytes: they are kept and only the rest is read (a real resume,
    # so marked bytes show through — as with HTTP Range, only a recorded sha256 can catch a stale part)
    (out / "weights.pth.part").write_bytes(b"\0" * 1000)
    download("toy", out, published=pub, progress=False, chunk_size=700)
    assert (out / "weights.pth").read_bytes() == b"\0" * 1000 + SMALL[1000:]
    rec = read_json(out / "checksums.json")["weights.pth"]
    assert rec["url"] == src.as_uri() and rec["how"] == "downloaded"
    # a fresh folder, and a stale part longer than the file: start over
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "weights.pth.part").write_bytes(b"x" * 9000)
    download("toy", tmp_path / "o2", published=pub, progress=False)
    assert (tmp_path / "o2" / "weights.pth").read_bytes() == SMALL
    # the recorded hash catches a changed source before anything replaces the file
    (tmp_path / "o2" / "weights.pth").unlink()
    src.write_bytes(SMALL[::-1])
    with pytest.raises(ChecksumError, match="remote file differs"):
        download("toy", tmp_path / "o2", published=pub, progress=False)
    assert not (tmp_path / "o2" / "weights.pth").exists() and not (tmp_path / "o2" / "weights.pth.part").exists()


def test_file_url_missing_names_the_way_out(tmp_path):
    missing = tmp_path / "unmounted" / "weights.pth"
    with pytest.raises(DownloadError) as e:
        download("toy", tmp_path / "out", published=_toy(url=missing.as_uri()), progress=False)
    msg = str(e.value)
    assert msg.startswith(f"Could not read {missing.as_uri()}") and f"is {missing.parent} mounted" in msg
    assert f"cp {missing} {tmp_path / 'out' / 'weights.pth'}" in msg
    assert f"sonar-thesis download --model toy --output {tmp_path / 'out'} --from DIR" in msg
    assert not (tmp_path / "out" / "weights.pth").exists()


def test_remote_file_url_host_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="only local file:// URLs"):
        download("toy", tmp_path, published=_toy(url="file://otherhost/x/weights.pth"), progress=False)


def test_hint_command_omits_the_default_output_and_quotes():
    assert dl._cmd("sonar_decoder", dl.DEFAULT_OUTPUT) == "sonar-thesis download --model sonar_decoder"
    assert dl._cmd("sonar_decoder", "models/published", "/mnt/my mirror") == (
        "sonar-thesis download --model sonar_decoder --from '/mnt/my mirror'")
    assert dl.DEFAULT_OUTPUT == "models/published"


def test_published_checkpoints_and_features_are_byte_identical_with_ordinary_permissions(tmp_path):
    """Same weights -> same file bytes (DVC hashes stay put across reruns), and not mkstemp's 0600."""
    import os
    from sonar_thesis.extract_store import save_features
    from sonar_thesis.signhiera import build_signhiera
    torch.manual_seed(0)
    model = build_signhiera("tiny")
    a, b = save_published(model, tmp_path / "a.pth"), save_published(model, tmp_path / "sub" / "b.pth")
    assert a.read_bytes() == b.read_bytes()
    f1, f2 = save_features(torch.ones(3, 4), tmp_path / "x.pt"), save_features(torch.ones(3, 4), tmp_path / "y.pt")
    assert f1.read_bytes() == f2.read_bytes()
    umask = os.umask(0); os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == (0o666 & ~umask) for p in (a, b, f1, f2))
