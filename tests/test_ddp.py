"""DDP under torchrun (gloo on CPU): 2 processes follow the 1-process loss trajectory of the same
global batch, and a 2-process checkpoint resumes in 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_train import ROOT, make_data, ncn_subprocess, read_log, run_train, tiny_config, train_args


# 10 steps of a global batch of grad_accum 2 x micro_batch 2 windows; a row every step
DDP_TRAIN = {"tokens": 10 * 2 * 2 * 16, "micro_batch": 2, "grad_accum": 2, "log_every": 1, "signal_every": 5,
             "ckpt_every": 5}


def torchrun(args: list[str], nproc: int, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ncn.cli", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def losses(run):
    return [float(r["loss"]) for r in read_log(run)]


@pytest.mark.slow
def test_two_gloo_processes_match_one_and_checkpoints_are_interchangeable(tmp_path):
    data = make_data(tmp_path / "data")
    cfg = tiny_config(tmp_path, train=DDP_TRAIN, model={"dropout": 0.0})  # ranks draw other dropout masks
    one = run_train(cfg, tmp_path / "one", data)

    p = torchrun(train_args(cfg, tmp_path / "two", data), nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    assert two["batch_order_sha256"] == one["batch_order_sha256"] and two["steps"] == one["steps"] == 10
    g1, g2 = read_log(tmp_path / "one")[0], read_log(tmp_path / "two")[0]
    assert float(g2["gamma_mean_l1"]) == pytest.approx(float(g1["gamma_mean_l1"]), abs=1e-6)

    # a 2-process run killed after its step-5 checkpoint, finished by 1 process
    p = torchrun(train_args(cfg, tmp_path / "mixed", data), nproc=2, env_extra={"NCN_FAULT_KILL_AT_STEP": "5"})
    assert p.returncode != 0 and (tmp_path / "mixed" / "ckpt" / "step_000005.pt").exists()
    assert not (tmp_path / "mixed" / "metrics.json").exists()
    mixed = run_train(cfg, tmp_path / "mixed", data)
    assert mixed["resumed_at_steps"] == [5]
    assert losses(tmp_path / "mixed") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)

    # and the other way: a 1-process run killed after step 5, finished by 2 processes (rank 1 loads
    # the checkpoint rank 0 picked)
    p = ncn_subprocess(["train", *train_args(cfg, tmp_path / "back", data)], {"NCN_FAULT_KILL_AT_STEP": "6"})
    assert p.returncode != 0 and (tmp_path / "back" / "ckpt" / "step_000005.pt").exists()
    p = torchrun(train_args(cfg, tmp_path / "back", data), nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    back = json.loads((tmp_path / "back" / "metrics.json").read_text())
    assert back["resumed_at_steps"] == [5]
    assert losses(tmp_path / "back") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)


def test_grad_accum_must_divide_among_processes(tmp_path, monkeypatch):
    from ncn.errors import NCNError

    data = make_data(tmp_path / "data")
    cfg = tiny_config(tmp_path, train={**DDP_TRAIN, "grad_accum": 3})
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group starts
    with pytest.raises(NCNError, match="grad_accum 3 is not divisible by the 2 DDP processes"):
        run_train(cfg, tmp_path / "run", data)
