"""16_seeds: the seed aggregation and the combined (sentence + seed) interval on small hand-made runs, and
the stage's wiring (which entry points it calls with which folders) with the training stubbed."""
import math
import shutil
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import pytest

from sonar_thesis import seeds as S
from sonar_thesis.config import Config
from sonar_thesis.config_sections import EvaluateConfig
from sonar_thesis.evaluate import evaluate_predictions, make_fake_predictions
from sonar_thesis.io import write_json, write_tsv
from sonar_thesis.bootstrap import bootstrap_ci, paired_bootstrap, paired_bootstrap_diffs

Z = NormalDist().inv_cdf(0.975)
ECFG = EvaluateConfig(metrics=["bleu4", "chrf"], bootstrap_samples=100)
REFS = [f"mix the {w} with a spoon and then fold it slowly" for w in ("flour", "sugar", "water", "paper", "salt", "milk")]


def _run(root: Path, system: str, seed: int, hyps: list[str], refs=REFS, synthetic=True) -> dict:
    """Write predictions, score them like a seed run (evaluate_predictions), load the run."""
    pred = root / "pred" / system / f"seed{seed}"
    write_tsv(pred / "predictions.tsv", [dict(id=f"c{i}", reference=r, hypothesis=h, domain="target", signer="s1",
                                              n_frames=10) for i, (r, h) in enumerate(zip(refs, hyps))],
              ("id", "reference", "hypothesis", "domain", "signer", "n_frames"))
    write_json(pred / "info.json", {"system": system, "synthetic": synthetic})
    folder = f"res/{system}"
    evaluate_predictions(pred, root, replace(ECFG, results_dir=folder, metrics_dir=folder), system=f"seed{seed}")
    return S.load_run(root / folder / f"seed{seed}")


def test_combine_runs_known_numbers():
    same = S.combine_runs([20.0, 20.0, 20.0], [3.0, 3.0, 3.0])
    assert same["sd"] == 0 and same["df"] is None and (same["low"], same["high"]) == pytest.approx((20 - 3 * Z, 20 + 3 * Z))
    two = S.combine_runs([10.0, 14.0], [0.0, 0.0])              # a known delta of 4 between two seeds, no sentence noise
    assert (two["mean"], two["sd"]) == pytest.approx((12.0, math.sqrt(8)))
    assert two["df"] == pytest.approx(1) and two["high"] - 12 == pytest.approx(12.706205 * 2, rel=1e-6)   # t(0.975, 1) * s/sqrt(2)
    mixed = S.combine_runs([10.0, 14.0], [3.0, 1.0])
    assert mixed["within_sd"] == pytest.approx(math.sqrt(5)) and mixed["se"] == pytest.approx(3.0)   # sqrt(5 + 8/2)
    assert mixed["df"] == pytest.approx(1 * (9 / 4) ** 2)
    with pytest.raises(ValueError, match="one within-seed sd per value"):
        S.combine_runs([1.0, 2.0], [1.0])


def test_identical_seeds_give_sd_zero_and_the_bootstrap_interval(tmp_path):
    a_hyps = ["mix the flour with a spoon and fold it", "mix sugar with a spoon and then fold it slowly", "mix the water",
              "the paper with a spoon and then fold it slowly", "mix the salt with a fork", "mix the milk with a spoon and then fold it slowly"]
    b_hyps = ["mix the flour", "stir", "mix the water with a spoon", "fold it", "mix the salt with a spoon and then", "milk"]
    runs = {"stage2": {k: _run(tmp_path / f"s{k}", "stage2", k, a_hyps) for k in (0, 1, 2)},
            "ablation": {k: _run(tmp_path / f"s{k}", "ablation", k, b_hyps) for k in (0, 1, 2)}}
    summ = S.summarise_seeds(runs, main_seed=0, n_samples=100, metrics=("bleu4", "chrf"))
    st = summ["systems"]["stage2"]["metrics"]["bleu4"]
    ci = bootstrap_ci(a_hyps, REFS, "bleu4", n_samples=100)
    assert st["sd"] == 0 and st["mean"] == pytest.approx(ci.score, abs=1e-4)
    assert (st["low"], st["high"]) == pytest.approx((ci.score - Z * ci.std, ci.score + Z * ci.std), abs=1e-3)
    d = summ["comparisons"]["stage2-ablation"]["metrics"]["bleu4"]
    pb = paired_bootstrap(a_hyps, b_hyps, REFS, "bleu4", n_samples=100)
    sd = paired_bootstrap_diffs(a_hyps, b_hyps, REFS, "bleu4", n_samples=100)[1].std()
    delta = bootstrap_ci(a_hyps, REFS, "bleu4", 1).score - bootstrap_ci(b_hyps, REFS, "bleu4", 1).score
    assert d["sd"] == 0 and d["n_seeds"] == 3 and d["mean"] == pytest.approx(delta, abs=1e-4) and sd > 0
    assert (d["low"], d["high"]) == pytest.approx((delta - Z * sd, delta + Z * sd), abs=1e-3)
    assert d["per_seed"]["seed1"]["ci_low"] == pytest.approx(pb.ci[0], abs=1e-4)


