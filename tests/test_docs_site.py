"""The documentation site (mkdocs.yml + scripts/docs_hooks.py): `mkdocs build --strict` into a temporary folder,
then every notebook, API and figure page checked, and one page opened in a real headless Chromium (Debian's
`chromium`, over the DevTools protocol as in tests/test_results_browser.py) with a screenshot in
tests/artifacts/docs_site.png. Without Chromium the browser test FAILS with the install command (never skips).
"""
from __future__ import annotations

import html as htmllib
import os
import re
import subprocess
import time

import pytest

from conftest import ROOT, VENV_BIN
from sonar_thesis.results import HeadlessChromium, find_chromium

SCREENSHOT = ROOT / "tests" / "artifacts" / "docs_site.png"
NOTEBOOKS = [p for p in sorted((ROOT / "nbs").glob("*.ipynb")) if p.stem != "index"]   # index: Home
MODULES = sorted(p.stem for p in (ROOT / "sonar_thesis").glob("*.py") if not p.stem.startswith("_"))
FIGURES = sorted((ROOT / "figures").glob("*.png"))


def _text(path) -> str:
    """A page's visible text: tags dropped, entities decoded, whitespace collapsed."""
    h = re.sub(r"<(script|style)\b.*?</\1>", " ", path.read_text(encoding="utf-8"), flags=re.S)
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", h)).split())


def _hooks():
    """scripts/docs_hooks.py as a module (the nav's titles come from its notebook_title)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_title = _hooks().notebook_title


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs_site") / "site"
    t0 = time.perf_counter()
    r = subprocess.run([str(VENV_BIN / "mkdocs"), "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert not re.search(r"^(WARNING|ERROR)", r.stderr, re.M), r.stderr[-3000:]
    print(f"docs site built in {time.perf_counter() - t0:.1f} s")
    return out


def test_every_notebook_is_a_page_in_file_order(site):
    assert len(NOTEBOOKS) >= 20
    for nb in NOTEBOOKS:
        page = site / f"{nb.stem}.html"
        assert page.is_file(), page
        assert f"<title>{htmllib.escape(_title(nb), quote=False)} - sonar-thesis</title>" in page.read_text(encoding="utf-8")
    sweeps = _text(site / "17_sweeps.html")
    assert "dvc exp run --queue" in sweeps and "#| export" in sweeps and "def " in sweeps   # prose and code
    # the nav lists the notebooks in file order, each by its heading
    index = (site / "index.html").read_text(encoding="utf-8")
    hrefs = [h for h in re.findall(r'href="([^"#]+\.html)"', index) if h[:2].isdigit()]
    assert list(dict.fromkeys(hrefs)) == [f"{nb.stem}.html" for nb in NOTEBOOKS]


def test_home_is_the_readme(site):
    text = _text(site / "index.html")
    assert "Two commands on a fresh machine" in text and "bash scripts/repro.sh" in text
    for section in ("Notebooks", "API", "Thesis figures"):
        assert section in text


def test_one_api_page_per_module_from_docstrings(site):
    for m in MODULES:
        assert (site / "api" / f"sonar_thesis.{m}.html").is_file(), m
    html = (site / "api" / "sonar_thesis.sweeps.html").read_text(encoding="utf-8")
    assert 'id="sonar_thesis.sweeps.run_sweep"' in html and "run_sweep" in _text(site / "api" / "sonar_thesis.sweeps.html")
    assert 'id="sonar_thesis.config.load_config"' in (site / "api" / "sonar_thesis.config.html").read_text(encoding="utf-8")


def test_figures_page_shows_every_png(site):
    html = (site / "figures.html").read_text(encoding="utf-8")
    assert FIGURES and any(p.name == "metric_bars.png" for p in FIGURES)
    for p in FIGURES:
        assert f'src="figures/{p.name}"' in html, p.name
        assert (site / "figures" / p.name).read_bytes() == p.read_bytes()
    assert [m for m in re.findall(r"<h2[^>]*>([^<]+)", html)] == [p.name for p in FIGURES]


def test_nothing_is_fetched_from_the_network(site):
    for page in site.rglob("*.html"):
        h = page.read_text(encoding="utf-8")
        assert not re.search(r'<(script|link|img)\b[^>]*(src|href)="(https?:)?//', h), page
    # the stylesheet every notebook page shared is written once, not inlined ~570 KB per page
    assert len(list((site / "assets").glob("jupyter-*.css"))) == 1
    assert (site / "17_sweeps.html").stat().st_size < 2_000_000


def test_pages_in_real_chromium(site):
    try:
        find_chromium()
    except FileNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    with HeadlessChromium(width=1400, height=1000) as b:
        b.goto((site / "figures.html").as_uri())
        b.wait_for("document.readyState === 'complete'")
        sizes = b.eval("[...document.querySelectorAll('article img')].map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert [s for s, _ in sizes] == [f"figures/{p.name}" for p in FIGURES] and all(w > 100 for _, w in sizes), sizes

        b.goto((site / "17_sweeps.html").as_uri())
        b.wait_for("document.readyState === 'complete'")
        # the shared notebook stylesheet is applied, code cells are laid out, the nav is there
        assert b.eval("getComputedStyle(document.querySelector('.jupyter-wrapper')).getPropertyValue('--md-red-50').trim()") == "#ffebee"
        assert b.eval("document.querySelectorAll('.jp-CodeCell').length") > 10
        assert "Ablation sweeps" in b.eval("document.querySelector('h1').textContent")
        assert b.eval("document.querySelectorAll('nav.md-nav a.md-nav__link').length") > len(NOTEBOOKS) + len(MODULES)
        b.screenshot(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 20_000
