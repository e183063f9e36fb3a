"""Training throughput: target tokens/s, clips/s and peak memory of the stage-1 (through SignHiera) and
stage-2 (features only) training steps, measured in one run on synthetic inputs.

    python bench/train.py [--preset tiny|sonar] [--device cpu|cuda] [--batch-size 8] [--steps 10]

It times the real `training_loss` + backward + AdamW step of the models the pipeline trains
(`SignStack` with the stage-1 freezing, `FeatureModel` for stage 2), after warm-up steps. Peak memory
is the process's max RSS on CPU (stage 2 runs first, so each figure is that stage's own peak) and `torch.cuda.max_memory_allocated` on CUDA. The `sonar` preset
builds the published sizes (~1.7 B parameters; it needs a GPU with ≥ 40 GB for batch 8).
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from sonar_thesis.config import Config
from sonar_thesis.config_sections import PRESETS
from sonar_thesis.finetune import stage1_model, stage2_model
from sonar_thesis.signhiera import build_signhiera
from sonar_thesis.sonar import PAD_ID, pad_batch
from sonar_thesis.assemble import Pretrained, build_translator


class _FakeTokenizer:
    """Token ids only (no SentencePiece model needed to time a step)."""
    def __init__(self, vocab: int):
        self.vocab = vocab

    def __len__(self):
        return self.vocab


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps(model, batch, steps: int, warmup: int, device) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        out = model.training_loss(batch)
        loss = out["loss"] if isinstance(out, dict) else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "sonar"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length (25 fps)")
    ap.add_argument("--target-tokens", type=int, default=16)
    args = ap.parse_args(argv)
    device, sizes = torch.device(args.device), PRESETS[args.preset]
    cfg = Config(preset=args.preset)
    vocab = 256206 if args.preset == "sonar" else 400
    torch.manual_seed(0)
    models = Pretrained(build_signhiera(args.preset), build_translator(args.preset, vocab, dropout=0.1),
                        _FakeTokenizer(vocab))
    B, L = args.batch_size, args.target_tokens
    tgt = pad_batch([[3, 4] + list(np.random.default_rng(i).integers(5, vocab, L)) + [3] for i in range(B)], PAD_ID)
    n_tokens = int((tgt[:, 1:] != PAD_ID).sum())

    frames = int(args.seconds * sizes.target_fps)
    span = sizes.num_frames * sizes.sampling_rate
    n_win = 1 + max(0, -(-(frames - span) // (span // 2)))
    n_feat = n_win * sizes.num_frames // 2

    # stage 2 first: peak RSS only grows, so the smaller job must be measured before the larger one
    s2 = stage2_model(models, cfg).to(device)
    batch2 = dict(features=torch.randn(B, n_feat, sizes.feature_dim, device=device),
                  mask=torch.ones(B, n_feat, dtype=torch.bool, device=device), tgt=tgt.to(device))
    t2 = _time_steps(s2, batch2, args.steps, args.warmup, device)
    peak2 = _peak_mib(device)

    # stage 1: clips through SignHiera (windows of num_frames, 50 % overlap)
    s1 = stage1_model(models, cfg).to(device)
    batch1 = dict(frames=torch.randint(0, 255, (B * n_win, sizes.num_frames, sizes.crop_size, sizes.crop_size, 3),
                                       dtype=torch.uint8, device=device),
                  pad=torch.zeros(B * n_win, sizes.num_frames, dtype=torch.bool, device=device),
                  owner=torch.arange(B, device=device).repeat_interleave(n_win), tgt=tgt.to(device),
                  reference=["x"] * B)
    t1 = _time_steps(s1, batch1, args.steps, args.warmup, device)
    peak1 = _peak_mib(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; preset {args.preset}; batch {B} clips of {args.seconds:.0f} s "
          f"({n_win} windows each, {n_feat} features), {n_tokens} target tokens per batch")
    print(f"stage 1 (SignHiera last {1 - cfg.stage1.freeze_fraction:.0%} + frozen SONAR): {t1 * 1000:.0f} ms/step, "
          f"{n_tokens / t1:.0f} target tokens/s, {B / t1:.1f} clips/s, peak memory {peak1:.0f} MiB")
    print(f"stage 2 (SONAR encoder + decoder on features):   {t2 * 1000:.0f} ms/step, "
          f"{n_tokens / t2:.0f} target tokens/s, {B / t2:.1f} clips/s, peak memory {peak2:.0f} MiB")
    print(f"ratio stage2/stage1 throughput: {t1 / t2:.1f}x")


if __name__ == "__main__":
    main()