def test_two_seeds_differing_by_a_known_delta(tmp_path):
    perfect, empty = list(REFS), [""] * len(REFS)       # BLEU-4 100 and 0, on every bootstrap resample too
    runs = {"stage2": {k: _run(tmp_path, "stage2", k, perfect) for k in (0, 1)},
            "ablation": {0: _run(tmp_path, "ablation", 0, perfect), 1: _run(tmp_path, "ablation", 1, empty)}}
    summ = S.summarise_seeds(runs, main_seed=0, n_samples=100, metrics=("bleu4",))
    ab = summ["systems"]["ablation"]["metrics"]["bleu4"]
    assert ab["per_seed"] == {"seed0": 100.0, "seed1": 0.0} and (ab["mean"], ab["sd"]) == pytest.approx((50.0, 70.7107))
    d = summ["comparisons"]["stage2-ablation"]["metrics"]["bleu4"]
    assert [p["delta"] for p in d["per_seed"].values()] == [0.0, 100.0] and [p["std"] for p in d["per_seed"].values()] == [0, 0]
    assert (d["mean"], d["sd"], d["within_sd"], d["df"]) == pytest.approx((50.0, 70.7107, 0.0, 1.0))
    assert (d["low"], d["high"]) == pytest.approx((50 - 12.706205 * 50, 50 + 12.706205 * 50), abs=1e-3)
    assert not d["excludes_zero"]                        # two seeds that disagree this much settle nothing


def test_refusals(tmp_path):
    a = _run(tmp_path / "a", "stage2", 0, REFS)
    b = _run(tmp_path / "b", "ablation", 0, REFS, refs=[r + " now" for r in REFS])
    with pytest.raises(ValueError, match="different references"):
        S.summarise_seeds({"stage2": {0: a}, "ablation": {0: b}}, main_seed=0, n_samples=10)
    c = _run(tmp_path / "c", "ablation", 0, REFS, synthetic=False)
    with pytest.raises(ValueError, match="refusing to combine synthetic with How2Sign"):
        S.summarise_seeds({"stage2": {0: a}, "ablation": {0: c}}, main_seed=0, n_samples=10)
    with pytest.raises(FileNotFoundError, match="scores.tsv: missing"):
        S.load_run(tmp_path / "nowhere")


def _fake_main_results(root: Path, cfg: Config):
    for name, q in {"zeroshot": 0.1, "stage2": 0.8, "ablation": 0.7, "landmarks": 0.5}.items():
        make_fake_predictions(root / "predictions" / name, name, q, n=20)
        evaluate_predictions(root / "predictions" / name, root, cfg.evaluate, system=name)


