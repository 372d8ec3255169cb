"""Faults survived, through Snakemake (slow; every test works in a temporary copy of the repo).

* Snakemake and its training job are SIGKILLed together (the whole process group: a node that
  dies, `kill -9` of the session) after the run's first checkpoint. What a user then types:

      snakemake --cores 1 TARGET --configfile config/smoke.yaml   # refused: "Directory cannot be locked"
      snakemake --unlock --configfile config/smoke.yaml            # the lock of the killed Snakemake
      snakemake --cores 1 TARGET --configfile config/smoke.yaml   # resumes from RUN/ckpt/

  (targets go before --configfile, which takes several files.) No --rerun-incomplete is needed:
  metrics.json is written last, so a killed job never has all its outputs and Snakemake reruns it.
  The test checks exactly this sequence, and that the resumed run ends with the metrics, log and
  weights of an uninterrupted run (timing keys aside: ncn.train.TIMING_KEYS).
* Two smoke runs from scratch give byte-identical results/smoke/tables/*.csv, results/smoke/claims.json
  and the claims table and paragraphs (results/smoke/tables/claims*.tex).
  (A training job killed by itself under a live Snakemake is tests/test_workflow.py's; a corrupt
  checkpoint, MLflow down and parallel jobs on one store are tests/test_train.py's and
  tests/test_tracking.py's.)
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import reproducible_files
from test_workflow import copy_repo, snakemake, snakemake_env, write_corpus

RUN = "results/smoke/runs/causal/xs/seed0"
TARGET = f"{RUN}/metrics.json"
OUTPUTS = ("model.pt", "metrics.json", "train_log.csv")  # the train rule's outputs
FIRST_CKPT = "ckpt/step_000020.pt.sha256"  # smoke: ckpt_every 20; the digest is written last
STEP_DELAY_S = "0.2"  # NCN_FAULT_STEP_DELAY_S: 64 steps take >12 s, so the kill lands mid-run (MLflow starts beside them)


def smoke_target(repo: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return snakemake(repo, *args, "--configfile", "config/smoke.yaml", env=env)


def train_outputs(run: Path) -> dict:
    """The result of a run, timing aside: metrics.json, train_log.csv rows, model weights."""
    import torch

    from ncn.train import TIMING_KEYS

    metrics = json.loads((run / "metrics.json").read_text())
    rows = list(csv.DictReader(io.StringIO((run / "train_log.csv").read_text())))
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    return {
        "metrics": {k: v for k, v in metrics.items() if k not in TIMING_KEYS},
        "log": [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows],
        "weights": {k: v.numpy().tobytes() for k, v in state.items()},
    }


@pytest.mark.slow
def test_sigkilled_snakemake_and_job_resume_to_the_uninterrupted_result(tmp_path):
    t_start = time.monotonic()
    repo = copy_repo(tmp_path / "repo")
    env = {"NCN_DATA_DIR": str(write_corpus(tmp_path / "corpus", n_train=700, n_valid=100))}
    run = repo / RUN

    # 1. the uninterrupted run (data, MLflow store and this one training job)
    r = smoke_target(repo, "--cores", "1", TARGET, env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    uninterrupted = train_outputs(run)
    shutil.rmtree(run)

    # 2. the same target, SIGKILLed with its Snakemake once the first checkpoint is on disk
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", TARGET, "--configfile", "config/smoke.yaml"]
    with open(tmp_path / "killed.out", "w") as out:
        p = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                             env=snakemake_env({**env, "NCN_FAULT_STEP_DELAY_S": STEP_DELAY_S}))
        deadline = time.monotonic() + 300
        while not ((run / FIRST_CKPT).exists() and (run / "mlflow_run.json").exists()):  # MLflow starts beside the steps
            assert p.poll() is None, f"Snakemake ended before the first checkpoint: {(tmp_path / 'killed.out').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.02)
        os.killpg(p.pid, signal.SIGKILL)  # Snakemake, the job's shell and `ncn train`: one group (a fork running the job kills itself)
        p.wait()
    assert not (run / "metrics.json").exists(), "the run finished before the kill: the test proves nothing"
    # nothing that looks finished: no output of the job exists (the live log is the partial one)
    assert [f for f in OUTPUTS if (run / f).exists()] == []
    assert (run / "train_log.partial.csv").exists() and (run / FIRST_CKPT).exists()
    mlflow_run = json.loads((run / "mlflow_run.json").read_text())

    # 3. what the user types: the plain rerun is refused because of the dead Snakemake's lock ...
    r = smoke_target(repo, "--cores", "1", TARGET, env=env)
    assert r.returncode != 0 and "--unlock" in r.stdout, r.stdout[-3000:]
    assert [f for f in OUTPUTS if (run / f).exists()] == []
    r = smoke_target(repo, "--unlock", env=env)
    assert r.returncode == 0 and "Unlocked" in r.stdout, r.stdout[-3000:]
    # ... then the same command reruns the job (its outputs are missing), which resumes
    r = smoke_target(repo, "--cores", "1", TARGET, env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "reason: Missing output files" in r.stdout and "rule train:" in r.stdout, r.stdout[-3000:]
    job_log = (repo / "results" / "smoke" / "logs" / "train" / "causal" / "xs" / "seed0.log").read_text()
    assert "resuming from results/smoke/runs/causal/xs/seed0/ckpt/step_0000" in job_log, job_log[-2000:]
    resumed_at = json.loads((run / "metrics.json").read_text())["resumed_at_steps"]
    assert len(resumed_at) == 1 and resumed_at[0] >= 20, resumed_at

    # 4. the result is the uninterrupted one, bit for bit (timing aside)
    resumed = train_outputs(run)
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["log"] == uninterrupted["log"]
    assert resumed["weights"] == uninterrupted["weights"]
    assert not (run / "train_log.partial.csv").exists()

    # 5. the killed MLflow run was continued and finished; Snakemake has nothing left to do
    from mlflow.tracking import MlflowClient

    from ncn.tracking import read_state

    info = MlflowClient(tracking_uri=read_state(run)["store"].uri).get_run(mlflow_run["run_id"]).info
    assert info.status == "FINISHED"
    assert json.loads((run / "mlflow_run.json").read_text())["run_id"] == mlflow_run["run_id"]
    r = smoke_target(repo, "--cores", "1", TARGET, env=env)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout, r.stdout[-3000:]
    print(f"\nSIGKILL + unlock + resume through Snakemake: {time.monotonic() - t_start:.0f} s", file=sys.stderr)


@pytest.mark.slow
def test_two_smoke_runs_from_scratch_are_byte_identical(smoke_session, tmp_path):
    """The session's smoke run and a second one in a fresh copy, on the same corpus."""
    first = smoke_session["reproducible"]
    assert any(k.startswith("results/smoke/tables/") for k in first) and "results/smoke/claims.json" in first, sorted(first)

    repo = copy_repo(tmp_path / "repo")
    t0 = time.monotonic()
    # only the files compared (and what they need): the paper, samples and exports add nothing here
    r = snakemake(repo, "--cores", "2", *sorted(first), "--configfile", "config/smoke.yaml", env=smoke_session["env"],
                  timeout=1200)
    print(f"\nsecond smoke profile run: {time.monotonic() - t0:.0f} s wall on 2 cores", file=sys.stderr)
    assert r.returncode == 0, r.stdout[-6000:]
    second = reproducible_files(repo)

    assert sorted(second) == sorted(first)
    differ = sorted(k for k in first if first[k] != second[k])
    assert not differ, "not byte-identical between two smoke runs:\n" + "\n".join(
        f"  {k}: {where_they_differ(first[k], second[k])}" for k in differ)


def where_they_differ(a: bytes, b: bytes) -> str:
    """The first differing line, and for a CSV the columns whose values differ (a diagnosis)."""
    la, lb = a.decode().splitlines(), b.decode().splitlines()
    i = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
    if la and "," in la[0]:
        ra, rb = list(csv.DictReader(io.StringIO(a.decode()))), list(csv.DictReader(io.StringIO(b.decode())))
        cols = sorted({c for x, y in zip(ra, rb) for c in x if x.get(c) != y.get(c)})
        return f"columns {cols} differ (first at line {i + 1})"
    return f"line {i + 1}: {la[i] if i < len(la) else '<end>'!r} vs {lb[i] if i < len(lb) else '<end>'!r}"
