"""Tests for sonar_thesis.metrics (generated from nbs/10_metrics.ipynb).

Reference values: sacrebleu's README example, Lin (2004) ROUGE-L example, hand-derived ROUGE-L/LCS,
METEOR 1.5 and CIDEr-D cases (derivations in the notebook prose). METEOR/PTB tests need Java and are
skipped without it; the "no Java" behaviour is tested by emptying PATH.
"""
from __future__ import annotations

import math
import socket
import sys
import time
import types

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU

from sonar_thesis import bootstrap as B
from sonar_thesis import metrics as M

needs_java = pytest.mark.skipif(M.java_path() is None, reason="no java on PATH")

README_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
README_STREAMS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
                  ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
README_REFS = [list(r) for r in zip(*README_STREAMS)]          # per-hypothesis reference lists


@pytest.fixture(scope="module", autouse=True)
def _stop_meteor():
    yield
    M.close_meteor()


@pytest.fixture
def no_network(monkeypatch):
    """Any Python-level network connection attempt fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def random_corpus(rng, n, vocab=12, max_len=9):
    words = [f"w{i}" for i in range(vocab)] + [",", ".", "W0"]
    sent = lambda: " ".join(rng.choice(words, size=rng.integers(0, max_len + 1)))
    return [sent() for _ in range(n)], [sent() or "w0" for _ in range(n)]


def synthetic_systems(n=2357, seed=0):
    rng = np.random.default_rng(seed)
    vocab = np.array([f"word{i}" for i in range(300)])
    refs = [" ".join(rng.choice(vocab, size=rng.integers(3, 20))) + "." for _ in range(n)]
    def system(keep):
        return [" ".join(w if rng.random() < keep else str(rng.choice(vocab)) for w in r.split()) for r in refs]
    return refs, system(0.7), system(0.5)


# ---------------------------------------------------------------- BLEU / chrF
def test_sacrebleu_readme_example():
    s = M.corpus_scores(README_SYS, README_REFS, metrics=("bleu1", "bleu2", "bleu3", "bleu4", "chrf"))
    assert round(s["bleu4"], 2) == 48.53                      # README: BLEU = 48.53 82.4/50.0/45.5/37.5
    assert round(s["chrf"], 2) == 59.73                       # README: chrF2 = 59.73
    assert s["details"]["bleu4"].startswith("BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)")
    sig = s["signatures"]["bleu4"]
    assert sig.startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert s["signatures"]["chrf"].startswith("nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    # cumulative BLEU-n by hand: p_n = 14/17, 7/14, 5/11, 3/8; BP = exp(1 - 18/17)
    bp, p = math.exp(1 - 18 / 17), [14 / 17, 7 / 14, 5 / 11, 3 / 8]
    for n in range(1, 5):
        assert s[f"bleu{n}"] == pytest.approx(100 * bp * math.prod(p[:n]) ** (1 / n), abs=1e-9)
    assert s["n"] == 3


def test_single_reference_strings_equal_sacrebleu():
    hyps, refs = random_corpus(np.random.default_rng(1), 50)
    s = M.corpus_scores(hyps, refs, metrics=("bleu2", "bleu4", "chrf"))
    assert s["bleu4"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert s["bleu2"] == BLEU(max_ngram_order=2).corpus_score(hyps, [refs]).score
    assert s["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert s["signatures"]["bleu4"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|")


def test_tokenizer_changes_bleu():
    h = ["I don't know, it's the U.S. (really)!", "He's signing -- fast."]
    r = ["I do not know, it's the U.S. really!", "He is signing fast."]
    vals = {tok: BLEU(tokenize=tok).corpus_score(h, [r]).score for tok in ("13a", "none", "intl")}
    assert len({round(v, 2) for v in vals.values()}) > 1
    assert M.corpus_scores(h, r, metrics=("bleu4",))["bleu4"] == vals["13a"]


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_bleu_chrf_equal_sacrebleu(seed):
    rng = np.random.default_rng(seed)
    hyps, refs = random_corpus(rng, int(rng.integers(1, 60)))
    S = M.bleu_stats(hyps, refs)
    for n in range(1, 5):
        ref = BLEU(max_ngram_order=n, tokenize="13a", smooth_method="exp").corpus_score(hyps, [refs]).score
        assert M.bleu_from_stats(S.sum(0), n) == pytest.approx(ref, rel=1e-12, abs=1e-9)
    # row-wise: sentence BLEU with effective order == sacrebleu.sentence_bleu
    sent = M.bleu_from_stats(S, 4, effective_order=True)
    np.testing.assert_allclose(sent, [sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(hyps, refs)], atol=1e-9)
    C = M.chrf_stats(hyps, refs)
    assert M.chrf_from_stats(C.sum(0)) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    np.testing.assert_allclose(M.chrf_from_stats(C), [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hyps, refs)],
                               atol=1e-9)


def test_vectorised_bleu_edge_cases():
    # all hypotheses empty, hypotheses shorter than 4 tokens (break at missing orders), no matches
    for hyps, refs in [([""], ["a b c"]), (["a"], ["a b c"]), (["a b"], ["a b c d e"]), (["x y z"], ["a b c"]),
                       (["a b c d e"], ["a b c"]), (["", "a b c d"], ["a b c d", "a"])]:
        S = M.bleu_stats(hyps, refs)
        for n in range(1, 5):
            assert M.bleu_from_stats(S.sum(0), n) == pytest.approx(
                BLEU(max_ngram_order=n).corpus_score(hyps, [refs]).score, abs=1e-9)


# ---------------------------------------------------------------- ROUGE-L
def test_rouge_l_lin2004_and_lcs_by_hand():
    s = M.rouge_l_scores(["police kill the gunman", "the gunman kill police"], ["police killed the gunman"] * 2)
    np.testing.assert_allclose(s, [75.0, 50.0])              # Lin (2004) §3.1.1, no stemming
    # LCS("the cat sat on the mat", "the cat was sitting on the mat") = 5 -> P = 5/6, R = 5/7
    p, r = 5 / 6, 5 / 7
    got = M.corpus_scores(["the cat sat on the mat", "police kill the gunman"],
                          ["the cat was sitting on the mat", "police killed the gunman"], metrics=("rougeL",))
    assert got["rougeL"] == pytest.approx((100 * 2 * p * r / (p + r) + 75.0) / 2)
    assert "rouge-score" in got["implementations"]["rougeL"]
    assert "impl:rouge-score" in got["signatures"]["rougeL"] and "stem:no" in got["signatures"]["rougeL"]


def test_rouge_l_multi_reference_takes_best():
    s = M.rouge_l_scores(["police kill the gunman"], [["something else", "police killed the gunman"]])
    np.testing.assert_allclose(s, [75.0])


# ---------------------------------------------------------------- COCO tokenisation, METEOR, CIDEr
def test_coco_punctuation_list_matches_pycocoevalcap():
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS
    assert tuple(PUNCTUATIONS) == M.COCO_PUNCTUATIONS


@needs_java
def test_ptb_tokenizer_matches_pycocoevalcap():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    texts = ["Hi, I'm Mike.", "I don't know -- it's \"fine\" (really)...", "", "Costs $5.50; e-mail me?",
             "two\nlines", "Café — naïve"]
    ours = M.coco_tokenize(texts, "ptb")
    theirs = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    assert ours == [theirs[i][0] for i in range(len(texts))]
    assert ours[0] == "hi i 'm mike" and ours[2] == ""


def test_simple_tokenizer():
    assert M.coco_tokenize(["Hi, I'm Mike -- it's \"fine\"..."], "simple") == ["hi i 'm mike it 's fine"]
    with pytest.raises(ValueError, match="backend"):
        M.coco_tokenize(["x"], "moses")


@needs_java
def test_meteor_identical_hand_and_empty(no_network):
    corpus, sent = M.meteor_score(["the cat sat on the mat", "the cat sat", "", "Police killed the gunman!"],
                                  ["The cat sat on the mat.", "the cat sat on the mat", "a b", "police killed the gunman"])
    # hand: P = 1, R = (0.75*2 + 0.25*1)/(0.75*3 + 0.25*3) = 7/12, Fmean = PR/(0.85P + 0.15R),
    # one chunk over 3 matches: penalty 0.6 * (1/3)**0.2
    f_mean = (7 / 12) / (0.85 + 0.15 * 7 / 12)
    np.testing.assert_allclose(sent, [100.0, 100 * f_mean * (1 - 0.6 * (1 / 3) ** 0.2), 0.0, 100.0], atol=1e-4)
    assert 0 < corpus < 100
    s = M.corpus_scores(["the cat sat on the mat"] * 2, ["the cat sat on the mat"] * 2, metrics=("meteor",))
    assert s["meteor"] == pytest.approx(100.0)
    assert "meteor-1.5" in s["signatures"]["meteor"] and "tok:ptb" in s["signatures"]["meteor"]


def test_cider_by_hand():
    # derivation in the notebook: N = 2, idf = log 2 for every n-gram except "the"
    hyps, refs = ["the cat sat down", "the dog sat"], ["the cat sat", "the dog ran"]
    s1 = 10 * (2 / math.sqrt(6) + 2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    corpus, sent = M.cider_score(hyps, refs, coco_tokenizer="simple")
    np.testing.assert_allclose(sent, [100 * s1, 250.0])
    assert corpus == pytest.approx(413.4779022150067, abs=1e-9)
    if M.java_path():
        got = M.corpus_scores(hyps, refs, metrics=("cider",))
        assert got["cider"] == pytest.approx(413.4779022150067, abs=1e-9)
        assert "tok:ptb" in got["signatures"]["cider"] and "scale:x100" in got["signatures"]["cider"]
    with pytest.raises(ValueError, match="at least 2"):
        M.cider_score(["a"], ["a"], coco_tokenizer="simple")


def test_cider_empty_hypothesis_scores_zero():
    corpus, sent = M.cider_score(["", "the dog ran"], ["the cat sat", "the dog ran"], coco_tokenizer="simple")
    assert sent[0] == 0.0 and sent[1] > 0


def test_no_java_raises_with_install_hint(monkeypatch):
    M.close_meteor()
    monkeypatch.setenv("PATH", "/nonexistent")
    assert M.java_path() is None
    with pytest.raises(M.JavaNotFoundError, match="apt-get install"):
        M.corpus_scores(["a b"], ["a b"], metrics=("meteor",))
    with pytest.raises(M.JavaNotFoundError, match="Java"):
        M.coco_tokenize(["a"], "ptb")


def test_no_java_skip_is_reported(monkeypatch):
    M.close_meteor()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.warns(RuntimeWarning, match="skipped: no `java`"):
        s = M.corpus_scores(["a b", "c d"], ["a b", "c e"], metrics=("bleu4", "meteor", "cider"), on_missing="skip")
    assert "meteor" not in s and "cider" not in s and "bleu4" in s
    assert "java" in s["skipped"]["meteor"] and "apt-get" in s["skipped"]["meteor"]
    assert "cider" in s["skipped"]
    # CIDEr still runs without Java with the pure-Python tokenizer, and says so in its signature
    s = M.corpus_scores(["a b", "c d"], ["a b", "c e"], metrics=("cider",), coco_tokenizer="simple")
    assert "cider" in s and "tok:simple" in s["signatures"]["cider"]


# ---------------------------------------------------------------- BLEURT
def test_bleurt_absent_is_reported():
    s = M.corpus_scores(["a b"], ["a b"], metrics=("bleu4", "bleurt"))
    assert "bleurt" not in s and "not configured" in s["skipped"]["bleurt"]
    with pytest.raises(FileNotFoundError, match="BLEURT-20"):
        M.corpus_scores(["a b"], ["a b"], metrics=("bleurt",), bleurt_checkpoint="/nonexistent/BLEURT-20")


def test_bleurt_not_importable_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bleurt", None)          # makes `import bleurt` fail
    with pytest.warns(RuntimeWarning, match="bleurt"):
        s = M.corpus_scores(["a b"], ["a b"], metrics=("bleurt",), bleurt_checkpoint=tmp_path)
    assert "not importable" in s["skipped"]["bleurt"]


def test_bleurt_runs_when_configured(tmp_path, monkeypatch):
    class FakeScorer:
        def __init__(self, checkpoint): assert checkpoint == str(tmp_path)
        def score(self, references, candidates, batch_size):
            return [1.0 if r == c else 0.25 for r, c in zip(references, candidates)]
    pkg, mod = types.ModuleType("bleurt"), types.ModuleType("bleurt.score")
    mod.BleurtScorer, pkg.score = FakeScorer, mod
    monkeypatch.setitem(sys.modules, "bleurt", pkg)
    monkeypatch.setitem(sys.modules, "bleurt.score", mod)
    s = M.corpus_scores(["a b", "c d"], ["a b", "x"], metrics=("bleurt",), bleurt_checkpoint=tmp_path)
    assert s["bleurt"] == pytest.approx(62.5) and "impl:bleurt" in s["signatures"]["bleurt"]


# ---------------------------------------------------------------- API, errors, offline
def test_input_errors():
    with pytest.raises(ValueError, match="empty"):
        M.corpus_scores([], [])
    with pytest.raises(ValueError, match="mismatch"):
        M.corpus_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty reference"):
        M.corpus_scores(["a", "b"], ["a", ""])
    with pytest.raises(ValueError, match="empty"):
        M.sentence_scores(["a"], [])
    with pytest.raises(ValueError, match="same number"):
        M.corpus_scores(["a", "b"], [["a"], ["b", "c"]])
    with pytest.raises(ValueError, match="unknown metric"):
        M.corpus_scores(["a"], ["a"], metrics=("bleu5",))
    with pytest.raises(TypeError):
        M.corpus_scores("a b", ["a b"])
    with pytest.raises(TypeError):
        M.corpus_scores([None], ["a"])
    with pytest.raises(ValueError, match="empty"):
        B.bootstrap_ci([], [])
    with pytest.raises(ValueError, match="mismatch"):
        B.paired_bootstrap(["a"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="bootstrap supports"):
        B.bootstrap_ci(["a"], ["a"], metric="meteor")


def test_empty_hypotheses_score_zero():
    s = M.corpus_scores(["", ""], ["a b c", "d e"], metrics=("bleu4", "chrf", "rougeL"))
    assert s["bleu4"] == 0.0 and s["chrf"] == 0.0 and s["rougeL"] == 0.0


def test_sentence_scores():
    ss = M.sentence_scores(README_SYS, README_REFS)
    assert len(ss) == 3 and set(ss[0]) == {"bleu", "chrf", "rougeL"}
    assert ss[0] == pytest.approx({"bleu": 100.0, "chrf": 100.0, "rougeL": 100.0})
    for s, h, rs in zip(ss, README_SYS, README_REFS):
        assert s["bleu"] == pytest.approx(sacrebleu.sentence_bleu(h, rs).score, abs=1e-9)
        assert s["chrf"] == pytest.approx(sacrebleu.sentence_chrf(h, rs).score, abs=1e-9)


def test_full_run_is_offline(no_network):
    metrics = M.DEFAULT_METRICS if M.java_path() else ("bleu1", "bleu4", "chrf", "rougeL", "bleurt")
    s = M.corpus_scores(README_SYS, README_REFS, metrics=metrics, coco_tokenizer="ptb" if M.java_path() else "simple")
    assert s["n"] == 3 and set(s["signatures"]) == set(metrics) - {"bleurt"}
    for k in set(metrics) - {"bleurt"}:
        assert 0 <= s[k] <= (1000 if k == "cider" else 100)


# ---------------------------------------------------------------- bootstrap
@pytest.fixture(scope="module")
def systems():
    return synthetic_systems()


def test_bootstrap_ci_contains_point_estimate_and_is_fast(systems):
    refs, a, _ = systems
    t = time.perf_counter()
    ci = B.bootstrap_ci(a, refs, "bleu4", n_samples=1000, seed=0)
    elapsed = time.perf_counter() - t
    assert ci.low <= ci.score <= ci.high and ci.std > 0
    assert ci.score == pytest.approx(sacrebleu.corpus_bleu(a, [refs]).score, abs=1e-9)
    assert elapsed < 5, f"1000 resamples over {len(refs)} segments took {elapsed:.2f}s"
    assert B.bootstrap_ci(a, refs, "bleu4", n_samples=1000, seed=0) == ci          # reproducible
    for m in ("bleu1", "chrf", "rougeL"):
        c = B.bootstrap_ci(a, refs, m, n_samples=300)
        assert c.low <= c.score <= c.high


def test_bootstrap_resample_is_a_real_resample():
    # each resample row holds N draws; a resample's BLEU equals sacrebleu on the resampled corpus
    hyps, refs = random_corpus(np.random.default_rng(3), 30)
    S = M.bleu_stats(hyps, refs)
    W = next(B._resample_counts(len(hyps), 3, seed=5))
    assert W.shape == (3, 30) and (W.sum(1) == 30).all()
    idx = np.repeat(np.arange(30), W[0].astype(int))
    ref = sacrebleu.corpus_bleu([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
    assert M.bleu_from_stats(W @ S, 4)[0] == pytest.approx(ref, abs=1e-9)


def test_paired_bootstrap(systems):
    refs, a, b = systems
    t = time.perf_counter()
    res = B.paired_bootstrap(a, b, refs, "bleu4", n_samples=1000, seed=0)
    elapsed = time.perf_counter() - t
    assert elapsed < 5
    d, ci, p = res                                            # unpacks as (mean diff, CI, p-value)
    assert d > 0 and ci[0] > 0 and p < 0.01
    assert B.paired_bootstrap(b, a, refs, "bleu4", n_samples=200).p_value < 0.01   # worse system first
    same = B.paired_bootstrap(a, a, refs, "bleu4", n_samples=200)
    assert same.mean_diff == 0 and same.ci == (0.0, 0.0) and same.p_value == 1.0
    # nearly identical systems: no significant difference
    a2 = list(a); a2[0] = b[0]
    assert B.paired_bootstrap(a, a2, refs, "chrf", n_samples=200).p_value > 0.05
