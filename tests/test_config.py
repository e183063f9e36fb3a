"""params.yaml in one YAML dialect (1.2) across the project's loader, overlays and DVC's `exp run -S`."""
import shutil

import pytest
from dvc.utils.hydra import apply_overrides

from conftest import ROOT
from sonar_thesis.config import apply_overlay, load_config, read_yaml
from sonar_thesis.config_checks import ConfigError


@pytest.fixture
def params(tmp_path):
    p = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", p)
    return p


@pytest.mark.parametrize("override, key, expected", [
    ("hardware.mixed_precision=no", ("hardware", "mixed_precision"), "no"),
    ("hardware.device=off", ("hardware", "device"), "off"),
    ("stage1.learning_rate=1e-5", ("stage1", "learning_rate"), 1e-5),
    ("stage2.learning_rate=3.0e-4", ("stage2", "learning_rate"), 3e-4),
    ("evaluate.bleurt_checkpoint=yes", ("evaluate", "bleurt_checkpoint"), "yes"),
    ("stage1.train_encoder=false", ("stage1", "train_encoder"), False),
])
def test_dvc_exp_run_set_round_trips(params, override, key, expected):
    apply_overrides(params, [override])        # what `dvc exp run -S` does to params.yaml
    cfg = load_config(params)
    assert getattr(getattr(cfg, key[0]), key[1]) == expected
    assert read_yaml(params)[key[0]][key[1]] == expected


def test_null_and_mixed_precision_no_from_an_overlay(params, tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("hardware:\n  mixed_precision: no\nmodel:\n  text_encoder: null\n")
    with pytest.raises(ConfigError, match=r"model\.text_encoder: expected a string, got None"):
        apply_overlay(params, over)
    over.write_text("hardware:\n  mixed_precision: no\n")
    changed = apply_overlay(params, over)
    assert changed == {"hardware.mixed_precision": ("auto", "no")}
    assert load_config(params).hardware.mixed_precision == "no"
    assert "mixed_precision: no" in params.read_text()   # written unquoted, read back as the string "no"


def test_how2sign_overlay_loads(params):
    apply_overlay(params, ROOT / "configs" / "how2sign.yaml")
    cfg = load_config(params)
    assert cfg.dataset == "how2sign" and cfg.preset == "sonar" and cfg.data.root == "data/how2sign"
    assert list(cfg.domain_dirs()) == ["target"]


@pytest.mark.parametrize("yaml_text, message", [
    ("stage1:\n  epochs: -1\n", r"stage1\.epochs: must be >= 1, got -1"),
    ("stage2:\n  batch_size: 0\n", r"stage2\.batch_size: must be >= 1, got 0"),
    ("stage1:\n  freeze_fraction: 1.5\n", r"stage1\.freeze_fraction: must be >= 0 and <= 1, got 1\.5"),
    ("stage2:\n  learning_rate: 0\n", r"stage2\.learning_rate: must be > 0, got 0"),
    ("training:\n  warmup_steps: -5\n", r"training\.warmup_steps: must be >= 0, got -5"),
    ("model:\n  dropout: 2.0\n", r"model\.dropout: must be >= 0 and <= 1"),
    ("stage1:\n  learning_rate: '1e-4'\n", r"stage1\.learning_rate: expected a number, got str '1e-4'"),
])
def test_out_of_range_values_stop_at_load_naming_the_key(params, tmp_path, yaml_text, message):
    over = tmp_path / "over.yaml"
    over.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(params, over)


def test_every_shipped_params_file_is_in_range(params):
    for overlays in ([], ["smoke.yaml"], ["how2sign.yaml"], ["how2sign.yaml", "how2sign_ci.yaml"]):
        load_config(params, *[ROOT / "configs" / o for o in overlays])


class _Reached(Exception):
    """Raised by a stub where a stage cell hands its configuration to the real work."""


@pytest.mark.parametrize("nb, module, work", [("13_evaluate", "evaluate", "evaluate_all"),
                                              ("14_analysis", "analysis", "analyse"),
                                              ("18_figures", "figures", "make_figures")])
def test_evaluate_analysis_figures_read_config_like_every_stage(params, tmp_path, monkeypatch, nb, module, work):
    """Their stage cells load params.yaml with `load_config` (no second loader): overlays apply, and a file
    another stage refuses (stage1.epochs: -1) is refused here, naming the key, before any work."""
    import importlib
    import json
    mod = importlib.import_module(f"sonar_thesis.{module}")
    src = (ROOT / "sonar_thesis" / f"{module}.py").read_text()
    assert "read_yaml" not in src and "load_section" not in src
    cells = ["".join(c["source"]) for c in json.loads((ROOT / "nbs" / f"{nb}.ipynb").read_text())["cells"]]
    cell = next(s for s in cells if s.startswith("#| stage"))
    monkeypatch.chdir(tmp_path)

    def stub(*args, **kwargs):
        raise _Reached(args, kwargs)

    monkeypatch.setattr(mod, work, stub)          # also where a stage's entry function (run_analysis) looks it up
    run = lambda p: exec(cell, {**vars(mod), work: stub, "params_path": str(p)})
    over = tmp_path / "over.yaml"
    over.write_text("evaluate:\n  bootstrap_samples: 7\nanalysis:\n  n_samples: 3\nfigures:\n  dpi: 50\n")
    apply_overlay(params, over)
    with pytest.raises(_Reached) as hit:
        run(params)
    args, kwargs = hit.value.args
    cfg = load_config(params)
    assert {"evaluate": (cfg.evaluate,), "analysis": (cfg.evaluate.results_dir, cfg.analysis),
            "figures": (cfg.figures, cfg.evaluate.results_dir, cfg.analysis.output_dir, cfg.dataset)}[module] == args
    assert (cfg.evaluate.bootstrap_samples, cfg.analysis.n_samples, cfg.figures.dpi) == (7, 3, 50)
    apply_overrides(params, ["stage1.epochs=-1"])
    with pytest.raises(ConfigError, match=r"params\.yaml: stage1\.epochs: must be >= 1, got -1"):
        run(params)


def test_dataclass_defaults_are_params_yaml():
    """One source of defaults: `Config()` (a test, the CLI without a params.yaml) is params.yaml's documented
    synthetic default, key for key — no key differs."""
    from sonar_thesis.config import Config, _flatten
    from sonar_thesis.config_checks import to_dict
    built, documented = _flatten(to_dict(Config())), _flatten(to_dict(load_config(ROOT / "params.yaml")))
    differ = {k: (built.get(k, "<missing>"), documented.get(k, "<missing>"))
              for k in sorted(built.keys() | documented.keys()) if built.get(k, "<missing>") != documented.get(k, "<missing>")}
    assert differ == {}
    assert to_dict(Config()) == to_dict(load_config(ROOT / "params.yaml"))
