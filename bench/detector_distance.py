#!/usr/bin/env python
"""How far mediapipe's signer box lands from dlib's (the reference detector), in pixels and in SignHiera features.

    .venv/bin/python bench/detector_distance.py                      # after `dvc repro` of the synthetic default
    .venv/bin/python bench/detector_distance.py --synthetic-root RUN  # another run's folder

~7 min on 2 CPU cores with the defaults (16 synthetic clips × 3 detection frames, 3 fixture videos × 2), most of
it dlib.

Measured in one run, for (a) sentence clips of a finished synthetic-default run (`--synthetic-root`: its
`data/prepared/target/test.tsv` and `models/pretrained/signhiera.pth`, the trained tiny SignHiera) and (b) the
How2Sign-layout fixture (`tests/how2sign_layout.py`, 1280×720 videos with a photographed face; the `small`
preset with SEEDED RANDOM weights, since no published weights are used here; and, as a trained but
out-of-domain second opinion, the synthetic run's tiny SignHiera on 64² crops of the same boxes):

- per clip, the signer box of each detector under ssvp_slt's geometry (`find_signer_box` in reference mode,
  the same sampled frames for both detectors): side ratio mediapipe / dlib, centre distance, corner distance
  (mean and max of the four corners), in source pixels and in crop pixels (× crop size / dlib side);
- the relative L2 distance between the SignHiera features of the two crops, ‖f(mediapipe) − f(dlib)‖ / ‖f(dlib)‖,
  over the whole feature sequence [N, C] ("seq") and over its time mean [C] ("pooled");
- yardsticks on the same scale: dlib's box moved right by a few pixels, dlib's box zoomed to mediapipe's side
  (same centre) or moved to mediapipe's centre (same side), dlib's crop after the H.264 crf-18 storage of
  resample-mode crops (tiny only; reference-mode crops are lossless), and two different clips (all ordered
  pairs of dlib crops; "seq" then compares the first min(N₁, N₂) units).

Detection is capped (`--synthetic-frames`, `--fixture-frames`: detection_sampling_rate = ⌈frames / cap⌉)
because dlib's CNN detector costs ~1 s (1× upsampling) / ~4.5 s (2×) per 320×180 frame and ~24 s per
1280×720 frame (1×) on 2 CPU cores. On the synthetic 320×180 frames (30-px faces) dlib with the reference's 1×
upsampling mostly finds no face (→ ssvp_slt's centre fallback), so the synthetic comparison uses 2× upsampling
and reports the 1× outcome beside it. Crops are taken as each preset's pipeline takes them (tiny: 25-fps
windows, area resize; small: the reference's source-frame windows, bilinear), straight from the decoded frames.
"""
from __future__ import annotations

import argparse
import itertools
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # how2sign_layout: the How2Sign-layout fixture

from sonar_thesis.config_sections import PRESETS, PreprocessConfig, Preset
from sonar_thesis.extract import build_extractor, merge_windows, normalize_batch
from sonar_thesis.io import read_tsv
from sonar_thesis.crop import crop_frame, get_detector
from sonar_thesis.video_probe import probe_video
from sonar_thesis.signer_box import find_signer_box
from sonar_thesis.video_io import (CROP_X264_PRESET, H264Writer, reference_pad_mask, reference_windows,
                                   resample_indices, _select_frames, window_spans)


