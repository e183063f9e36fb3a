#!/usr/bin/env python
"""Load time of the results browser (nbs/15_results.ipynb) for a How2Sign-size test split, in headless Chromium.

    flock /tmp/heavy.lock .venv/bin/python bench/results_page.py              # 2,357 rows: ~3 min on 2 cores
    .venv/bin/python bench/results_page.py --rows 500 --clip-size 64           # quick look

Builds fake results for the four systems (`evaluate.make_fake_predictions`, `--rows` target sentences,
evaluated and analysed as the stages do, with few bootstrap samples), a crop manifest whose rows share
`--sources` distinct synthetic clips of `--clip-size` px (`extract.write_test_clip`; every id still gets
its own re-encoded MP4 and poster, as for How2Sign), then `build_results_page`. Chromium (Debian's, as in
the tests) opens the page from file:// `--runs` times, cold (about:blank in between).

Prints one JSON object: `ready_ms` (median, navigation start → first page of rows rendered: what a reader
waits for) and `load_ms` (median, the load event: the first page's posters included) — the target for both
is ≤ 2000 (exit code 1 otherwise) —, the page size, the build time and, as a control, how long rendering
all rows at once (no paging) takes in the same browser.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HOW2SIGN_TEST = 2357
QUALITY = {"zeroshot": 0.05, "stage2": 0.45, "ablation": 0.4, "landmarks": 0.3}


def build(root: Path, rows: int, sources: int, clip_size: int, clip_frames: int) -> tuple[dict, float]:
    from sonar_thesis.analysis import AnalysisConfig, analyse
    from sonar_thesis.config import Config
    from sonar_thesis.config_sections import DataConfig, PreprocessConfig
    from sonar_thesis.evaluate import EvaluateConfig, evaluate_all, make_fake_predictions
    from sonar_thesis.extract_loader import write_test_clip
    from sonar_thesis.io import read_tsv, write_tsv
    from sonar_thesis.results import build_results_page

    ecfg = EvaluateConfig(systems={s: f"predictions/{s}" for s in QUALITY}, metrics=["bleu4", "chrf", "rougeL"],
                          bootstrap_samples=20, results_dir=str(root / "results"))
    for s, q in QUALITY.items():
        make_fake_predictions(root / "predictions" / s, s, q, n=rows)
    evaluate_all(ecfg, out_dir=root, root=root)
    acfg = AnalysisConfig(n_samples=5, bootstrap_samples=20, output_dir=str(root / "results" / "analysis"))
    analyse(root / "results", acfg, list(QUALITY), out_dir=acfg.output_dir)
    ids = [r["id"] for r in read_tsv(root / "results" / "stage2" / "scores.tsv")]
    crops = root / "crops" / "target"
    for k in range(sources):
        write_test_clip(crops / "src" / f"{k}.mp4", n_frames=clip_frames, size=clip_size, seed=k)
    write_tsv(crops / "test.tsv", [{"id": c, "video_path": f"src/{i % sources}.mp4", "n_frames": clip_frames,
                                    "translation": ""} for i, c in enumerate(ids)],
              ("id", "video_path", "n_frames", "translation"))
    preset = "tiny" if clip_size == 64 else "sonar"            # the page's clip size is the preset's crop size
    cfg = Config(preset=preset, evaluate=ecfg, analysis=acfg, preprocess=PreprocessConfig(output_dir=str(root / "crops")),
                 data=DataConfig(prepared_dir=str(root / "prepared")))
    t0 = time.perf_counter()
    summary = build_results_page(cfg, root / "browser")
    return summary, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=HOW2SIGN_TEST)
    ap.add_argument("--sources", type=int, default=24, help="distinct synthetic source clips")
    ap.add_argument("--clip-size", type=int, default=224, choices=(64, 224), help="crop side (tiny 64, sonar 224)")
    ap.add_argument("--clip-frames", type=int, default=25)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="build here and keep it (default: a temp folder)")
    a = ap.parse_args(argv)
    from sonar_thesis.results import HeadlessChromium, page_load_ms

    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        summary, build_s = build(root, a.rows, a.sources, a.clip_size, a.clip_frames)
        page = root / "browser" / "index.html"
        with HeadlessChromium(width=1400, height=1000) as b:
            timing = page_load_ms(b, page, runs=a.runs)
            rendered = b.eval("document.querySelectorAll('#rb-rows > tr.row').length")
            all_ms = b.eval("""(() => { const s = document.getElementById('rb-size'); s.add(new Option('all', '100000'));
                const t0 = performance.now(); s.value = '100000'; s.dispatchEvent(new Event('change'));
                void document.body.offsetHeight; return performance.now() - t0; })()""")
            all_rows = b.eval("document.querySelectorAll('#rb-rows > tr.row').length")
        out = {"rows": summary["rows"], "systems": len(summary["systems"]), "page_mb": round(summary["page_bytes"] / 1e6, 2),
               "clips": summary["clips"], "clip_size": a.clip_size, "build_s": round(build_s, 1),
               "ready_ms": timing["ready_ms"], "load_ms": timing["load_ms"], "ready_all_ms": timing["ready_all_ms"],
               "rows_rendered": rendered, "target_ms": 2000, "ok": max(timing["ready_ms"], timing["load_ms"]) <= 2000,
               "all_rows_render_ms": round(all_ms, 1), "all_rows_rendered": all_rows}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