def test_run_seeds_wiring_and_identical_reruns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(seed=0, seeds=[3], evaluate=EvaluateConfig(metrics=["bleu1", "bleu4", "chrf", "meteor"], bootstrap_samples=50))
    _fake_main_results(tmp_path, cfg)
    calls = []
    def fake_train_seed(c, system, seed, progress=True):        # what train_seed leaves: the seed's predictions
        calls.append((system, seed))
        make_fake_predictions(S.seed_paths(system, seed)["predictions"], f"{system}-{seed}", 0.6, n=20)
        return {}
    monkeypatch.setattr(S, "train_seed", fake_train_seed)
    summ = S.run_seeds(cfg, progress=False)
    assert calls == [("stage2", 3), ("ablation", 3), ("landmarks", 3)]
    assert summ["seeds"] == [0, 3] and summ["systems"]["stage2"]["metrics"]["bleu4"]["n_seeds"] == 2
    assert summ["systems"]["zeroshot"]["seeds"] == [0] and len(summ["comparisons"]) == 6
    assert list(summ["systems"]["landmarks"]["metrics"]) == ["bleu1", "bleu4", "chrf"]     # the figure's bars (no METEOR CI)
    assert list(summ["comparisons"]["stage2-ablation"]["metrics"]) == ["bleu4", "chrf"]
    ev = (tmp_path / "results/seeds/landmarks/seed3/evaluation.json").read_text()
    assert '"meteor"' not in ev.split('"scores"')[1].split("}")[0]       # only bootstrappable metrics are scored
    assert (tmp_path / "timings/seeds/stage.json").is_file()
    first = [(tmp_path / "results/seeds" / f).read_bytes() for f in ("summary.json", "seeds_table.md")]
    assert b"seconds" not in first[0] and first[1].startswith("# SYNTHETIC DATA".encode())
    S.run_seeds(cfg, progress=False)
    assert [(tmp_path / "results/seeds" / f).read_bytes() for f in ("summary.json", "seeds_table.md")] == first

    for d in ("models/seeds", "predictions/seeds", "results/seeds", "timings/seeds"):
        shutil.rmtree(tmp_path / d, ignore_errors=True)
    one = S.run_seeds(replace(cfg, seeds=[]), progress=False)             # the How2Sign default: no extra seeds
    assert all((tmp_path / d).is_dir() for d in ("models/seeds", "predictions/seeds"))   # DVC needs its outputs
    assert len(calls) == 6 and one["seeds"] == [0] and one["systems"]["stage2"]["metrics"]["bleu4"]["sd"] is None
    assert "(1 run)" in (tmp_path / "results/seeds/seeds_table.md").read_text()


def test_train_seed_calls_the_main_entry_points(tmp_path, monkeypatch):
    import sonar_thesis.finetune as F
    import sonar_thesis.landmarks as L
    seen = {}
    monkeypatch.setattr(F, "run_stage2", lambda c, features_root, out_dir, start_from=None, progress=True:
                        seen.setdefault("run_stage2", []).append((c.seed, c.seeds, str(features_root), str(out_dir), start_from)) or {})
    monkeypatch.setattr(S, "predict_seed", lambda c, system, model_dir, out_dir, timings_root, progress=True:
                        seen.setdefault("predict", []).append((system, str(model_dir), str(out_dir), str(timings_root))))
    monkeypatch.setattr(L, "train_landmarks", lambda c, progress=True: seen.setdefault("lm", []).append((c.seed, c.landmarks.output_dir)) or {})
    monkeypatch.setattr(L, "predict_landmarks", lambda c, out_dir, progress=True, timings_root=None:
                        seen.setdefault("lm_pred", []).append((str(out_dir), str(timings_root))))
    cfg = Config(seeds=[1, 2])
    for system in S.SEED_SYSTEMS:
        S.train_seed(cfg, system, 2, progress=False)
    assert seen["run_stage2"] == [(2, [], "data/features/stage1", "models/seeds/stage2/seed2", "models/stage1"),
                                  (2, [], "data/features/pretrained", "models/seeds/ablation/seed2", None)]
    assert seen["predict"] == [("stage2", "models/seeds/stage2/seed2", "predictions/seeds/stage2/seed2", "timings/seeds/stage2/seed2"),
                               ("ablation", "models/seeds/ablation/seed2", "predictions/seeds/ablation/seed2", "timings/seeds/ablation/seed2")]
    assert seen["lm"] == [(2, "models/seeds/landmarks/seed2")]
    assert seen["lm_pred"] == [("predictions/seeds/landmarks/seed2", "timings/seeds/landmarks/seed2")]
    with pytest.raises(ValueError, match="train_seed: system must be one of"):
        S.train_seed(cfg, "zeroshot", 1)