def probe(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frames, fps, (H, W)) of a video."""
    info = probe_video(path)
    return (info.n_frames, info.fps, info.shape) if hasattr(info, "n_frames") else tuple(info)


# ---- boxes -----------------------------------------------------------------------------------------
class Timed:
    """A detector that counts its calls, seconds and faces."""
    def __init__(self, det):
        self.det, self.calls, self.seconds, self.faces = det, 0, 0.0, 0

    def __call__(self, frame):
        t = time.perf_counter()
        out = self.det(frame)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        self.faces += len(out)
        return out


def signer_box(path: Path, method: str, det: Timed, sizes: Preset, rate: int):
    cfg = PreprocessConfig(crop_method=method, mode="reference", detection_sampling_rate=rate)
    return find_signer_box(path, cfg, sizes, detector=det)


def geometry(mp, dl) -> dict:
    """Side ratio, centre distance, corner distances (mean, max) of integer box `mp` against `dl`, in pixels."""
    side = lambda b: ((b[2] - b[0]) + (b[3] - b[1])) / 2
    centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
    corners = lambda b: np.array([[b[0], b[1]], [b[2], b[1]], [b[0], b[3]], [b[2], b[3]]], float)
    cd = np.linalg.norm(corners(mp) - corners(dl), axis=1)
    return {"side_mp": side(mp), "side_dl": side(dl), "ratio": side(mp) / side(dl),
            "centre": float(np.linalg.norm(centre(mp) - centre(dl))), "corner_mean": float(cd.mean()),
            "corner_max": float(cd.max())}


def moved(b, dx=0.0, dy=0.0):
    return tuple(int(round(v)) for v in (b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy))


def zoomed(b, side):
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))


# ---- features --------------------------------------------------------------------------------------
def window_plan(path: Path, sizes: Preset, mode: str):
    """(idx: frame index space → source frame, [(slots [T] in that space, pad [T] bool)], n_src, (H, W))."""
    n_src, fps, shape = probe(path)
    if mode == "reference":
        idx = np.arange(n_src)
        plan = [(w.indices, reference_pad_mask(w.padding, sizes.num_frames)) for w in reference_windows(n_src, fps, sizes)]
    else:
        idx = resample_indices(n_src, fps, sizes.target_fps)
        plan = [(w.indices, w.pad) for w in window_spans(len(idx), sizes.num_frames, sizes.sampling_rate)]
    return idx, plan, n_src, shape


def h264_roundtrip(crops: list[np.ndarray], sizes: Preset, work: Path) -> list[np.ndarray]:
    """`crops` [c, c, 3] written as `preprocess_clip` stores resample-mode crops (H.264 crf 18) and read back."""
    keyint = max(1, sizes.num_frames * sizes.sampling_rate // 2)
    path = work / "roundtrip.mp4"
    with H264Writer(path, sizes.crop_size, sizes.crop_size, sizes.target_fps, 18, CROP_X264_PRESET, keyint=keyint) as w:
        for c in crops:
            w.write(c)
    n = len(crops)
    return [f for _, f in _select_frames(path, np.arange(n), n, (sizes.crop_size, sizes.crop_size))]


@torch.inference_mode()
def crop_features(path: Path, boxes: dict[str, tuple], model, sizes: Preset, mode: str,
                  roundtrip: str | None = None,   # also the features of this box's crops after H.264 (resample mode)
                  work: Path | None = None) -> dict[str, torch.Tensor]:
    """SignHiera features [N, C] of the video cropped with each box (one decode pass for all boxes)."""
    idx, plan, n_src, shape = window_plan(path, sizes, mode)
    ks = sorted(set(np.concatenate([s for s, _ in plan]).tolist()))
    if roundtrip:
        ks = list(range(len(idx)))                        # every frame: the stored clip holds them all
    crops = {name: {} for name in boxes}
    for k, frame in _select_frames(path, idx, n_src, shape, ks):
        for name, b in boxes.items():
            crops[name][k] = crop_frame(frame, b, sizes.crop_size, bilinear=mode == "reference")   # [c, c, 3]
    if roundtrip:
        crops[f"{roundtrip} via H.264"] = dict(zip(ks, h264_roundtrip([crops[roundtrip][k] for k in ks], sizes, work)))
    out = {}
    for name in crops:
        feats = []
        for slots, pad in plan:
            x = torch.from_numpy(np.stack([crops[name][k] for k in slots.tolist()]))[None]   # [1, T, c, c, 3]
            f, v = model.extract_features(normalize_batch(x, sizes), torch.from_numpy(pad)[None])
            feats.append(f[0][v[0]].float())
        out[name] = merge_windows(feats)                                                     # [N, C]
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def distances(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(seq, pooled) relative L2 of features `a` against `b`; seq over the first min(N_a, N_b) units."""
    n = min(len(a), len(b))
    return rel(a[:n], b[:n]), rel(a.mean(0), b.mean(0))


LABELS = {"mediapipe": "mediapipe's crop", "zoom only": "dlib's box, mediapipe's side",
          "shift only": "dlib's box, mediapipe's centre", "dlib 1x": "dlib 1× (reference) box",
          "dlib via H.264": "dlib's crop stored as H.264 crf 18"}


