"""MLflow tracking: what a run records, resume into the same run, failures that must not stop
training, `ncn mlflow-sync` replay, and four jobs in parallel on one SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import ROOT, make_data, ncn_subprocess, run_train, tiny_config, train_args

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Data, a config with MLflow on, and an initialised SQLite store (ncn mlflow-init)."""
    from ncn.tracking import main_mlflow_init

    tmp = tmp_path_factory.mktemp("mlf")
    data = make_data(tmp / "data")
    cfg = tiny_config(tmp, mlflow={"enabled": True})
    assert main_mlflow_init(["--config", str(cfg), "--out", str(tmp / "mlflow.ready")]) == 0
    ready = json.loads((tmp / "mlflow.ready").read_text())
    assert ready["tracking_uri"] == f"sqlite:///{tmp}/mlflow.db" and (tmp / "mlflow.db").exists()
    return tmp, data, cfg


def client_for(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")


def runs_named(tmp: Path, name: str):
    c = client_for(tmp)
    exp = c.get_experiment_by_name("testprof")
    return [r for r in c.search_runs([exp.experiment_id]) if r.info.run_name == name]


def test_run_recorded_with_params_metrics_tags_artifacts(store):
    tmp, data, cfg = store
    run = tmp / "runs" / "causal"
    m = run_train(cfg, run, data, variant="causal", seed=0)
    (r,) = runs_named(tmp, "causal-xs-s0")
    assert r.info.status == "FINISHED"
    assert r.info.run_id == json.loads((run / "mlflow_run.json").read_text())["run_id"]
    p = r.data.params
    assert p["train.lr"] == "0.003" and p["size_defs.xs.d_model"] == "32" and p["variants"] == '["none", "causal"]'
    assert p["n_params"] == str(m["n_params"]) and p["resolved_model.ncn"] == "causal"
    t = r.data.tags
    assert (t["variant"], t["size"], t["seed"]) == ("causal", "xs", "0") and len(t["git_commit"]) >= 7
    hist = client_for(tmp).get_metric_history(r.info.run_id, "loss")
    assert [h.step for h in sorted(hist, key=lambda h: h.step)] == [1] + list(range(2, 21, 2))
    assert r.data.metrics["final/final_loss"] == pytest.approx(m["final_loss"])
    assert "g_mean_l0" in r.data.metrics
    arts = {a.path for a in client_for(tmp).list_artifacts(r.info.run_id)}
    assert arts == {"metrics.json", "config.json", "train_log.csv"}


def test_resumed_job_continues_the_same_mlflow_run(store):
    tmp, data, cfg = store
    run = tmp / "runs" / "resumed"
    p = ncn_subprocess(["train", *train_args(cfg, run, data, seed=3)], {"NCN_FAULT_KILL_AT_STEP": "12"})
    assert p.returncode == -9, p.stderr[-2000:]
    first_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    run_train(cfg, run, data, seed=3)
    (r,) = runs_named(tmp, "causal-xs-s3")
    assert r.info.run_id == first_id and r.info.status == "FINISHED"
    steps = [h.step for h in client_for(tmp).get_metric_history(first_id, "loss")]
    assert sorted(steps) == [1] + list(range(2, 21, 2))  # no step logged twice


def test_unreachable_store_warns_then_sync_replays(store, tmp_path, caplog):
    from ncn.tracking import main_mlflow_sync

    tmp, data, good_cfg = store
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")  # the store's folder cannot be created under a file
    bad = tiny_config(tmp_path, mlflow={"enabled": True, "tracking_uri": f"sqlite:///{blocker}/x/mlflow.db"})
    runs = tmp_path / "runs"
    with caplog.at_level("WARNING", logger="ncn"):
        m = run_train(bad, runs / "causal" / "xs" / "seed5", data, seed=5)
    assert m["finished"] and "training continues without tracking" in caplog.text
    assert "mlflow-sync" in caplog.text
    assert not runs_named(tmp, "causal-xs-s5")
    assert main_mlflow_sync(["--runs", str(runs), "--config", str(good_cfg)]) == 0
    (r,) = runs_named(tmp, "causal-xs-s5")
    assert r.info.status == "FINISHED" and r.data.params["train.lr"] == "0.003"
    assert len(client_for(tmp).get_metric_history(r.info.run_id, "loss")) == 11
    assert main_mlflow_sync(["--runs", str(runs), "--config", str(good_cfg)]) == 0  # idempotent
    assert len(runs_named(tmp, "causal-xs-s5")) == 1


def test_locked_store_is_retried(monkeypatch):
    from ncn import tracking

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    assert tracking._retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        tracking._retry(lambda: (_ for _ in ()).throw(ValueError("other")))


@pytest.mark.slow
def test_four_parallel_jobs_on_one_sqlite_store(store):
    tmp, data, cfg = store
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "ncn.cli", "train",
                          *train_args(cfg, tmp / "par" / f"s{seed}", data, variant="none", seed=seed)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for seed in (10, 11, 12, 13)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "MLflow" not in err or "failed" not in err, err[-2000:]
    for seed in (10, 11, 12, 13):
        (r,) = runs_named(tmp, f"none-xs-s{seed}")
        assert r.info.status == "FINISHED"
        assert len(client_for(tmp).get_metric_history(r.info.run_id, "loss")) == 11
