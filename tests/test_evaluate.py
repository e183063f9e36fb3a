"""Evaluate → analysis → figures on fake predictions (generated from nbs/13_evaluate, 14_analysis, 18_figures).

One module-scoped run: three fake synthetic systems (zero-shot, a perfect stage 2, a noisy ablation) are
evaluated, compared, analysed and drawn; the tests then check the files. METEOR (a ~15 s Java start) runs
once, in its own test, and only where Java exists.
"""
from __future__ import annotations

import re
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from sonar_thesis import evaluate as E
from sonar_thesis import figures as F
from sonar_thesis import tables as T
from sonar_thesis.analysis import CATEGORIES, AnalysisConfig, analyse
from sonar_thesis.config_checks import ConfigError
from sonar_thesis.io import read_json, read_tsv, write_tsv
from sonar_thesis.metrics import close_meteor, java_path

N = 48
QUALITY = {"zeroshot": 0.3, "stage2": 1.0, "ablation": 0.6}
FAST = dict(metrics=["bleu1", "bleu2", "bleu3", "bleu4", "chrf", "rougeL", "cider"], coco_tokenizer="simple",
            bootstrap_samples=200)
FIGURES = ("learning_curves", "metric_bars", "bleu_by_length", "bleu_by_signer")


def _dvclive_run(run_dir, k):
    from dvclive import Live
    with Live(str(run_dir / "dvclive"), save_dvc_exp=False, dvcyaml=None) as live:
        for step in range(0, 60, 10):
            live.step = step
            live.log_metric("train/loss", 3.0 / (1 + step / 20) + 0.1 * k)
            if step % 20 == 0:
                live.log_metric("val/bleu_4", 2.0 * step / 10 + k)


