"""CONTRIBUTING.md's maps stay complete: every notebook in the notebook map, every DVC stage in the pipeline map."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_notebook_and_every_stage_is_mapped():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    notebooks = {p.stem for p in (ROOT / "nbs").glob("*.ipynb")} - {"index"}
    mapped = set(re.findall(r"^\| `([0-9][0-9a-z_]*)` \| `", text, re.M))
    assert notebooks - mapped == set(), f"CONTRIBUTING.md: notebooks missing from the notebook map: {notebooks - mapped}"
    assert mapped - notebooks == set(), f"CONTRIBUTING.md: mapped notebooks that do not exist: {mapped - notebooks}"
    pipeline = text[text.index("## Pipeline map"):text.index("## Notebook map")]
    for stage, spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        nb = re.search(r"nbs/(\S+)\.ipynb", spec["cmd"]).group(1)
        assert re.search(rf"\| `{stage}` \| `{nb}` \|", pipeline), f"CONTRIBUTING.md: stage {stage} ({nb}) not in the pipeline map"
