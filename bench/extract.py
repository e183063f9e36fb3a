#!/usr/bin/env python
"""Benchmark SignHiera feature extraction on synthetic clips: the extractor vs a naive sequential loop.

    .venv/bin/python bench/extract.py                       # tiny preset, CPU: a couple of minutes on 2 cores
    .venv/bin/python bench/extract.py --preset sonar --device cuda --batch-size 8

Measured in one run, on the same synthetic signer-crop clips (moving colour blobs written with PyAV at the
preset's crop size; random-init SignHiera — throughput does not depend on the weights):

- decode: frames/s of `video.iter_windows` in one process (decord, 25 fps resampling, windows);
- model: windows/s (and clips/s) of `extract_features` alone on ready device batches of `--batch-size`;
- end to end, clips/s of (a) `extract.extract_manifest` (decoding in DataLoader workers, windows batched
  across clips) and (b) a naive baseline: decode one clip, run its windows as one batch, save, repeat;
  and their ratio;
- on CUDA: mean GPU utilisation (NVML) during each, and the fraction of the FLOP-bound rate: SignHiera
  FLOPs per window (counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device, full
  window, no padding) × windows/s ÷ `--peak-tflops`. The default, 989 TFLOP/s, is the dense (no
  sparsity) BF16 tensor-core peak of H100 SXM and H200 (H100 PCIe: 756; A100: 312);
- peak RSS of an extraction process (main process, and the largest loader worker) for one long clip vs
  one short clip: decoding streams windows, so the long clip should not cost more memory.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from sonar_thesis.config_sections import PRESETS, Preset
from sonar_thesis.extract import autocast_dtype, extract_manifest, merge_windows, normalize_batch, resolve_device
from sonar_thesis.extract_loader import write_test_clip
from sonar_thesis.extract_store import load_features, save_features
from sonar_thesis.io import read_tsv, write_tsv
from sonar_thesis.signhiera import build_signhiera
from sonar_thesis.video_io import iter_windows

DEFAULT_PEAK_TFLOPS = 989.0   # H100 SXM / H200, dense BF16


# ---- fixtures --------------------------------------------------------------------------------------
def make_clips(root: Path, sizes: Preset, n: int, seconds: float) -> Path:
    """`n` synthetic crop-size clips of 0.5-1.5 × `seconds` (mean `seconds`) and their manifest."""
    factors = [0.5, 0.75, 1.0, 1.25, 1.5]
    rows = []
    for i in range(n):
        frames = max(1, round(seconds * factors[i % len(factors)] * sizes.target_fps))
        p = root / "clips" / f"clip{i:03d}.mp4"
        if not p.exists():
            write_test_clip(p, frames, sizes.crop_size, seed=i, fps=sizes.target_fps)
        rows.append({"id": f"clip{i:03d}", "video_path": f"clips/clip{i:03d}.mp4", "n_frames": frames,
                     "translation": "synthetic"})
    return write_tsv(root / "clips.tsv", rows, ("id", "video_path", "n_frames", "translation"))


def one_clip_manifest(root: Path, name: str, sizes: Preset, seconds: float) -> Path:
    frames = round(seconds * sizes.target_fps)
    write_test_clip(root / f"{name}.mp4", frames, sizes.crop_size, seed=99, fps=sizes.target_fps)
    return write_tsv(root / f"{name}.tsv", [{"id": name, "video_path": f"{name}.mp4", "n_frames": frames,
                                             "translation": "synthetic"}], ("id", "video_path", "n_frames", "translation"))


# ---- measurements ----------------------------------------------------------------------------------
class GpuUtil:
    """Samples NVML GPU utilisation (%) in a thread while active; mean over the samples."""
    def __init__(self, device: torch.device, period: float = 0.05):
        self.samples, self.period, self.handle = [], period, None
        if device.type != "cuda":
            return
        try:
            import pynvml
            pynvml.nvmlInit()
            idx = device.index if device.index is not None else torch.cuda.current_device()
            vis = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            if vis and all(v.strip().isdigit() for v in vis.split(",")):
                idx = int(vis.split(",")[idx])
            self.handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(idx), pynvml
        except Exception as e:  # no NVML: report nothing rather than fail the benchmark
            print(f"(no GPU utilisation: {type(e).__name__}: {e})")

    def __enter__(self):
        self.samples, self._stop = [], threading.Event()
        if self.handle is not None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        if self.handle is not None:
            self._t.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_window(preset: str, sizes: Preset) -> float:
    """SignHiera FLOPs for one full window (counted on the meta device: no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = build_signhiera(preset).eval()
        x = torch.empty(1, 3, sizes.num_frames, sizes.crop_size, sizes.crop_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.extract_features(x, None)        # meta tensors: the math attention path, so bmm is counted
    return float(counter.get_total_flops())


def decode_rate(manifest_rows: list[dict], root: Path, sizes: Preset) -> tuple[float, int, int]:
    """Source frames/s of iter_windows in this process; also the number of windows and frames."""
    t0, frames, windows = time.perf_counter(), 0, 0
    for r in manifest_rows:
        for _ in iter_windows(root / r["video_path"], sizes):
            windows += 1
        frames += int(r["n_frames"])
    return frames / (time.perf_counter() - t0), windows, frames


def model_rate(model, sizes: Preset, device, amp, batch_size: int, min_seconds: float = 3.0) -> float:
    """Windows/s of extract_features on ready uint8 device batches (normalised there, as the extractor does),
    from the median time per batch (robust to other processes on a shared machine)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, sizes.num_frames, sizes.crop_size, sizes.crop_size, 3),
                      dtype=torch.uint8, generator=g).to(device)
    pad = torch.zeros(batch_size, sizes.num_frames, dtype=torch.bool, device=device)
    pad[-1, sizes.num_frames // 2:] = True                          # a padded last window, as in real batches
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    def step():
        with torch.inference_mode(), ctx():
            f, v = model.extract_features(normalize_batch(x, sizes), pad)
            return f.float().cpu()
    step(); sync(device)                                            # warm-up
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or len(times) < 3:
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return batch_size / statistics.median(times)


def naive_extract(manifest_rows: list[dict], root: Path, out: Path, model, sizes: Preset, device, amp,
                  batch_size: int) -> int:
    """Baseline: decode one clip, run its windows (≤ batch_size per call), save, repeat. Returns windows."""
    out.mkdir(parents=True, exist_ok=True)
    n_windows = 0
    for r in manifest_rows:
        wins = list(iter_windows(root / r["video_path"], sizes))
        feats = []
        for s in range(0, len(wins), batch_size):
            chunk = wins[s:s + batch_size]
            x = normalize_batch(torch.from_numpy(np.stack([f for f, _ in chunk])).to(device), sizes)
            pad = torch.stack([torch.from_numpy(p) for _, p in chunk]).to(device)
            with torch.inference_mode(), (torch.autocast(device.type, dtype=amp) if amp is not None
                                          else contextlib.nullcontext()):
                f, v = model.extract_features(x, pad)
            f, v = f.float().cpu(), v.cpu()
            feats += [fi[vi] for fi, vi in zip(f, v)]
        n_windows += len(wins)
        save_features(merge_windows(feats), out / f"{r['id']}.pt")
    return n_windows


def rss_child(args) -> None:
    """(subprocess) extract one manifest and print peak RSS of this process and of its largest worker (MiB)."""
    sizes = PRESETS[args.preset]
    torch.manual_seed(0)
    model = build_signhiera(args.preset)
    extract_manifest(args.rss_child[0], model, args.rss_child[1], sizes, args.batch_size, args.device,
                     args.num_workers, progress=False)
    kib = 1024 if sys.platform != "darwin" else 1024 * 1024
    print(json.dumps({"main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
                      "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}))


def peak_rss(manifest: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--rss-child", str(manifest), str(out), "--preset", args.preset,
           "--device", args.device, "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"RSS child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- main ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per model call")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="extractor decoding workers (default: 1 on CPU, min(8, cores - 2) on GPU)")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0, help="mean clip length (clips are 0.5-1.5× this)")
    ap.add_argument("--long-seconds", type=float, default=60.0, help="the long clip of the RSS comparison")
    ap.add_argument("--short-seconds", type=float, default=3.0, help="the short clip of the RSS comparison")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help=f"peak dense TFLOP/s at the autocast precision (default on CUDA: {DEFAULT_PEAK_TFLOPS:g}, "
                         "H100 SXM / H200 BF16; H100 PCIe 756, A100 312)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each end-to-end method (median)")
    ap.add_argument("--model-seconds", type=float, default=3.0, help="time spent measuring the model alone")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep clips here (default: a temp dir, removed after)")
    ap.add_argument("--rss-child", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.num_workers is None:
        cuda = resolve_device(args.device).type == "cuda"
        args.num_workers = max(1, min(8, (os.cpu_count() or 2) - 2)) if cuda else 1
    if args.rss_child:
        return rss_child(args)

    sizes = PRESETS[args.preset]
    device = resolve_device(args.device)
    amp = autocast_dtype(device)
    peak = args.peak_tflops or (DEFAULT_PEAK_TFLOPS if device.type == "cuda" else None)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-extract-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        manifest = make_clips(work, sizes, args.clips, args.seconds)
        rows = read_tsv(manifest)
        print(f"synthetic benchmark — preset {args.preset}, device {device}"
              f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
              f"precision {str(amp).replace('torch.', '') if amp else 'fp32'}, batch {args.batch_size}, "
              f"{args.num_workers} decode worker(s), torch threads {torch.get_num_threads()}, "
              f"{len(rows)} clips of {args.seconds * 0.5:g}-{args.seconds * 1.5:g} s at {sizes.crop_size}² "
              f"(made in {time.perf_counter() - t0:.1f} s)")

        torch.manual_seed(0)
        model = build_signhiera(args.preset).eval().to(device)
        fpw = flops_per_window(args.preset, sizes)

        dec_fps, n_windows, n_frames = decode_rate(rows, work, sizes)   # also warms the page cache
        win_per_clip = n_windows / len(rows)
        with GpuUtil(device) as gu_model:
            m_rate = model_rate(model, sizes, device, amp, args.batch_size, args.model_seconds)

        # (b) naive and (a) the extractor alternate `--repeats` times (after the model warm-up above), so that
        # load from other processes hits both alike; each is reported by its median time
        naive_t, ext_t = [], []
        gu_naive, gu_ext = GpuUtil(device), GpuUtil(device)
        samples_naive, samples_ext = [], []
        for k in range(args.repeats):
            with gu_naive:
                t = time.perf_counter()
                naive_windows = naive_extract(rows, work, work / f"naive{k}", model, sizes, device, amp,
                                              args.batch_size)
                sync(device)
                naive_t.append(time.perf_counter() - t)
            samples_naive += gu_naive.samples
            with gu_ext:
                t = time.perf_counter()
                rep = extract_manifest(manifest, model, work / f"extractor{k}", sizes, args.batch_size, device,
                                       args.num_workers, progress=False)
                ext_t.append(time.perf_counter() - t)
            samples_ext += gu_ext.samples
            assert rep["extracted"] == len(rows) and rep["windows"] == n_windows == naive_windows, rep
        gu_naive.samples, gu_ext.samples = samples_naive, samples_ext
        naive_s, ext_s = statistics.median(naive_t), statistics.median(ext_t)
        diff = max((load_features(work / "extractor0" / f"{r['id']}.pt") - load_features(work / "naive0" / f"{r['id']}.pt"))
                   .abs().max().item() for r in rows)
        print(f"  end-to-end runs, alternating (s): extractor {', '.join(f'{x:.2f}' for x in ext_t)}; "
              f"naive {', '.join(f'{x:.2f}' for x in naive_t)}")

        ext_cps, naive_cps = len(rows) / ext_s, len(rows) / naive_s
        def mfu(win_s):
            rate = f"{win_s * fpw / 1e12:.3g} TFLOP/s"
            return f"{rate} = {100 * win_s * fpw / (peak * 1e12):.1f} % of peak" if peak else rate
        def util(g):
            return f"{g.mean:.0f} %" if g.mean is not None else "n/a"
        print(f"  clips: {n_frames} frames → {n_windows} windows ({win_per_clip:.2f}/clip); "
              f"SignHiera {fpw / 1e9:.2f} GFLOP/window")
        print(f"  decode (1 process)       : {dec_fps:9.1f} frames/s = {dec_fps / (n_frames / len(rows)):.2f} clips/s")
        print(f"  model only (batch {args.batch_size:>2})    : {m_rate:9.2f} windows/s = {m_rate / win_per_clip:.2f} clips/s"
              f"   model FLOPs {mfu(m_rate)}, GPU util {util(gu_model)}")
        print(f"  (a) extractor end-to-end : {ext_cps:9.2f} clips/s ({n_windows / ext_s:.2f} windows/s, median {ext_s:.2f} s)"
              f"   model FLOPs {mfu(n_windows / ext_s)}, GPU util {util(gu_ext)}")
        print(f"  (b) naive sequential     : {naive_cps:9.2f} clips/s ({n_windows / naive_s:.2f} windows/s, median {naive_s:.2f} s)"
              f"   model FLOPs {mfu(n_windows / naive_s)}, GPU util {util(gu_naive)}")
        print(f"  ratio (a)/(b) end-to-end : {ext_cps / naive_cps:9.2f}× median, {max(naive_t) / max(ext_t):.2f}× worst, "
              f"{min(naive_t) / min(ext_t):.2f}× best run   (extractor median at {100 * (n_windows / ext_s) / m_rate:.0f} % "
              f"of the model-only rate; max |features (a) − (b)| = {diff:.2e})")
        if peak:
            print(f"  peak used: {peak:g} TFLOP/s")
        if not args.skip_rss:
            short = one_clip_manifest(work, "short", sizes, args.short_seconds)
            long = one_clip_manifest(work, "long", sizes, args.long_seconds)
            rs, rl = peak_rss(short, work / "rss_short", args), peak_rss(long, work / "rss_long", args)
            print(f"  peak RSS, short clip ({args.short_seconds:g} s): main {rs['main_mib']:.0f} MiB, "
                  f"worker {rs['worker_mib']:.0f} MiB")
            print(f"  peak RSS, long clip ({args.long_seconds:g} s) : main {rl['main_mib']:.0f} MiB, "
                  f"worker {rl['worker_mib']:.0f} MiB")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