# ---- one corpus ------------------------------------------------------------------------------------
def run_corpus(title: str, clips: list[Path], extractors: list[tuple[str, object, Preset, str]], frames_cap: int,
               dlib_up: int, shifts: list[int], also_dlib1: bool, work: Path) -> None:
    """Boxes of both detectors for every clip; features of each extractor `(label, model, sizes, mode)`."""
    t0 = time.perf_counter()
    mp_det = Timed(get_detector("mediapipe", 0.5))
    dl_det = Timed(get_detector("dlib", 0.5, upsample=dlib_up))
    dl1_det = Timed(get_detector("dlib", 0.5, upsample=1)) if also_dlib1 and dlib_up != 1 else None
    rows, t_feat = [], 0.0
    feats_dl = {label: [] for label, *_ in extractors}
    for path in clips:
        n_src, _, (H, W) = probe(path)
        rate = max(1, math.ceil(n_src / frames_cap))
        mp, dl = signer_box(path, "mediapipe", mp_det, PRESETS["small"], rate), signer_box(path, "dlib", dl_det, PRESETS["small"], rate)
        r = {"id": path.stem, "size": f"{W}x{H}", "sampled": mp.n_sampled, "method_mp": mp.method, "method_dl": dl.method}
        if dl1_det is not None:
            dl1 = signer_box(path, "dlib", dl1_det, PRESETS["small"], rate)
            r["method_dl1"] = dl1.method
        g = geometry(mp.box, dl.box)
        r.update(g)
        boxes = {"mediapipe": mp.box, "dlib": dl.box,
                 "zoom only": zoomed(dl.box, g["side_mp"]),
                 "shift only": moved(dl.box, (mp.box[0] + mp.box[2] - dl.box[0] - dl.box[2]) / 2,
                                     (mp.box[1] + mp.box[3] - dl.box[1] - dl.box[3]) / 2)}
        boxes.update({f"dlib +{s} px": moved(dl.box, s) for s in shifts})
        if dl1_det is not None:
            boxes["dlib 1x"] = dl1.box
        r["dist"] = {}
        for label, model, sizes, mode in extractors:
            t = time.perf_counter()
            f = crop_features(path, boxes, model, sizes, mode, "dlib" if mode == "resample" else None, work)
            t_feat += time.perf_counter() - t
            r["dist"][label] = {name: distances(f[name], f["dlib"]) for name in f if name != "dlib"}
            feats_dl[label].append(f["dlib"])
        rows.append(r)

    # ---- report ----
    med = statistics.median
    print(f"\n== {title}: {len(rows)} clips, ≤ {frames_cap} detection frames each "
          f"({sum(r['sampled'] for r in rows)} in all)")
    def per(d: Timed):
        return f"{d.seconds / max(d.calls, 1):.2f} s/frame, faces in {d.faces}/{d.calls} sampled frames"
    print(f"  mediapipe: {per(mp_det)}; dlib ({dlib_up}× upsampling): {per(dl_det)}"
          + (f"; dlib (1×, the reference): {per(dl1_det)}" if dl1_det else ""))
    if dl1_det is not None:
        print(f"  dlib 1× → ssvp_slt's centre fallback in {sum(r['method_dl1'] == 'center' for r in rows)}/{len(rows)} clips")
    fallback = [r["id"] for r in rows if "center" in (r["method_mp"], r["method_dl"])]
    if fallback:
        print(f"  centre fallback (no face) with mediapipe or dlib {dlib_up}×: {', '.join(fallback)}")
    label0, _, sizes0, _ = extractors[0]
    print(f"  {'clip':<28} {'frame':>9} {'side mp/dl':>11} {'ratio':>6} {'centre':>7} {'corners':>12} "
          f"{'@' + str(sizes0.crop_size) + '² crop':>13} {'feat seq':>9} {'pooled':>7}")
    for r in rows:
        crop = sizes0.crop_size / r["side_dl"]
        d = r["dist"][label0]["mediapipe"]
        print(f"  {r['id'][:28]:<28} {r['size']:>9} {r['side_mp']:5.0f}/{r['side_dl']:<5.0f} {r['ratio']:6.3f} "
              f"{r['centre']:7.1f} {r['corner_mean']:5.1f} / {r['corner_max']:4.1f} "
              f"{r['corner_mean'] * crop:6.1f} / {r['corner_max'] * crop:4.1f} {d[0]:9.3f} {d[1]:7.3f}")
    print(f"  pixels, median over clips [min–max]: side ratio {med([r['ratio'] for r in rows]):.3f} "
          f"[{min(r['ratio'] for r in rows):.3f}–{max(r['ratio'] for r in rows):.3f}], centre "
          f"{med([r['centre'] for r in rows]):.1f} px [{min(r['centre'] for r in rows):.1f}–{max(r['centre'] for r in rows):.1f}], "
          f"corners {med([r['corner_mean'] for r in rows]):.1f} px mean [{min(r['corner_mean'] for r in rows):.1f}–"
          f"{max(r['corner_mean'] for r in rows):.1f}], {max(r['corner_max'] for r in rows):.1f} px max")
    for label, _, sizes, mode in extractors:
        print(f"  features of {label} ({sizes.crop_size}² crops, {mode} windows): relative L2 distance to dlib's crop,"
              f" median [min–max] over clips")
        for name in rows[0]["dist"][label]:
            seq = [r["dist"][label][name][0] for r in rows]
            pooled = [r["dist"][label][name][1] for r in rows]
            text = LABELS.get(name, name.replace("dlib", "dlib's box").replace("+", "moved right "))
            print(f"    {text:<36} seq {med(seq):.3f} [{min(seq):.3f}–{max(seq):.3f}]   "
                  f"pooled {med(pooled):.3f} [{min(pooled):.3f}–{max(pooled):.3f}]")
        pairs = [distances(a, b) for a, b in itertools.permutations(feats_dl[label], 2)]
        if pairs:
            seq, pooled = [p[0] for p in pairs], [p[1] for p in pairs]
            print(f"    {'two different clips (dlib crops)':<36} seq {med(seq):.3f} [{min(seq):.3f}–{max(seq):.3f}]   "
                  f"pooled {med(pooled):.3f} [{min(pooled):.3f}–{max(pooled):.3f}]   ({len(pairs)} ordered pairs)")
    print(f"  time: {time.perf_counter() - t0:.0f} s ({t_feat:.0f} s features)")


