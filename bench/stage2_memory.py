"""Peak memory of ONE stage-2 optimizer step at the full `sonar` size, per memory option, each option in a
fresh subprocess (so peaks never mix).

    flock /tmp/heavy.lock .venv/bin/python bench/stage2_memory.py [--options a,b,...] [--limit-gb 21]
                                                                   [--device cpu|cuda] [--batch-size 1]

The model is what `run_stage2` trains: the SONAR ASL encoder (T5 v1.1-large shaped, ~752 M parameters) and
the SONAR text decoder (24 layers, dim 1024, 256,206-token tied embedding, ~867 M), random weights (built
on `meta`, then materialised and filled with N(0, 0.02): no pretrained files needed), with the stage-2
freezing of `stage2_model` and the optimizer of `trainer.make_optimizer`. One real step at batch 1: ~100
feature vectors of 768 and a 30-token target; forward + backward + gradient clipping + optimizer step +
zero_grad, as in `trainer.train`.

Peak memory: on CPU the process's peak RSS during the step (VmHWM, reset after the model is built via
/proc/self/clear_refs, and a 5 ms sampler as a cross-check), on CUDA `torch.cuda.max_memory_allocated`.
Every child watches its own RSS and exits when it passes `--limit-gb` (a shared machine): an option
predicted above the limit is measured at 6 and 12 layers (encoder, pooling decoder and text decoder alike)
and extrapolated linearly to 24 — memory is linear in the layer count, the embeddings are the constant
term — and reported as such.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

GB = 1e9
OPTIONS = {   # name -> stage-2 settings (+ bench-only weight dtype); see 10_finetune for the choice
    "adamw": dict(optimizer="adamw", freeze_embeddings=False),
    "adamw+frozen_emb": dict(optimizer="adamw", freeze_embeddings=True),
    "bf16_weights+adamw+frozen_emb": dict(optimizer="adamw", freeze_embeddings=True, dtype="bf16"),
    "adamw8bit": dict(optimizer="adamw8bit", freeze_embeddings=False),
    "adamw8bit+frozen_emb": dict(optimizer="adamw8bit", freeze_embeddings=True),
    "adafactor": dict(optimizer="adafactor", freeze_embeddings=False),
    "adafactor+frozen_emb": dict(optimizer="adafactor", freeze_embeddings=True),
    "adamw8bit+frozen_emb+checkpointing": dict(optimizer="adamw8bit", freeze_embeddings=True, checkpointing=True),
}
STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "adafactor": 0}   # optimizer state per trainable parameter (fp32 weights)


# ---------------------------------------------------------------- child: one option, one step
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class _Watch(threading.Thread):
    """Samples RSS every 5 ms; exits the process past `limit` bytes (before the machine runs out)."""
    def __init__(self, limit: float):
        super().__init__(daemon=True)
        self.limit, self.peak = limit, 0

    def run(self):
        while True:
            r = _rss()
            self.peak = max(self.peak, r)
            if r > self.limit:
                print(json.dumps({"killed_at_gb": round(r / GB, 2)}), flush=True)
                os._exit(137)
            time.sleep(0.005)


def child(spec: dict) -> dict:
    watch = _Watch(spec["limit_gb"] * GB)
    watch.start()
    import torch
    from torch import nn
    from sonar_thesis.config import Config
    from sonar_thesis.finetune import stage2_model
    from sonar_thesis.sign_to_text import SignToText
    from sonar_thesis.sonar import unique_params
    from sonar_thesis.sonar_encoder import sonar_asl_encoder
    from sonar_thesis.sonar_text_decoder import sonar_text_decoder_basic
    from sonar_thesis.train_setup import autocast_context, make_optimizer, resolve_precision, set_gradient_checkpointing
    from sonar_thesis.datasets import collate_features

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    dtype = torch.bfloat16 if spec.get("dtype") == "bf16" else torch.float32
    L = spec["layers"]
    t0 = time.perf_counter()
    torch.set_default_dtype(dtype)
    with torch.device("meta"):
        tr = SignToText(sonar_asl_encoder(num_layers=L, num_decoder_layers=L, dropout_rate=0.1),
                        sonar_text_decoder_basic(num_layers=L, dropout_p=0.1))
    torch.set_default_dtype(torch.float32)
    tr = tr.to_empty(device=device)
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0.0, 0.02)
    tr.decoder.reset_non_persistent_buffers()
    cfg = Config(preset="sonar")
    cfg.stage2.freeze_embeddings = spec["freeze_embeddings"]
    model = stage2_model(SimpleNamespace(translator=tr), cfg)
    set_gradient_checkpointing(model, spec.get("checkpointing", False))
    opt = make_optimizer(model, 1e-4, 0.01, spec["optimizer"])
    trainable = [p for g in opt.param_groups for p in g["params"]]
    n_total, n_train = unique_params(model), sum(p.numel() for p in trainable)
    vocab = tr.decoder.cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    items = [dict(features=torch.randn(100 + 3 * i, 768, generator=g),
                  tgt=[3, 5] + torch.randint(4, vocab, (28,), generator=g).tolist(), id=str(i), reference="")
             for i in range(spec["batch_size"])]
    batch = collate_features(items)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch["features"] = batch["features"].to(dtype)      # bf16 weights read bf16 features
    precision = resolve_precision(spec["precision"], device)
    build_s = time.perf_counter() - t0
    rss_built = _rss()

    # ---- the step (peak counted from here)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # VmHWM := current RSS
    watch.peak = _rss()
    t1 = time.perf_counter()
    model.train()
    with autocast_context(precision, device):
        loss = model.training_loss(batch)
    loss.float().backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = time.perf_counter() - t1
    out = dict(spec, params_total=n_total, params_trainable=n_train, loss=loss.item(), precision=precision,
               build_s=round(build_s, 1), step_s=round(step_s, 1), rss_after_build_gb=round(rss_built / GB, 3),
               peak_rss_step_gb=round(max(_hwm(), watch.peak) / GB, 3),
               ru_maxrss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3))
    if device.type == "cuda":
        out.update(cuda_weights_gb=round(base / GB, 3),
                   cuda_peak_gb=round(torch.cuda.max_memory_allocated(device) / GB, 3))
    return out


# ---------------------------------------------------------------- parent: one subprocess per option
def _counts(layers: int = 24) -> dict:
    """Parameter counts of the full model without building it (meta)."""
    import torch
    from sonar_thesis.sonar import unique_params
    from sonar_thesis.sonar_encoder import sonar_asl_encoder
    from sonar_thesis.sonar_text_decoder import sonar_text_decoder_basic
    with torch.device("meta"):
        enc = sonar_asl_encoder(num_layers=layers, num_decoder_layers=layers)
        dec = sonar_text_decoder_basic(num_layers=layers)
    return dict(encoder=unique_params(enc), decoder=unique_params(dec),
                embedding=dec.decoder_frontend.embed.weight.numel())


def predict_gb(opt: dict, c: dict) -> float:
    """Weights + gradients + optimizer state from parameter counts (no activations, no temporaries)."""
    w = 2 if opt.get("dtype") == "bf16" else 4
    total = c["encoder"] + c["decoder"]
    train = total - (c["embedding"] if opt["freeze_embeddings"] else 0)
    state = STATE_BYTES[opt["optimizer"]] * (w / 4)     # torch keeps AdamW moments in the parameter dtype
    return (total * w + train * (w + state)) / GB


def run_child(spec: dict, timeout: float = 900) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return dict(spec, error=(p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"])
    return dict(spec, **json.loads(lines[-1])) | ({} if p.returncode == 0 else {"returncode": p.returncode})


def extrapolate(spec: dict, counts: dict) -> dict:
    """Peaks at 6 and 12 layers, extended linearly to 24 (the embeddings and the batch are the constant term)."""
    small = [run_child(dict(spec, layers=L)) for L in (6, 12)]
    if any("peak_rss_step_gb" not in s for s in small):
        return dict(spec, error=[str(s.get("error") or s.get("killed_at_gb")) for s in small])
    p6, p12 = (s["peak_rss_step_gb"] for s in small)
    return dict(small[1], layers=24, peak_rss_step_gb=round(p12 + (p12 - p6) * 2, 3), extrapolated_from={6: p6, 12: p12},
                params_total=counts["encoder"] + counts["decoder"], params_trainable=None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, from: {', '.join(OPTIONS)}")
    ap.add_argument("--limit-gb", type=float, default=21.0, help="a child exits past this RSS (CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="hardware.mixed_precision (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))), flush=True)
        return
    names = [n.strip() for n in a.options.split(",") if n.strip()]
    if bad := [n for n in names if n not in OPTIONS]:
        sys.exit(f"--options: unknown {bad}; choose from {list(OPTIONS)}")
    counts = _counts()
    print(f"full size: encoder {counts['encoder'] / 1e6:.1f} M + decoder {counts['decoder'] / 1e6:.1f} M "
          f"(embedding {counts['embedding'] / 1e6:.1f} M) parameters; batch {a.batch_size}, device {a.device}",
          flush=True)
    results = []
    for name in names:
        opt = OPTIONS[name]
        spec = dict(opt, name=name, layers=24, device=a.device, precision=a.precision, batch_size=a.batch_size,
                    limit_gb=a.limit_gb)
        pred = predict_gb(opt, counts)
        if a.device == "cpu" and pred > a.limit_gb - 1.0:       # would pass the limit: extrapolate from 6 and 12 layers
            res = extrapolate(spec, counts)
        else:
            res = run_child(spec)
            if "killed_at_gb" in res and a.device == "cpu":     # passed the limit after all: say so, then extrapolate
                res = extrapolate(spec, counts) | {"killed_at_gb": res["killed_at_gb"]}
        res["predicted_gb"] = round(pred, 2)
        results.append(res)
        peak = res.get("cuda_peak_gb", res.get("peak_rss_step_gb"))
        how = " (extrapolated from 6/12 layers)" if "extrapolated_from" in res else ""
        killed = f"; a full-size run passed --limit-gb at {res['killed_at_gb']} GB" if "killed_at_gb" in res else ""
        print(f"{name:38s} peak {peak if peak is not None else 'n/a'} GB{how}; predicted weights+grads+state "
              f"{pred:.2f} GB{killed} {res.get('error') or ''}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    ref = next((r for r in results if r["name"] == "adamw" and "peak_rss_step_gb" in r), None)
    print("\noption                                 peak GB   vs adamw   trainable M  step s")
    for r in results:
        peak = r.get("cuda_peak_gb", r.get("peak_rss_step_gb"))
        ratio = f"{peak / ref.get('cuda_peak_gb', ref['peak_rss_step_gb']):.2f}" if (ref and peak) else "-"
        tm = f"{r['params_trainable'] / 1e6:.0f}" if r.get("params_trainable") else "-"
        print(f"{r['name']:38s} {peak if peak is not None else 'n/a':>7}   {ratio:>7}   {tm:>10}  {'-' if 'extrapolated_from' in r else r.get('step_s', '-')}"
              + ("  (extrapolated)" if "extrapolated_from" in r else ""))


if __name__ == "__main__":
    main()
