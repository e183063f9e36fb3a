"""The results browser (nbs/15_results.ipynb): the page built from fake results, then driven in a real
headless Chromium (Debian's `chromium`, over the DevTools protocol): filter by signer, play a clip, open a
permalink, sort, and a screenshot in tests/artifacts/results_browser.png.

Chromium is required: without it the browser test FAILS with the install command (it never skips).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import av
import pytest

from conftest import ROOT
from sonar_thesis.analysis import AnalysisConfig, analyse
from sonar_thesis.config import Config
from sonar_thesis.config_sections import DataConfig, PreprocessConfig
from sonar_thesis.evaluate import EvaluateConfig, evaluate_all, make_fake_predictions
from sonar_thesis.extract_loader import write_test_clip
from sonar_thesis.io import read_json, read_tsv, write_json, write_tsv
from sonar_thesis.results import HeadlessChromium, build_results_page, find_chromium, page_load_ms

N = 60                                     # two pages of 50
QUALITY = {"zeroshot": 0.2, "stage2": 0.9, "ablation": 0.6, "landmarks": 0.5}
N_CLIPS = 6
SCREENSHOT = ROOT / "tests" / "artifacts" / "results_browser.png"


def _fake_run(root: Path, synthetic: bool = True, n_clips: int = N_CLIPS) -> tuple[Config, dict]:
    """Fake predictions → evaluate → analysis → a crop manifest with `n_clips` clips → the page."""
    ecfg = EvaluateConfig(systems={s: f"predictions/{s}" for s in QUALITY}, metrics=["bleu4", "chrf", "rougeL"],
                          bootstrap_samples=20, results_dir=str(root / "results"))
    for s, q in QUALITY.items():
        make_fake_predictions(root / "predictions" / s, s, q, n=N, n_source=4, synthetic=synthetic)
    evaluate_all(ecfg, out_dir=root, root=root)
    acfg = AnalysisConfig(n_samples=5, bootstrap_samples=20, output_dir=str(root / "results" / "analysis"))
    analyse(root / "results", acfg, list(QUALITY), out_dir=acfg.output_dir)
    ids = [r["id"] for r in read_tsv(root / "results" / "stage2" / "scores.tsv")]
    crops = root / "crops" / "target"
    for k, cid in enumerate(ids[:n_clips]):
        write_test_clip(crops / "test" / f"{cid}.mp4", n_frames=40, size=64, seed=k)
    write_tsv(crops / "test.tsv", [{"id": c, "video_path": f"test/{c}.mp4", "n_frames": 40, "translation": ""}
                                   for c in ids[:n_clips]], ("id", "video_path", "n_frames", "translation"))
    data = {} if synthetic else {"root": str(root / "how2sign")}
    cfg = Config(dataset="synthetic" if synthetic else "how2sign", evaluate=ecfg, analysis=acfg,
                 preprocess=PreprocessConfig(output_dir=str(root / "crops")),
                 data=DataConfig(prepared_dir=str(root / "prepared"), **data))
    return cfg, build_results_page(cfg, root / "browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("results_browser")
    cfg, summary = _fake_run(root)
    page = root / "browser" / "index.html"
    rows = read_tsv(root / "results" / "stage2" / "scores.tsv")
    return {"root": root, "cfg": cfg, "summary": summary, "page": page, "html": page.read_text(encoding="utf-8"),
            "rows": rows}


def _page_data(html: str) -> dict:
    m = re.search(r'<script id="rb-data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


# ---------------------------------------------------------------- (a) the page, without a browser

def test_page_holds_every_sentence_system_and_diff(site):
    html, rows = site["html"], site["rows"]
    assert len(rows) == N and site["summary"]["rows"] == N
    for r in rows:
        assert f'"id":"{r["id"]}"' in html, r["id"]
    data = _page_data(html)
    assert [r["id"] for r in data["rows"]] == [r["id"] for r in rows]
    assert all(set(r["sys"]) == set(QUALITY) for r in data["rows"])
    assert "<ins>" in html and "<del>" in html                      # word-level diff markup, built in Python
    zs = next(r for r in data["rows"] if r["sys"]["zeroshot"]["k"] != "exact")["sys"]["zeroshot"]
    assert "<ins>" in zs["d"] or "<del>" in zs["d"]
    assert {r["signer"] for r in data["rows"]} == {"signer1", "signer2", "signer3"}


def test_page_is_self_contained_and_labelled_synthetic(site):
    html = site["html"]
    assert 'id="rb-synthetic"' in html and "SYNTHETIC DATA" in html and html.count("SYNTHETIC") >= 3
    assert "http://" not in html and "https://" not in html        # nothing fetched from the network
    assert not re.search(r'<(link|img|iframe)\b', html) and not re.search(r'<script[^>]*\bsrc=', html)
    assert html.count('preload="none"') == 1                        # in the row template: every video lazy
    assert html.count("</script>") == 2                             # the data cannot end its block early


def test_clips_are_browser_mp4s(site):
    clips = site["root"] / "browser" / "clips"
    mp4s = sorted(clips.glob("*.mp4"))
    assert len(mp4s) == N_CLIPS and len(list(clips.glob("*.jpg"))) == N_CLIPS
    data = mp4s[0].read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")              # +faststart: index before the media
    with av.open(str(mp4s[0])) as c:
        st = c.streams.video[0]
        assert (st.codec_context.name, st.codec_context.pix_fmt, st.width, st.height) == ("h264", "yuv420p", 64, 64)
        assert st.frames == 40 and float(st.average_rate) == 25.0
    assert site["summary"]["rows_without_clip"] == N - N_CLIPS


def test_real_data_has_no_banner_and_stale_categories_are_noted(tmp_path):
    cfg, summary = _fake_run(tmp_path, synthetic=False, n_clips=1)
    html = (tmp_path / "browser" / "index.html").read_text(encoding="utf-8")
    assert "SYNTHETIC" not in html and "How2Sign test set" in html and summary["notes"] == []
    cats = tmp_path / "results" / "analysis" / "categories.json"
    data = read_json(cats)
    data["counts"]["stage2"]["exact"] += 1
    write_json(cats, data)
    again = build_results_page(cfg, tmp_path / "browser")
    assert again["clips_reused"] == 1 and any("stage2" in n and "differ" in n for n in again["notes"])


# ---------------------------------------------------------------- (b) in a real browser

@pytest.fixture(scope="module")
def browser():
    try:
        find_chromium()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    with HeadlessChromium(width=1400, height=1000) as b:
        yield b


def _rows_shown(b) -> int:
    return b.eval("document.querySelectorAll('#rb-rows > tr.row').length")


def _select(b, which: str, value: str) -> None:
    b.eval(f"(function () {{ var s = document.getElementById('rb-{which}'); s.value = {json.dumps(value)};"
           " s.dispatchEvent(new Event('change')); })()")


def test_page_in_real_chromium(site, browser):
    b, rows = browser, site["rows"]
    url = site["page"].resolve().as_uri()
    b.goto(url)
    b.wait_for("document.documentElement.dataset.ready")
    assert _rows_shown(b) == 50 and "1–50 of 60 sentences" in b.eval("document.getElementById('rb-status').textContent")

    # filter by signer: every row of that signer, no other
    _select(b, "signer", "signer2")
    want = sum(r["signer"] == "signer2" for r in rows)
    assert _rows_shown(b) == want == 20
    assert set(b.eval("[...document.querySelectorAll('#rb-rows > tr.row dd:first-of-type')].map(e => e.textContent)")) == {"signer2"}
    # text filter on top: one sentence by its id
    target = next(r for r in rows if r["signer"] == "signer2")
    b.eval(f"var q = document.getElementById('rb-q'); q.value = {json.dumps(target['id'])}; q.dispatchEvent(new Event('input'))")
    assert _rows_shown(b) == 1
    b.eval("document.getElementById('rb-reset').click()")
    assert _rows_shown(b) == 50

    # sort by a system's sentence BLEU, descending
    _select(b, "sort", "s:zeroshot:b")
    b.eval("document.getElementById('rb-dir').click()")
    first = b.eval("document.querySelector('#rb-rows > tr.row').id")
    assert float(next(r for r in read_tsv(site["root"] / "results" / "zeroshot" / "scores.tsv")
                      if r["id"] == first)["bleu"]) == max(float(r["bleu"]) for r in
                                                          read_tsv(site["root"] / "results" / "zeroshot" / "scores.tsv"))
    b.eval("document.getElementById('rb-reset').click()")

    # play a clip: H.264 decodes and time advances
    assert b.eval("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.640015\"')") in ("probably", "maybe")
    played = b.eval("""(async () => {
        const v = document.querySelector('#rb-rows video');
        v.muted = true; await v.play();
        await new Promise(r => setTimeout(r, 800));
        return {t: v.currentTime, rs: v.readyState, err: v.error && v.error.code, src: v.currentSrc};
    })()""")
    assert played["err"] is None and (played["t"] > 0 or played["rs"] >= 2), played
    assert played["src"].startswith("file://") and played["src"].endswith(".mp4")
    b.eval("document.querySelector('#rb-rows video').pause()")

    # permalink to a sentence on page 2: opens that page, scrolls to the row, highlights it
    far = rows[55]["id"]
    b.goto("about:blank")
    b.goto(f"{url}#{far}")
    b.wait_for("document.documentElement.dataset.ready")
    state = b.eval(f"""(() => {{ const e = document.getElementById({json.dumps(far)}); const r = e.getBoundingClientRect();
        return {{hl: e.classList.contains('hl'), top: r.top, bottom: r.bottom, h: innerHeight,
                 page: document.getElementById('rb-page').textContent}}; }})()""")
    assert state["hl"] and state["page"] == "page 2 / 2" and 0 <= state["top"] < state["h"], state
    # a permalink clicked inside the page, to a row hidden by a filter: the filter is cleared
    _select(b, "signer", "signer1")
    near = next(r["id"] for r in rows[:10] if r["signer"] == "signer2")
    b.eval(f"location.hash = {json.dumps(near)}")
    b.wait_for(f"document.getElementById({json.dumps(near)}) && document.getElementById({json.dumps(near)}).classList.contains('hl')", timeout=5)
    assert b.eval("document.getElementById('rb-signer').value") == ""
    assert b.eval(f"document.querySelectorAll('tr.row.hl').length") == 1

    # what a reader sees first: the top of the page, a clip started
    b.goto("about:blank")
    b.goto(url)
    b.wait_for("document.documentElement.dataset.ready")
    b.eval("(async () => { const v = document.querySelector('#rb-rows video'); v.muted = true; await v.play();"
           " await new Promise(r => setTimeout(r, 500)); v.pause(); })()")
    b.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 20_000
    assert page_load_ms(b, site["page"], runs=1)["ready_ms"] < 2000


# ---------------------------------------------------------------- the CLI command (nbs/19_cli.ipynb)

def test_cli_results_page(site, tmp_path):
    import subprocess
    from conftest import VENV_BIN
    from sonar_thesis.config import save_config
    params = save_config(site["cfg"], tmp_path / "params.yaml")
    run = lambda *a: subprocess.run([str(VENV_BIN / "sonar-thesis"), "results-page", *a], capture_output=True,
                                    text=True, timeout=300, cwd=tmp_path)
    r = run("--params", str(params), "--output", str(tmp_path / "page"), "--no-clips")
    assert r.returncode == 0, r.stderr
    assert f"{N} sentences, 4 systems, 0 clips (synthetic data)" in r.stdout and (tmp_path / "page" / "index.html").is_file()
    site["cfg"].evaluate.results_dir = str(tmp_path / "nothing")
    try:
        r = run("--params", str(save_config(site["cfg"], tmp_path / "empty.yaml")), "--output", str(tmp_path / "p2"))
    finally:
        site["cfg"].evaluate.results_dir = str(site["root"] / "results")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "run the evaluate stage first" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