# ---- main ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic-root", default=None,
                    help="a finished synthetic-default run (its data/prepared/target/test.tsv, models/pretrained); "
                         "default: this checkout, skipped if it has no such run")
    ap.add_argument("--synthetic-clips", type=int, default=16, help="target-test clips, spread over the split")
    ap.add_argument("--synthetic-frames", type=int, default=3, help="detection frames per synthetic clip")
    ap.add_argument("--synthetic-upsample", type=int, default=2,
                    help="dlib upsampling on the synthetic frames (the reference's 1 finds no 30-px face)")
    ap.add_argument("--fixture-videos", type=int, default=3)
    ap.add_argument("--fixture-frames", type=int, default=2, help="detection frames per fixture video")
    ap.add_argument("--fixture-preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--shifts", default="2,4,8", help="yardstick: dlib's box moved right by these source pixels")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-fixture", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shifts = [int(s) for s in args.shifts.split(",") if s]
    t0 = time.perf_counter()
    print(f"detector distance: mediapipe vs dlib CNN under ssvp_slt's box geometry; torch threads {torch.get_num_threads()}")

    work = Path(tempfile.mkdtemp(prefix="bench-detdist-"))
    try:
        root = Path(args.synthetic_root or ROOT)
        manifest, ckpt = root / "data/prepared/target/test.tsv", root / "models/pretrained/signhiera.pth"
        tiny = build_extractor("tiny", ckpt).eval() if ckpt.is_file() else None
        trained = (f"the trained tiny SignHiera ({ckpt})", tiny, PRESETS["tiny"], "resample")
        if not args.skip_synthetic:
            if not (manifest.is_file() and tiny is not None):
                print(f"(synthetic skipped: {manifest} or {ckpt} missing — run `dvc repro` or pass --synthetic-root)")
            else:
                rows = read_tsv(manifest)
                step = max(1, len(rows) // args.synthetic_clips)
                clips = [root / r["video_path"] for r in rows[::step][:args.synthetic_clips]]
                run_corpus(f"(a) SYNTHETIC default corpus, target-test sentence clips (one in {step} of {len(rows)})", clips, [trained], args.synthetic_frames,
                           args.synthetic_upsample, shifts, True, work)
        if not args.skip_fixture:
            from how2sign_layout import make_how2sign_fixture
            t = time.perf_counter()
            make_how2sign_fixture(work / "fixture", videos={"test": args.fixture_videos})
            clips = sorted((work / "fixture" / "raw_videos").glob("*.mp4"))
            print(f"\n(fixture: {len(clips)} full videos of {probe(clips[0])[0]} frames made in "
                  f"{time.perf_counter() - t:.0f} s)")
            torch.manual_seed(0)
            small = build_extractor(args.fixture_preset, None).eval()
            extractors = [(f"{args.fixture_preset} SignHiera with RANDOM weights (seed 0)", small,
                           PRESETS[args.fixture_preset], "reference")]
            if tiny is not None:   # a trained model, if only on synthetic data
                extractors.append(trained)
            run_corpus("(b) How2Sign-layout fixture (1280×720, a photographed face)", clips, extractors,
                       args.fixture_frames, 1, shifts, False, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
