#!/usr/bin/env python
"""Peak memory of `translate_video` on a 10-minute clip vs a 10-second clip: streaming keeps it flat.

    .venv/bin/python bench/translate_memory.py                        # tiny preset, CPU: ~2 min on 2 cores
    .venv/bin/python bench/translate_memory.py --preset sonar         # full size: 50.8 M + 752 M + 867 M params
    .venv/bin/python bench/translate_memory.py --preset sonar --device cuda --params params.yaml   # real checkpoints

Each measurement is a fresh Python process (`--child`) that builds the models, translates one clip and
reports its peak RSS (`getrusage`, the kernel's high-water mark: everything the process ever held,
model weights included) and, on CUDA, the allocator's peak. Clips are full frames (`--size`, default
320x180 for tiny, 1280x720 for sonar) with moving colour blobs at 25 fps, written with PyAV; the signer box
is searched as in `sonar-thesis translate` (no face here: the centre crop), then cropped per window.

By default every window goes through SignHiera (`stop_early=False`): the worst case for memory, and the
one that shows the streaming. `--stop-early` measures what `translate` does by default (SignHiera stops
once `data.max_source_length` features are in). `--stacked` adds the pre-streaming path on the long clip
(every window decoded, stacked and normalised at once, then SignHiera in batches of 8) as a control.

Random weights (`--params` not given): the tokenizer is a stand-in that prints ids (the 256k SentencePiece
model is a few MB and not what this measures); `model.max_len` is 16.
Prints one JSON object: both peaks, their ratio (the target: <= 1.2), seconds and windows.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHORT_S, LONG_S = 10, 600


def write_clip(path: Path, seconds: float, size: tuple[int, int], fps: int = 25) -> Path:
    """A full-frame clip of `seconds` with three moving colour blobs (50 distinct frames, cycled)."""
    from sonar_thesis.video_io import write_video
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    def frame(i: int) -> np.ndarray:
        img = np.full((h, w, 3), 40, np.float32)
        for k, col in enumerate(((230, 60, 60), (60, 200, 80), (70, 90, 230))):
            cx = w * (0.5 + 0.25 * np.sin(2 * np.pi * (i / 50 + k / 3)))
            cy = h * (0.5 + 0.25 * np.cos(2 * np.pi * (i / 25 + k / 3)))
            img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.01 * w * w))[..., None] * np.array(col, np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)
    frames = [frame(i) for i in range(50)]
    return write_video(path, (frames[i % 50] for i in range(int(seconds * fps))), fps=fps, crf=23, preset="ultrafast")


class _Ids:
    """Tokenizer stand-in for random weights: the prompt of `eng_Latn` and ids as text."""
    def prompt(self, lang: str = "eng_Latn") -> list[int]:
        return [3, 256_047]
    def decode(self, ids) -> str:
        return " ".join(str(int(i)) for i in ids)


def child(a: argparse.Namespace) -> None:
    """One measurement in this (fresh) process → one JSON line on stdout."""
    import torch
    from sonar_thesis.config import Config, load_config
    from sonar_thesis.assemble import Pretrained, build_translator, load_pretrained
    from sonar_thesis.datasets import clip_windows, normalize_windows
    from sonar_thesis.extract import merge_windows
    from sonar_thesis.translate import translate_video
    from sonar_thesis.signhiera import build_signhiera
    from sonar_thesis.signer_box import find_signer_box
    dev = torch.device(a.device)
    t0 = time.perf_counter()
    if a.params:
        cfg = load_config(a.params)
        models = load_pretrained(cfg, device=dev)
    else:
        cfg = Config(preset=a.preset)
        if a.preset != "sonar":
            from sonar_thesis.sonar import SonarTokenizer, train_synthetic_tokenizer
            tok = SonarTokenizer(train_synthetic_tokenizer(["mix the flour", "cut the paper"] * 5, a.tmp, 30))
            tr = build_translator(a.preset, len(tok))
        else:
            tok, tr = _Ids(), build_translator(a.preset)
        models = Pretrained(build_signhiera(a.preset).to(dev).eval(), tr.to(dev).eval(), tok)
        cfg.model.max_len = 16
    cfg.preprocess.crop_method = "none" if a.no_crop_search else cfg.preprocess.crop_method
    t_load = time.perf_counter() - t0
    if a.child == "stacked":                      # the pre-streaming path: all windows stacked, then normalised
        with torch.inference_mode():
            box = find_signer_box(a.clip, cfg.preprocess, cfg.sizes).box
            frames, pad = clip_windows(a.clip, cfg.sizes, box)
            x, p = normalize_windows(torch.from_numpy(frames).to(dev), cfg.sizes), torch.from_numpy(pad).to(dev)
            chunks = []
            for s in range(0, len(x), 8):
                out = models.signhiera.extract_features(x[s: s + 8], p[s: s + 8])
                chunks += [f[v] for f, v in zip(out.features, out.valid)]
            n_units, text, windows = len(merge_windows(chunks)), "", len(frames)
    else:
        from sonar_thesis import translate as T
        seen = []
        orig = T.iter_clip_windows
        def counting(*args, **kw):
            for w in orig(*args, **kw):
                seen.append(1)
                yield w
        T.iter_clip_windows = counting
        text, t = translate_video(a.clip, models, cfg, device=dev, stop_early=a.stop_early)
        windows, n_units = len(seen), None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024          # Linux: KiB
    out = dict(mode=a.child, peak_rss_mib=round(peak / 2**20, 1), windows=windows, load_s=round(t_load, 1),
               seconds=round(time.perf_counter() - t0 - t_load, 1), text=text[:60])
    if dev.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    print(json.dumps(out))


def measure(mode: str, clip: Path, a: argparse.Namespace, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--clip", str(clip), "--preset", a.preset, "--device", a.device,
           "--tmp", str(tmp)] + (["--params", a.params] if a.params else []) + \
          (["--stop-early"] if a.stop_early else []) + (["--no-crop-search"] if a.no_crop_search else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{mode} on {clip.name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=["tiny", "small", "sonar"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params", help="params.yaml whose model.* checkpoints to load (default: random weights)")
    ap.add_argument("--size", help="full-frame WxH (default: 320x180 tiny, 1280x720 otherwise)")
    ap.add_argument("--short", type=float, default=SHORT_S, help="seconds of the short clip")
    ap.add_argument("--long", type=float, default=LONG_S, help="seconds of the long clip")
    ap.add_argument("--stop-early", action="store_true", help="SignHiera stops at data.max_source_length features")
    ap.add_argument("--stacked", action="store_true", help="also the pre-streaming path on the long clip (control)")
    ap.add_argument("--no-crop-search", action="store_true", help="centre crop without face detection")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--clip", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    size = tuple(int(v) for v in (a.size or ("320x180" if a.preset == "tiny" else "1280x720")).split("x"))
    with tempfile.TemporaryDirectory(prefix="translate-memory-") as d:
        tmp = Path(d)
        t = time.perf_counter()
        short, long = write_clip(tmp / "short.mp4", a.short, size), write_clip(tmp / "long.mp4", a.long, size)
        print(f"clips: {a.short:g} s and {a.long:g} s at {size[0]}x{size[1]}, 25 fps ({time.perf_counter() - t:.0f} s)",
              file=sys.stderr)
        res = {"preset": a.preset, "device": a.device, "frame_size": f"{size[0]}x{size[1]}",
               "stop_early": a.stop_early, "weights": a.params or "random"}
        res["short"] = measure("stream", short, a, tmp)
        res["long"] = measure("stream", long, a, tmp)
        res["ratio_long_over_short"] = round(res["long"]["peak_rss_mib"] / res["short"]["peak_rss_mib"], 3)
        if a.stacked:
            res["long_stacked"] = measure("stacked", long, a, tmp)
            res["ratio_stacked_long_over_short"] = round(res["long_stacked"]["peak_rss_mib"] /
                                                         res["short"]["peak_rss_mib"], 3)
    res["target"] = "ratio_long_over_short <= 1.2"
    res["ok"] = res["ratio_long_over_short"] <= 1.2
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
