"""One device rule for every stage and command (`extract.resolve_device`): `auto` → CUDA if available, else the
CPU; CUDA asked for on a machine without it → one line naming `hardware.device` and the fix."""
import importlib
import os
import re
import subprocess

import pytest
import torch
from torch import nn

from conftest import ROOT, VENV_BIN
from sonar_thesis.config_sections import PRESETS
from sonar_thesis.extract import resolve_device

NO_CUDA = r"^hardware\.device is '{}' but torch\.cuda\.is_available\(\) is False \(no usable GPU\) — set hardware\.device: auto or cpu in params\.yaml \(or pass --device cpu\)$"


def test_without_cuda_auto_is_the_cpu_and_cuda_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    for pref in ("cuda", "cuda:1", " CUDA:0 "):
        with pytest.raises(RuntimeError, match=NO_CUDA.format(re.escape(pref.strip().lower()))):
            resolve_device(pref)
    with pytest.raises(ValueError, match=r"hardware\.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    from sonar_thesis.extract import extract_manifest          # the stages stop before any work, not on the CPU
    from sonar_thesis.train_setup import setup_distributed
    with pytest.raises(RuntimeError, match=NO_CUDA.format("cuda")):
        setup_distributed("cuda")
    with pytest.raises(RuntimeError, match=NO_CUDA.format("cuda:0")):
        extract_manifest(tmp_path / "none.tsv", nn.Identity(), tmp_path / "out", PRESETS["tiny"], device="cuda:0")


def test_with_cuda_auto_is_the_ranks_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda:0")
    assert resolve_device("auto", local_rank=1) == resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cpu") == torch.device("cpu")
    with pytest.warns(UserWarning, match="ignored under torchrun: rank uses cuda:1"):
        assert resolve_device("cuda:0", local_rank=1, world_size=2) == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match=r"hardware\.device is 'cuda:2' but this machine has 2 GPU\(s\)"):
        resolve_device("cuda:2")


def test_one_definition_and_every_caller_uses_it():
    defs = sorted(p.name for p in (ROOT / "sonar_thesis").glob("*.py")
                  if re.search(r"^def resolve_device\(", p.read_text(), re.M))
    assert defs == ["extract.py"]
    for mod in ("train_setup", "finetune", "landmarks", "translate"):
        assert importlib.import_module(f"sonar_thesis.{mod}").resolve_device is resolve_device, mod
    import ast                                                  # each CLI command that places models
    for fn in ast.walk(ast.parse((ROOT / "sonar_thesis" / "cli.py").read_text())):
        if isinstance(fn, ast.FunctionDef) and any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "resolve_device"
                                                   for n in ast.walk(fn)):
            assert any(isinstance(n, ast.ImportFrom) and n.module == "sonar_thesis.extract"
                       and "resolve_device" in [a.name for a in n.names] for n in ast.walk(fn)), fn.name


def test_cli_says_it_in_one_line(tmp_path):
    from sonar_thesis.data import write_test_video
    clip = write_test_video(tmp_path / "clip.mp4", n_frames=10)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([str(VENV_BIN / "sonar-thesis"), "translate", str(clip), "--device", "cuda"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert re.match(NO_CUDA.format("cuda")[:-1], r.stderr.removeprefix("error: ")), r.stderr