def _pipeline(root, synthetic=True, systems=QUALITY):
    cfg = E.EvaluateConfig(systems={s: f"predictions/{s}" for s in (*systems, "landmarks")}, **FAST)
    for s, q in systems.items():
        E.make_fake_predictions(root / "predictions" / s, s, q, n=N, n_source=6, synthetic=synthetic)
    run = E.evaluate_all(cfg, out_dir=root, root=root)
    ana = analyse(root / "results", AnalysisConfig(n_samples=10, bootstrap_samples=200), list(systems),
                  shared_words=set(E.FAKE_SHARED_WORDS), out_dir=root / "results" / "analysis")
    for k, stage in enumerate(("stage1", "stage2")):
        _dvclive_run(root / "models" / stage, k)
    fcfg = F.FiguresConfig(runs={"stage1": "models/stage1", "stage2": "models/stage2", "pretrain": "models/none"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)           # e.g. a figure wider than its column
        made = F.make_figures(fcfg, "results", "results/analysis", "synthetic" if synthetic else "how2sign",
                              list(cfg.systems), root=root)
    return cfg, run, ana, made


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    t0 = time.perf_counter()
    cfg, run, ana, made = _pipeline(root)
    return dict(root=root, cfg=cfg, run=run, ana=ana, made=made, seconds=time.perf_counter() - t0)


def test_metrics_json_flat_and_sane(synthetic_run):
    root = synthetic_run["root"]
    assert synthetic_run["seconds"] < 40
    assert set(synthetic_run["run"]["results"]) == set(QUALITY)
    assert synthetic_run["run"]["missing"] == {"landmarks": str(root / "predictions" / "landmarks" / "predictions.tsv")}
    for s in QUALITY:
        flat = read_json(root / "metrics" / f"{s}.json")
        assert all(isinstance(v, (int, float, bool)) for v in flat.values()), flat    # what dvc metrics prints
        assert flat["n"] == N and flat["synthetic"] is True and flat["source_n"] == 6
        for m in ("bleu1", "bleu2", "bleu3", "bleu4", "chrf", "rougeL", "cider"):
            assert m in flat
        for m in ("bleu1", "bleu2", "bleu3", "bleu4", "chrf", "rougeL"):
            assert 0 <= flat[f"{m}_ci_low"] <= flat[m] <= flat[f"{m}_ci_high"] <= 100
        assert not any(k.startswith("latency") for k in flat)                   # measured: kept in timings/
    latency = read_json(root / "timings" / "latency.json")
    for s in QUALITY:
        for c in E.TIMING_COLUMNS:
            assert latency[s][c]["median_ms"] <= latency[s][c]["p90_ms"]
    perfect = read_json(root / "metrics" / "stage2.json")
    for m in ("bleu1", "bleu2", "bleu3", "bleu4", "chrf", "rougeL"):
        assert perfect[m] == pytest.approx(100.0)
    zs = read_json(root / "metrics" / "zeroshot.json")
    assert zs["bleu4"] < read_json(root / "metrics" / "ablation.json")["bleu4"] < 100


def test_evaluation_record_has_signature_and_count(synthetic_run):
    ev = read_json(synthetic_run["root"] / "results" / "zeroshot" / "evaluation.json")
    assert ev["n"] == N and ev["n_rows"] == N + 6 and ev["synthetic"] is True and "synthetic" in ev["data"]
    assert ev["signatures"]["bleu4"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "rouge-score" in ev["implementations"]["rougeL"]
    assert ev["info"]["system"] == "zeroshot"
    rows = read_tsv(synthetic_run["root"] / "results" / "zeroshot" / "scores.tsv", required=E.SCORE_COLUMNS)
    assert len(rows) == N and all(r["domain"] == "target" for r in rows)


def test_paired_comparison_against_zeroshot(synthetic_run):
    comp = read_json(synthetic_run["root"] / "metrics" / "comparison.json")
    assert comp["reference"] == "zeroshot" and set(comp["comparisons"]) == {"stage2", "ablation"}
    s2 = comp["comparisons"]["stage2"]
    assert s2["n_common"] == N
    for m in ("bleu4", "chrf", "rougeL"):
        assert s2[m]["delta"] > 0 and s2[m]["ci_low"] > 0 and s2[m]["p_value"] < 0.05 and s2[m]["significant"]
        assert s2[m]["system"] == pytest.approx(100.0)


def test_analysis_categories_count_to_n(synthetic_run):
    root, ana = synthetic_run["root"], synthetic_run["ana"]
    cats = read_json(root / "results" / "analysis" / "categories.json")
    assert cats["synthetic"] is True
    for s, c in cats["counts"].items():
        assert sum(c[k] for k in CATEGORIES) == c["total"] == N
    assert cats["counts"]["stage2"]["exact"] == N
    samples = read_json(root / "results" / "analysis" / "samples.json")
    assert len(samples["samples"]) == 10 and "synthetic" in samples["title"]
    assert set(samples["samples"][0]["systems"]) == set(QUALITY)
    md = (root / "results" / "analysis" / "samples.md").read_text()
    assert "synthetic" in md.splitlines()[0]
    by_len = read_tsv(root / "results" / "analysis" / "by_length.tsv")
    assert sum(int(r["n"]) for r in by_len if r["system"] == "zeroshot") == N
    by_vocab = read_tsv(root / "results" / "analysis" / "by_vocab.tsv")
    assert {(r["system"], r["vocab_type"]) for r in by_vocab} == {(s, t) for s in QUALITY for t in ("shared", "domain-specific")}
    assert all(float(r["recall"]) == 100.0 for r in by_vocab if r["system"] == "stage2")
    assert ana["by_signer"] and {r["signer"] for r in ana["by_signer"]} == {"signer1", "signer2", "signer3"}


def test_figures_written_and_labelled_synthetic(synthetic_run):
    made, root = synthetic_run["made"], synthetic_run["root"]
    assert made["synthetic"] is True and made["skipped"] == {}
    for name in FIGURES:
        png, pdf = root / "figures" / f"{name}.png", root / "figures" / f"{name}.pdf"
        assert png.stat().st_size > 5000 and pdf.stat().st_size > 5000
        assert pdf.read_bytes().startswith(b"%PDF")
        im = Image.open(png)
        assert "synthetic" in im.text["Title"].lower() and "not How2Sign" in im.text["Title"]
        assert b"SYNTHETIC" in pdf.read_bytes()                  # /Title in the PDF info dictionary
        width_in = im.size[0] / 200
        assert width_in <= 6.8 * 1.03
        if name.startswith("bleu_by"):
            assert width_in <= 3.3 * 1.03, (name, width_in)      # single column, text stays >= 8 pt


def test_figure_objects_say_synthetic(synthetic_run):
    root = synthetic_run["root"]
    evals = F.load_evaluations(root / "results")
    rows = read_tsv(root / "results" / "analysis" / "by_length.tsv")
    figs = [F.plot_metric_bars(evals, synthetic=True), F.plot_bleu_by_length(rows, synthetic=True),
            F.plot_learning_curves({"stage2": F.read_dvclive(root / "models" / "stage2")}, synthetic=True)]
    for fig in figs:
        assert "synthetic" in F.figure_text(fig).lower()
        for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
            if t.get_text().strip():
                assert t.get_fontsize() >= 8, (t.get_text(), t.get_fontsize())
    with pytest.raises(TypeError):
        F.plot_metric_bars(evals)                                  # synthetic= has no default
    with pytest.raises(ValueError, match="contradicts"):
        F.plot_metric_bars(evals, synthetic=False)
    figs[0].suptitle("Metrics")                                    # a title that forgets the data label
    with pytest.raises(ValueError, match="does not say so"):
        F.save_figure(figs[0], "bad", F.FiguresConfig(), synthetic=True, out_dir=root / "bad")
    import matplotlib.pyplot as plt
    plt.close("all")


def test_latex_table_valid_with_published_rows(synthetic_run):
    root = synthetic_run["root"]
    tex = (root / "figures" / "results_table.tex").read_text()
    md = (root / "figures" / "results_table.md").read_text()
    assert T.validate_latex_table(tex) == []
    chk = synthetic_run["made"]["latex_check"]
    assert chk["problems"] == [] and (chk["compiled"] is None or chk["compiled"])
    assert "\\toprule" in tex and "\\bottomrule" in tex and tex.count("\\begin{") == tex.count("\\end{")
    assert "SSVP-SLT best \\cite{rust2024ssvpslt} & YouTube-ASL + How2Sign & 43.2 & 15.5 & 38.4 & 49.6" in tex
    assert "| SSVP-SLT best (ACL 2024) | YouTube-ASL + How2Sign | 43.2 | 15.5 | 38.4 | 49.6 |" in md
    pub = {r["system"]: r for r in T.PUBLISHED_HOW2SIGN}
    assert pub["SSVP-SLT best"]["bleu4"] == 15.5 and pub["SSVP-SLT best"]["rougeL"] == 38.4
    assert pub["SHuBERT"]["bleu4"] == 16.2 and pub["SignRAG"]["bleu4"] == 16.7 and pub["GloFE-VN"]["bleu4"] == 2.2
    assert max(r["bleu4"] for r in T.PUBLISHED_HOW2SIGN) < 20                  # never the "30-40 BLEU-4" myth
    assert all(r["cite"] and r["venue"] for r in T.PUBLISHED_HOW2SIGN) and len(T.PUBLISHED_HOW2SIGN) == 10
    # our synthetic rows live in their own, labelled section after the published ones
    for text, dash in ((tex, "---"), (md, "—")):
        head = text.index(f"This repository {dash} SYNTHETIC stand-in corpus, not How2Sign {dash} not comparable")
        assert text.index("Published How2Sign test results (not measured here)") < head
        assert text.index("zero-shot (synthetic)") > head and text.count("zero-shot (synthetic)") == 1
        assert "sacrebleu signature" in text and "tok:13a" in text and f"n = {N} sentences scored" in text
    ours = md[md.index("SYNTHETIC stand-in corpus, not How2Sign — not comparable"):]
    assert ours.count("(synthetic)") == len(QUALITY) and "| 100.0 |" in ours
    assert "| zero-shot (synthetic) |" not in md[:md.index("not comparable")]


def test_latex_checker_catches_breakage():
    good = T.results_table_latex({})
    assert T.validate_latex_table(good) == []
    assert any("cells" in p for p in T.validate_latex_table(good.replace("31.7 & --", "31.7 & -- & 1")))
    assert any("braces" in p for p in T.validate_latex_table(good.replace("\\textit{Published", "\\textit{{Published")))
    assert any("\\hline" in p for p in T.validate_latex_table(good.replace("\\midrule", "\\hline")))
    assert any("unescaped '%'" in p for p in T.validate_latex_table(good.replace("95\\%", "95%")))
    assert any("non-ASCII" in p for p in T.validate_latex_table(good + "–"))
    assert any("end{tabular}" in p or "not closed" in p for p in T.validate_latex_table(good.replace("\\end{tabular}", "")))
    assert T.latex_escape("a_b & 50% #1 ~x") == r"a\_b \& 50\% \#1 \textasciitilde{}x"


def test_how2sign_results_are_not_labelled_synthetic(tmp_path):
    _, run, ana, made = _pipeline(tmp_path, synthetic=False, systems={"zeroshot": 0.3, "stage2": 0.7})
    assert made["synthetic"] is False and ana["synthetic"] is False
    for name in FIGURES:
        assert "synthetic" not in Image.open(tmp_path / "figures" / f"{name}.png").text["Title"].lower()
    tex = (tmp_path / "figures" / "results_table.tex").read_text()
    assert T.validate_latex_table(tex) == [] and "SYNTHETIC" not in tex
    assert f"measured here on the How2Sign test set (n = {N})" in tex
    # synthetic results can't be drawn under a how2sign params.yaml, nor mixed with real ones
    with pytest.raises(ValueError, match="dataset: synthetic"):
        F.make_figures(F.FiguresConfig(runs={}), "results", "results/analysis", "synthetic", root=tmp_path)
    E.make_fake_predictions(tmp_path / "predictions" / "ablation", "ablation", 0.5, n=N, synthetic=True)
    with pytest.raises(ValueError, match="refusing to compare synthetic"):
        E.compare_systems({s: tmp_path / "predictions" / s for s in ("zeroshot", "ablation")}, tmp_path)


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="evaluate.metrics"):
        E.EvaluateConfig(metrics=["bleu5"])
    with pytest.raises(ConfigError, match="evaluate.systems.analysis"):
        E.EvaluateConfig(systems={"analysis": "x"})
    folder = E.make_fake_predictions(tmp_path / "p", "zeroshot", 0.5, n=8)
    rows = read_tsv(folder / "predictions.tsv")
    rows[2]["reference"] = ""                                      # a data bug: counted and skipped
    write_tsv(folder / "predictions.tsv", rows, list(rows[0]))
    with pytest.warns(RuntimeWarning, match="empty reference"):
        res = E.evaluate_predictions(folder, tmp_path, E.EvaluateConfig(**FAST))
    assert res["n"] == 7 and res["n_skipped_empty_reference"] == 1
    assert read_json(tmp_path / "metrics" / "zeroshot.json")["n_skipped_empty_reference"] == 1
    rows[3]["id"] = rows[4]["id"]
    write_tsv(folder / "predictions.tsv", rows, list(rows[0]))
    with pytest.raises(ValueError, match="duplicate id"):
        E.evaluate_predictions(folder, tmp_path, E.EvaluateConfig(**FAST))
    (folder / "info.json").unlink()
    with pytest.raises(FileNotFoundError, match="info.json"):
        E.load_predictions(folder)


@pytest.mark.skipif(java_path() is None, reason="no java on PATH (METEOR / PTB tokenizer)")
def test_default_metrics_with_meteor(tmp_path):
    folder = E.make_fake_predictions(tmp_path / "p", "stage2", 1.0, n=12, timing=False)
    try:
        res = E.evaluate_predictions(folder, tmp_path, E.EvaluateConfig(bootstrap_samples=50))
    finally:
        close_meteor()
    assert res["scores"]["meteor"] == pytest.approx(100.0, abs=1e-6) and res["skipped"] == {}
    assert "ptb" in res["signatures"]["cider"] and res["latency"] == {}
    flat = read_json(tmp_path / "metrics" / "stage2.json")
    assert flat["meteor"] == pytest.approx(100.0) and not any(k.startswith("latency_") for k in flat)
