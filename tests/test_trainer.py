"""The shared training loop (nbs/07_trainer.ipynb): exact resume after a real SIGKILL, 2-process gloo DDP
equals one process with the same global batch, frozen parameters stay bit-identical, best-k pruning and
best.pt, weights_only loading of every checkpoint file.

This file doubles as the worker script of the subprocess tests:
    python tests/test_trainer.py run OUT_DIR '{"batch_size": 4, ...}'
(also under `python -m torch.distributed.run --nproc_per_node=2 ...`).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from sonar_thesis.config_sections import HardwareConfig, LoggingConfig, StageConfig, TrainingConfig
from sonar_thesis.train_state import CheckpointReadError, load_checkpoint, load_weights
from sonar_thesis.trainer import StepInfo, train

torch.set_num_threads(1)
HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


# ---------------------------------------------------------------- toy fixture (shared with the workers)
class Toy(nn.Module):
    """Variable-length sequences [T, 4] -> scalar; optional dropout (uses the torch RNG) and a frozen input layer."""

    def __init__(self, dropout: float = 0.0, frozen: bool = False, big: bool = False):
        super().__init__()
        if big:  # a large frozen base (stands for stage 1's frozen SONAR encoder + decoder)
            self.big = nn.Parameter(torch.randn(512, 512), requires_grad=False)
        self.inp = nn.Linear(4, 8)
        self.proj = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, 1)
        if frozen:
            self.inp.requires_grad_(False)

    def forward(self, batch):                                          # -> [B]
        h = self.drop(torch.tanh(self.norm(self.proj(self.inp(batch["x"])))))   # [B, T, 16]
        m = batch["mask"][..., None]
        return self.head((h * m).sum(1) / m.sum(1)).squeeze(-1)

    def training_loss(self, batch):
        return F.mse_loss(self(batch), batch["y"])


class ToyData(Dataset):
    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(4, generator=torch.Generator().manual_seed(123))
        self.items = []
        for _ in range(n):
            x = torch.randn(int(torch.randint(3, 13, (1,), generator=g)), 4, generator=g)
            self.items.append((x, (x.mean(0) @ w).tanh()))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(items):
    T = max(x.shape[0] for x, _ in items)
    x, mask = torch.zeros(len(items), T, 4), torch.zeros(len(items), T)
    for i, (xi, _) in enumerate(items):
        x[i, : len(xi)], mask[i, : len(xi)] = xi, 1
    return {"x": x, "mask": mask, "y": torch.stack([y for _, y in items])}


VAL = ToyData(12, seed=99)


def val_loss(model):
    with torch.no_grad():
        return {"val_loss": float(model.training_loss(collate(VAL.items)))}


def val_loss_const(model):
    """A real val_loss plus a metric that never improves: early stopping after `patience` evaluations."""
    return val_loss(model) | {"const_loss": 1.0}


VALIDATORS = {"val_loss": val_loss, "val_loss_const": val_loss_const}


def run(out, *, batch_size=4, accum=1, epochs=3, n=46, lr=1e-2, dropout=0.0, frozen=False, big=False,
        shift_big=0.0, sleep=0.0, validate=val_loss, on_step=None, resume=True, training=None, fingerprint=None):
    """One toy training run on CPU; returns (model, TrainResult)."""
    validate = VALIDATORS[validate] if isinstance(validate, str) else validate
    torch.manual_seed(0)
    model = Toy(dropout, frozen, big)
    if shift_big:
        with torch.no_grad():
            model.big[0, 0] += shift_big      # another frozen base under the same settings
    data = ToyData(n)
    tr = {"warmup_steps": 4, "min_lr": 1e-4, "weight_decay": 0.1, "eval_every_n_steps": 5,
          "save_every_n_steps": 4, "save_total_limit": 2, "early_stopping_patience": 0,
          "early_stopping_metric": "val_loss", "eval_every_n_epochs": 1, **(training or {})}
    if sleep:
        on_step = lambda info: time.sleep(sleep)  # noqa: E731  (slows the worker so the kill lands mid-run)
    res = train(model, data, out, stage=StageConfig(learning_rate=lr, epochs=epochs, batch_size=batch_size,
                                                   gradient_accumulation_steps=accum),
                training=TrainingConfig(**tr), hardware=HardwareConfig(device="cpu", num_workers=0, torch_threads=1),
                logging_cfg=LoggingConfig(log_every_n_steps=3), collate_fn=collate,
                lengths=lambda i: len(data.items[i][0]), validate=validate, on_step=on_step, progress=False,
                resume=resume, fingerprint=fingerprint)
    return model, res


def assert_same_weights(a: dict, b: dict, exact: bool = True, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), f"{k} differs (max {(a[k] - b[k]).abs().max().item():.3g})"
        else:
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=atol), f"{k}: max diff {(a[k] - b[k]).abs().max().item():.3g}"


def worker_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(autouse=True)
def _no_dvc_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # dvclive must not find (or touch) the project's DVC repo


# ---------------------------------------------------------------- (1) exact resume
def test_sigkill_resume_is_bit_identical(tmp_path):
    ref_model, ref = run(tmp_path / "ref", dropout=0.2)
    out = tmp_path / "killed"
    cmd = [sys.executable, str(HERE), "run", str(out), json.dumps({"dropout": 0.2, "sleep": 0.06})]
    proc = subprocess.Popen(cmd, env=worker_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while not (out / "last.pt").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "worker never wrote last.pt"
            time.sleep(0.01)
        time.sleep(0.15)                       # land between two saves: the resumed run must redo steps
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "train_done.json").exists()
    killed_at = load_checkpoint(out / "last.pt")["global_step"]
    assert 0 < killed_at < ref.total_steps

    model, res = run(out, dropout=0.2)         # resume (in a fresh model object)
    assert res.steps == ref.steps == ref.total_steps == 36
    assert_same_weights(model.state_dict(), ref_model.state_dict(), exact=True)
    assert res.history == ref.history and res.best_step == ref.best_step
    # dvclive rows logged after last.pt were dropped on resume: no duplicate steps
    with open(out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")]
    assert steps == sorted(set(steps)) and steps[-1] == 36


class _Kill(Exception):
    pass


def kill_and_resume(out_dir, kill_at: int, **kw):
    """Run until an exception at step `kill_at`, then rerun in the same folder: the resumed result."""
    def boom(info: StepInfo):
        if info.step == kill_at:
            raise _Kill
    with pytest.raises(_Kill):
        run(out_dir, on_step=boom, **kw)
    return run(out_dir, **kw)


@pytest.mark.parametrize("kill_at", [7, 12, 13])   # mid-epoch, epoch end (12 steps/epoch), just after
def test_exception_resume_is_bit_identical(tmp_path, kill_at):
    kw = dict(batch_size=2, accum=2, dropout=0.2)
    ref_model, ref = run(tmp_path / "ref", **kw)

    model, res = kill_and_resume(tmp_path / "run", kill_at, **kw)
    assert_same_weights(model.state_dict(), ref_model.state_dict(), exact=True)
    assert res.history == ref.history


# ---------------------------------------------------------------- (2) DDP == one process, same global batch
def test_ddp_gloo_two_ranks_equal_one_process(tmp_path):
    # global batch 8 = 2 ranks × batch 2 × accumulation 2 = 1 rank × batch 8; 46 items -> 6 steps/epoch, the
    # last one short (6 items: 3 per rank). Validation every 2 steps on rank 0; early stopping on a metric
    # that never improves (patience 3) stops both runs at step 8, mid-epoch 2, without a deadlock.
    kw = {"epochs": 3, "validate": "val_loss_const",
          "training": {"eval_every_n_steps": 2, "early_stopping_metric": "const_loss", "early_stopping_patience": 3}}
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(HERE), "run",
           str(out), json.dumps({"batch_size": 2, "accum": 2, **kw})]
    p = subprocess.run(cmd, env=worker_env(), cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ref_model, ref = run(tmp_path / "single", batch_size=8, accum=1, **kw)
    ddp = json.loads((out / "train_done.json").read_text())
    assert ddp["steps"] == ref.steps == 8 and ddp["stopped_early"] and ref.stopped_early
    assert_same_weights(load_checkpoint(out / "last.pt")["model"], ref_model.state_dict(), exact=False, atol=1e-6)
    assert [h["step"] for h in ddp["history"]] == [h["step"] for h in ref.history]
    for a, b in zip(ddp["history"], ref.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert load_checkpoint(out / "last.pt")["world_size"] == 2 and len(load_checkpoint(out / "last.pt")["rng"]) == 2


# ---------------------------------------------------------------- (3) frozen parameters
def test_frozen_params_bit_identical(tmp_path):
    torch.manual_seed(0)
    init = Toy(frozen=True).state_dict()
    model, res = run(tmp_path, frozen=True, epochs=2, training={"weight_decay": 0.5})
    after = model.state_dict()
    assert torch.equal(after["inp.weight"], init["inp.weight"]) and torch.equal(after["inp.bias"], init["inp.bias"])
    assert not torch.equal(after["proj.weight"], init["proj.weight"])
    opt = load_checkpoint(tmp_path / "last.pt")["optimizer"]
    names = sum((g["names"] for g in opt["param_groups"]), [])
    assert not any(n.startswith("inp.") for n in names)
    nodecay = next(g for g in opt["param_groups"] if g["weight_decay"] == 0.0)["names"]
    assert sorted(nodecay) == ["head.bias", "norm.bias", "norm.weight", "proj.bias"]


def test_frozen_base_left_out_of_checkpoints_resumed_exactly_and_verified(tmp_path):
    kw = dict(frozen=True, big=True, batch_size=2, accum=2, dropout=0.2)
    ref_model, ref = run(tmp_path / "ref", **kw)
    trainable = {n for n, p in ref_model.named_parameters() if p.requires_grad}
    big_bytes = 512 * 512 * 4
    files = [tmp_path / "ref" / "last.pt", tmp_path / "ref" / "best.pt", *(tmp_path / "ref" / "checkpoints").glob("*.pt")]
    assert len(files) == 4
    for path in files:
        ck = load_checkpoint(path)
        assert set(ck["model"]) == trainable, path                   # no frozen tensor in the file ...
        assert ck["frozen"]["keys"] == ["big", "inp.weight", "inp.bias"] and ck["frozen"]["numel"] == 512 * 512 + 4 * 8 + 8
        assert path.stat().st_size < big_bytes / 4, (path, path.stat().st_size)   # ... far smaller than the base

    def boom(info: StepInfo):
        if info.step == 7:
            raise _Kill
    with pytest.raises(_Kill):
        run(tmp_path / "run", on_step=boom, **kw)
    model, res = run(tmp_path / "run", **kw)                         # resumes from the trimmed last.pt
    assert_same_weights(model.state_dict(), ref_model.state_dict(), exact=True)
    assert res.history == ref.history

    with pytest.raises(_Kill):
        run(tmp_path / "changed", on_step=boom, **kw)
    with pytest.raises(RuntimeError, match="frozen parameters are not the ones this run started from"):
        run(tmp_path / "changed", shift_big=1e-3, **kw)             # the frozen base changed under the run
    torch.manual_seed(0)
    other = Toy(frozen=True, big=True)                               # the same base: best.pt loads
    assert torch.equal(load_weights(other, tmp_path / "ref" / "best.pt").head.weight,
                       load_checkpoint(tmp_path / "ref" / "best.pt")["model"]["head.weight"])
    with torch.no_grad():
        other.big[0, 0] += 1e-3
    with pytest.raises(RuntimeError, match="frozen parameters are not the ones this checkpoint was trained on"):
        load_weights(other, tmp_path / "ref" / "best.pt")


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw8bit"])
def test_memory_saving_optimizers_train_and_resume_exactly(tmp_path, optimizer):
    if optimizer == "adamw8bit":
        pytest.importorskip("bitsandbytes")
    kw = dict(batch_size=2, accum=2, dropout=0.2, lr=1e-2, training={"optimizer": optimizer})
    torch.manual_seed(0)
    init = Toy(0.2).state_dict()
    ref_model, ref = run(tmp_path / "ref", **kw)
    assert not torch.equal(ref_model.state_dict()["proj.weight"], init["proj.weight"])    # it steps
    assert ref.history[-1]["val_loss"] < ref.history[0]["val_loss"]                       # and learns

    model, res = kill_and_resume(tmp_path / "run", 13, **kw)
    assert_same_weights(model.state_dict(), ref_model.state_dict(), exact=True)
    assert res.history == ref.history


# ---------------------------------------------------------------- (4) best-k and best.pt
@pytest.mark.parametrize("metric,values,best_idx", [
    ("bleu_4", [1.0, 5.0, 3.0, 4.0, 2.0, 4.5], 1),      # higher is better
    ("val_loss", [3.0, 2.0, 2.5, 1.0, 1.5, 1.2], 3),    # lower is better
])
def test_best_k_and_best_pt(tmp_path, metric, values, best_idx):
    it = iter(values)
    _, res = run(tmp_path, epochs=2, validate=lambda m: {metric: next(it), "other": 0.0},
                 training={"early_stopping_metric": metric, "save_total_limit": 3, "eval_every_n_steps": 5})
    steps = [h["step"] for h in res.history]
    assert steps == [5, 10, 12, 15, 20, 24]          # every 5 steps and at each epoch end (12 steps/epoch)
    order = sorted(range(len(values)), key=lambda i: (-values[i] if metric == "bleu_4" else values[i], i))
    kept = sorted(f"step-{steps[i]:08d}.pt" for i in order[:3])
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == kept
    assert res.best_step == steps[best_idx] and res.best_metric == values[best_idx]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == res.best_step and best["metrics"][metric] == values[best_idx]
    twin = load_checkpoint(tmp_path / "checkpoints" / f"step-{res.best_step:08d}.pt")
    assert_same_weights(best["model"], twin["model"])


# ---------------------------------------------------------------- (5) weights_only loading, done marker
def test_checkpoints_load_weights_only(tmp_path):
    model, res = run(tmp_path, epochs=1)
    for path in [tmp_path / "last.pt", tmp_path / "best.pt", *(tmp_path / "checkpoints").glob("*.pt")]:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        assert set(ck["model"]) == set(model.state_dict())
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("optimizer", "scheduler", "scaler", "rng", "epoch", "step_in_epoch", "global_step", "tracker",
                "fingerprint", "finished"):
        assert key in last, key
    assert last["finished"] and last["epoch"] == 1 and last["step_in_epoch"] == 0 and last["global_step"] == 12
    assert isinstance(last["rng"][0]["torch"], torch.Tensor) and isinstance(last["rng"][0]["python"], torch.Tensor)
    assert_same_weights(last["model"], model.state_dict())


def test_finished_run_returns_at_once_and_new_settings_restart(tmp_path):
    _, res = run(tmp_path, epochs=1)
    mtime = (tmp_path / "last.pt").stat().st_mtime_ns
    calls = []
    _, again = run(tmp_path, epochs=1, validate=lambda m: calls.append(1) or {"val_loss": 0.0})
    assert again == res and not calls and (tmp_path / "last.pt").stat().st_mtime_ns == mtime
    _, other = run(tmp_path, epochs=1, lr=5e-3)                # another fingerprint: trains afresh
    assert other.steps == 12 and (tmp_path / "last.pt").stat().st_mtime_ns != mtime


# ---------------------------------------------------------------- worker entry point
if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "run":
        run(Path(sys.argv[2]), **json.loads(sys.argv[3]))
    else:
        sys.exit(f"usage: {sys.argv[0]} run OUT_DIR JSON_KWARGS")


@pytest.mark.parametrize("every_epochs, every_steps, expected", [
    (1, 0, [12, 24, 36]),          # every epoch end (12 steps per epoch)
    (2, 0, [24, 36]),              # every 2nd epoch end + the last step
    (0, 10, [10, 20, 30, 36]),     # by steps only + the last step
])
def test_validation_cadence(tmp_path, every_epochs, every_steps, expected):
    _, res = run(tmp_path / "run", training={"eval_every_n_epochs": every_epochs, "eval_every_n_steps": every_steps})
    assert [h["step"] for h in res.history] == expected


@pytest.mark.parametrize("content", ["garbage", "pickle"])
def test_unreadable_last_pt_is_set_aside_and_training_starts_afresh(tmp_path, content, capsys):
    """A truncated or non-tensor last.pt: one message, the file kept as last.pt.unreadable, a fresh run."""
    import pickle
    ref_model, ref = run(tmp_path / "ref")
    with pytest.raises(_Kill):
        run(tmp_path / "run", on_step=lambda info: (_ for _ in ()).throw(_Kill()) if info.step == 5 else None)
    last = tmp_path / "run" / "last.pt"
    assert last.exists()
    if content == "garbage":
        last.write_bytes(last.read_bytes()[:100])                     # a kill mid-copy
    else:
        last.write_bytes(pickle.dumps({"model": argparse.Namespace(x=1)}))   # pickles a Python object
    model, res = run(tmp_path / "run")
    assert "not a readable trainer checkpoint" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.pt.unreadable").exists()
    assert_same_weights(model.state_dict(), ref_model.state_dict(), exact=True)
    assert res.history == ref.history
    with pytest.raises(CheckpointReadError, match=r"last\.pt\.unreadable: not a readable trainer checkpoint"):
        load_checkpoint(tmp_path / "run" / "last.pt.unreadable")


def test_a_run_with_no_steps_writes_nothing(tmp_path):
    """epochs 0 (params.yaml refuses it; code may not): a clear error, no checkpoint holding the starting weights."""
    with pytest.raises(ValueError, match=r"nothing to train \(46 items, 0 epochs"):
        run(tmp_path / "run", epochs=0)
    assert not any((tmp_path / "run").glob("*.pt")) if (tmp_path / "run").exists() else True
