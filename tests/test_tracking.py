"""MLflow tracking: the pipeline run and its nested training/evaluation runs, what a run records
(params, metrics, dataset input, model, system metrics, source tags), hand runs in their own
experiment, a store that works after being copied, resume into the same run, failures that must
not stop training, `ncn mlflow-sync` replay, and four jobs in parallel on one SQLite store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train import ROOT, comparable, make_data, ncn_subprocess, read_log, run_train, tiny_config, train_args

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Data, a config with MLflow on, an initialised store with a pipeline run (ncn mlflow-init),
    and one training job of that pipeline (its MLflow env set, as Snakemake sets it)."""
    from ncn.tracking import main_mlflow_init

    tmp = tmp_path_factory.mktemp("mlf")
    data = make_data(tmp / "data")
    cfg = tiny_config(tmp, mlflow={"enabled": True})
    ready = tmp / "mlflow.ready"
    assert main_mlflow_init(["--config", str(cfg), "--out", str(ready)]) == 0
    env = {"NCN_MLFLOW_PIPELINE": str(ready), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        metrics = run_train(cfg, tmp / "runs" / "causal", data, variant="causal", seed=0)
    return {"tmp": tmp, "data": data, "cfg": cfg, "ready": ready, "env": env, "metrics": metrics}


def client_for(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")


def artifacts(tmp: Path, run_id: str, path: str | None = None) -> set[str]:
    """Artifact paths of a run; listed from the store's folder, which its relative URIs resolve against."""
    old = os.getcwd()
    os.chdir(tmp)
    try:
        return {a.path for a in client_for(tmp).list_artifacts(run_id, path)}
    finally:
        os.chdir(old)


def runs_named(tmp: Path, name: str, experiment: str = "testprof"):
    c = client_for(tmp)
    exp = c.get_experiment_by_name(experiment)
    return [] if exp is None else [r for r in c.search_runs([exp.experiment_id]) if r.info.run_name == name]


def test_init_opens_a_pipeline_run_with_relative_paths(store):
    tmp = store["tmp"]
    ready = json.loads(store["ready"].read_text())
    assert ready["store"] == "mlflow.db" and ready["experiment"] == "testprof" and (tmp / "mlflow.db").exists()
    assert not any(str(v).startswith("/") for v in ready.values()), ready
    c = client_for(tmp)
    exp = c.get_experiment_by_name("testprof")
    assert exp.artifact_location == f"mlartifacts/{exp.experiment_id}"
    assert c.get_experiment("0").artifact_location == "mlartifacts/0"
    parent = c.get_run(ready["run_id"])
    assert parent.info.status == "RUNNING" and parent.data.tags["ncn.stage"] == "pipeline"
    assert parent.data.params["train.lr"] == "0.003"


def test_training_run_records_params_metrics_dataset_and_source(store):
    tmp, m = store["tmp"], store["metrics"]
    run = tmp / "runs" / "causal"
    (r,) = runs_named(tmp, "causal-xs-s0")
    ready = json.loads(store["ready"].read_text())
    assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == ready["run_id"]
    state = json.loads((run / "mlflow_run.json").read_text())
    assert state == {"store": "../../mlflow.db", "experiment": "testprof", "run_id": r.info.run_id,
                     "logged_through_step": 20}
    assert not r.info.artifact_uri.startswith("/") and r.info.artifact_uri.startswith("mlartifacts/")
    p = r.data.params
    assert (p["variant"], p["size"], p["seed"]) == ("causal", "xs", "0")
    assert p["train.lr"] == "0.003" and p["size_defs.xs.d_model"] == "32" and p["variants"] == '["none", "causal"]'
    assert p["n_params"] == str(m["n_params"]) and p["resolved_model.ncn"] == "causal" and p["device"] == "cpu"
    t = r.data.tags
    assert (t["variant"], t["size"], t["seed"]) == ("causal", "xs", "0") and t["ncn.run_dir"] == "runs/causal"
    assert t["mlflow.source.name"] == "ncn train" and t["mlflow.source.type"] == "JOB" and t["mlflow.user"]
    assert t["mlflow.source.git.commit"] == ready["git_commit"]
    # results are metrics; constants (seed, n_params, steps, ...) are not
    assert r.data.metrics["final_loss"] == pytest.approx(m["final_loss"])
    assert not {"seed", "n_params", "steps", "final/seed"} & set(r.data.metrics)
    assert any(k.startswith("system/") for k in r.data.metrics), sorted(r.data.metrics)
    hist = client_for(tmp).get_metric_history(r.info.run_id, "loss")
    assert [h.step for h in sorted(hist, key=lambda h: h.step)] == [1] + list(range(2, 21, 2))
    (inp,) = r.inputs.dataset_inputs
    sha = hashlib.sha256((store["data"] / "train.bin").read_bytes()).hexdigest()
    assert inp.dataset.name == "train.bin" and inp.dataset.digest == sha[:36]
    assert {t.key: t.value for t in inp.tags}["sha256"] == sha
    assert json.loads(inp.dataset.source)["uri"] == "data/train.bin"
    assert artifacts(tmp, r.info.run_id) == {"metrics.json", "config.json", "train_log.csv"}


def test_logged_model_loads_and_matches_model_pt(store, monkeypatch):
    import mlflow
    import torch

    from ncn.model import load_model

    tmp = store["tmp"]
    (r,) = runs_named(tmp, "causal-xs-s0")
    monkeypatch.chdir(tmp)  # relative artifact URIs resolve against the store's folder
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    model = mlflow.pytorch.load_model(f"runs:/{r.info.run_id}/model")
    ref, _ = load_model(tmp / "runs" / "causal" / "model.pt")
    x = torch.randint(0, ref.cfg.vocab_size, (2, 16))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)


def test_evaluation_run_nests_under_the_pipeline_and_marks_the_training_run(store, monkeypatch):
    from ncn.tracking import log_eval

    tmp = store["tmp"]
    run = tmp / "runs" / "causal"
    (run / "eval.json").write_text(json.dumps({"val_loss": 3.5}))
    for k, v in store["env"].items():
        monkeypatch.setenv(k, v)
    log_eval(run, {"val_loss": 3.5, "val_ppl": 33.1, "val_tokens": 4096})
    (train_run,) = runs_named(tmp, "causal-xs-s0")
    assert train_run.data.metrics["val_loss"] == 3.5 and "val_tokens" not in train_run.data.metrics
    (ev,) = runs_named(tmp, "causal-xs-s0-eval")
    ready = json.loads(store["ready"].read_text())
    assert ev.data.tags["mlflow.parentRunId"] == ready["run_id"] and ev.data.tags["ncn.train_run_id"] == train_run.info.run_id
    assert ev.data.params["variant"] == "causal" and ev.data.metrics["val_ppl"] == 33.1
    assert ev.data.params["val_tokens"] == "4096" and "val_tokens" not in ev.data.metrics  # a constant
    assert artifacts(tmp, ev.info.run_id) == {"eval.json"}


def test_pipeline_end_logs_the_results_and_closes_the_run(store, tmp_path):
    from ncn.tracking import main_mlflow_end

    ready = json.loads(store["ready"].read_text())
    res = tmp_path / "res"
    (res / "figures").mkdir(parents=True)
    (res / "figures" / "scaling.png").write_bytes(b"png")
    (res / "paper").mkdir()
    (res / "paper" / "ncn.pdf").write_bytes(b"%PDF")
    (res / "claims.json").write_text("{}")
    assert main_mlflow_end(["--ready", str(store["ready"]), "--results", str(res)]) == 0
    c = client_for(store["tmp"])
    assert c.get_run(ready["run_id"]).info.status == "FINISHED"
    assert artifacts(store["tmp"], ready["run_id"]) == {"figures", "paper", "claims.json"}
    assert artifacts(store["tmp"], ready["run_id"], "paper") == {"paper/ncn.pdf"}


def test_copied_store_works_on_the_copy_and_leaves_the_original_alone(store, tmp_path, monkeypatch):
    """Copy the whole folder (store, artifacts, runs): the copy's artifacts are read from the copy,
    and a later `ncn` call on a copied run writes to the copy's database only."""
    import mlflow

    from ncn.tracking import log_eval

    tmp = store["tmp"]
    copy = tmp_path / "moved"
    shutil.copytree(tmp, copy)
    before = (tmp / "mlflow.db").read_bytes()
    shutil.rmtree(tmp / "mlartifacts")  # any read from the original would now fail
    try:
        monkeypatch.delenv("NCN_MLFLOW_PIPELINE", raising=False)
        log_eval(copy / "runs" / "causal", {"val_bpb": 1.25})
        monkeypatch.chdir(copy)
        mlflow.set_tracking_uri("sqlite:///mlflow.db")
        (r,) = runs_named(copy, "causal-xs-s0")
        assert r.data.metrics["val_bpb"] == 1.25
        assert mlflow.pytorch.load_model(f"runs:/{r.info.run_id}/model") is not None
        assert (tmp / "mlflow.db").read_bytes() == before
    finally:
        shutil.copytree(copy / "mlartifacts", tmp / "mlartifacts")


def test_hand_run_goes_to_its_own_experiment(store, tmp_path, monkeypatch):
    tmp, cfg, data = store["tmp"], store["cfg"], store["data"]
    monkeypatch.delenv("NCN_MLFLOW_PIPELINE", raising=False)
    run_train(cfg, tmp_path / "hand", data, variant="none", seed=4)
    (r,) = runs_named(tmp, "none-xs-s4", experiment="testprof-hand")
    assert "mlflow.parentRunId" not in r.data.tags and r.data.tags["mlflow.source.type"] == "LOCAL"
    assert not runs_named(tmp, "none-xs-s4")
    assert client_for(tmp).get_experiment_by_name("testprof-hand").artifact_location.startswith("mlartifacts/")


def test_store_uri_precedence(monkeypatch):
    from ncn.tracking import hand_experiment, store_uri

    cfg = {"profile": "smoke", "mlflow": {"tracking_uri": None, "experiment": None}}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert store_uri(cfg) == "sqlite:///results/smoke/mlflow.db" and hand_experiment(cfg) == "smoke-hand"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    assert store_uri(cfg) == "http://mlflow:5000" and hand_experiment(cfg) == "mine"
    cfg["mlflow"]["tracking_uri"] = "sqlite:///x.db"
    assert store_uri(cfg) == "sqlite:///x.db"


def test_resumed_job_continues_the_same_mlflow_run(store):
    tmp, data, cfg = store["tmp"], store["data"], store["cfg"]
    run = tmp / "runs" / "resumed"
    # SIGKILLed once its MLflow run exists (the tracker starts it beside the first steps) and a
    # checkpoint is on disk: steps slowed to 0.5 s (10 s in all), so the kill lands mid-run even on a
    # loaded machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", **store["env"], "NCN_FAULT_STEP_DELAY_S": "0.5"}
    p = subprocess.Popen([sys.executable, "-m", "ncn.cli", "train", *train_args(cfg, run, data, seed=3)],
                         env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ((run / "mlflow_run.json").exists() and list((run / "ckpt").glob("step_*.pt.sha256"))):
        assert p.poll() is None and time.monotonic() < deadline, "no MLflow run and checkpoint before the kill"
        time.sleep(0.02)
    p.kill()
    assert p.wait() == -9 and not (run / "metrics.json").exists(), "finished before the kill: proves nothing"
    first_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    p = ncn_subprocess(["train", *train_args(cfg, run, data, seed=3)], store["env"])
    assert p.returncode == 0, p.stderr[-2000:]
    (r,) = runs_named(tmp, "causal-xs-s3")
    assert r.info.run_id == first_id and r.info.status == "FINISHED"
    steps = [h.step for h in client_for(tmp).get_metric_history(first_id, "loss")]
    assert sorted(steps) == [1] + list(range(2, 21, 2))  # no step logged twice


def test_resume_after_a_kill_between_the_batch_and_the_state_file_logs_no_step_twice(store, tmp_path):
    """A job killed after a batch reached the store but before mlflow_run.json recorded it (the file
    still says 0): the resumed job reads the last logged step from the store, so it adds only the
    steps after it. With the file's word alone (the code before) steps 1-4 were logged twice."""
    from ncn.config import load_config
    from ncn.tracking import STATE_FILE, Store, Tracker

    tmp, run_dir = store["tmp"], tmp_path / "killed"
    run_dir.mkdir()
    cfg, db = load_config(store["cfg"]), Store(f"sqlite:///{tmp}/mlflow.db")
    run_config = {**json.loads((tmp / "runs" / "causal" / "config.json").read_text()), "seed": 7}
    rows = [{"step": s, "loss": 5.0 - s / 10} for s in (1, 2, 3, 4)]
    first = Tracker(cfg, run_dir, store=db, experiment="testprof-kill", strict=True, replay=True)
    first.start(run_config, 100, 50, resumed=False)
    state = json.loads((run_dir / STATE_FILE).read_text())
    first.add_rows(rows)
    first.flush()  # the batch is in the store...
    (run_dir / STATE_FILE).write_text(json.dumps(state))  # ...and the kill came before the file said so
    first.client.set_terminated(first.run_id, status="KILLED")
    import mlflow

    mlflow.end_run()
    again = Tracker(cfg, run_dir, store=db, experiment="testprof-kill", strict=True, replay=True)
    again.start(run_config, 100, 50, resumed=True)
    assert again.run_id == first.run_id and again.logged_through == 4
    again.add_rows(rows + [{"step": 5, "loss": 4.4}])  # the checkpoint's log, restored, then one more step
    again.flush()
    mlflow.end_run()
    steps = sorted(m.step for m in client_for(tmp).get_metric_history(first.run_id, "loss"))
    assert steps == [1, 2, 3, 4, 5]


def test_unreachable_store_warns_then_sync_replays(store, tmp_path, caplog, monkeypatch):
    from ncn.tracking import main_mlflow_sync

    tmp, data, good_cfg = store["tmp"], store["data"], store["cfg"]
    monkeypatch.delenv("NCN_MLFLOW_PIPELINE", raising=False)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")  # the store's folder cannot be created under a file
    bad = tiny_config(tmp_path, mlflow={"enabled": True, "tracking_uri": f"sqlite:///{blocker}/x/mlflow.db"})
    runs = tmp / "runs_replayed"
    with caplog.at_level("WARNING", logger="ncn"):
        m = run_train(bad, runs / "causal" / "xs" / "seed5", data, seed=5)
    assert m["finished"] and "training continues without tracking" in caplog.text
    assert "mlflow-sync" in caplog.text
    assert not runs_named(tmp, "causal-xs-s5")
    assert main_mlflow_sync(["--runs", str(runs), "--config", str(good_cfg)]) == 0
    (r,) = runs_named(tmp, "causal-xs-s5")
    assert r.info.status == "FINISHED" and r.data.params["train.lr"] == "0.003" and r.data.tags["ncn.replayed"] == "true"
    assert r.data.tags["ncn.run_dir"] == "runs_replayed/causal/xs/seed5"
    assert len(client_for(tmp).get_metric_history(r.info.run_id, "loss")) == 11
    assert r.data.metrics["final_loss"] == pytest.approx(m["final_loss"]) and r.inputs.dataset_inputs
    assert json.loads((runs / "causal" / "xs" / "seed5" / "mlflow_run.json").read_text())["store"] == "../../../../mlflow.db"
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


def test_a_duplicate_row_from_a_concurrent_insert_is_retried_and_nothing_else(monkeypatch):
    from ncn import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    race = "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name"
    assert tracking._locked_or_duplicate(RuntimeError(race))
    assert tracking._locked_or_duplicate(RuntimeError("database is locked"))
    assert not tracking._locked_or_duplicate(RuntimeError("Run 'abc' not found"))
    assert not tracking._is_locked(RuntimeError(race))  # other calls do not retry a duplicate


RACE = """
import sys, time
from pathlib import Path
import mlflow
from ncn.tracking import Store, _client, log_dataset
store, exp, at, path = Store(sys.argv[1]), sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
_client(store)
with mlflow.start_run(experiment_id=exp):
    while time.time() < at:
        time.sleep(0.0005)
    log_dataset(store, path, "training")
"""


@pytest.mark.slow
def test_jobs_logging_the_same_dataset_at_once_all_succeed(tmp_path):
    """Three jobs released at one instant log the same token file: MLflow checks for the dataset row,
    then inserts it, so all but one used to fail with "UNIQUE constraint failed" (6 of 6 trials) and
    their runs ended FAILED (a CI failure of the smoke test)."""
    import time

    from ncn.tracking import Store, experiment_id

    store = Store(f"sqlite:///{tmp_path}/mlflow.db")
    exp = experiment_id(store, "race")
    data = tmp_path / "train.bin"
    data.write_bytes(os.urandom(4096))
    at = str(time.time() + 8)  # after every process has imported mlflow and opened its run
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, store.uri, exp, at, str(data)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    runs = client_for(tmp_path).search_runs([exp])
    assert len(runs) == 3 and all(r.inputs.dataset_inputs[0].dataset.name == "train.bin" for r in runs)


def test_no_absolute_path_in_the_store(store):
    """Every location the database holds is relative (a copied folder must not point back)."""
    with sqlite3.connect(store["tmp"] / "mlflow.db") as con:
        locations = [r[0] for r in con.execute("SELECT artifact_location FROM experiments")]
        locations += [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
        locations += [r[0] for r in con.execute("SELECT artifact_location FROM logged_models")]
    assert locations and not [x for x in locations if x.startswith("/") or x.startswith("file:")], locations


@pytest.mark.slow
def test_four_parallel_jobs_on_one_sqlite_store(store):
    tmp, data, cfg = store["tmp"], store["data"], store["cfg"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **store["env"]}
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


# ---- the tracker's worker thread: MLflow off the training's critical path ---------------------


class FakeTracker:
    """Records (call, thread) in `log`; `start` can wait on an event, `boom` names a call that raises."""

    def __init__(self, log: list, started=None, boom: str | None = None):
        import threading

        self.log, self.started, self.boom, self.on, self.off = log, started, boom, True, []
        self.log.append(("init", threading.current_thread().name))

    def _rec(self, name, *args):
        import threading

        if name == self.boom:
            raise RuntimeError(f"{name} broke")
        self.log.append((name, threading.current_thread().name, *args))

    def start(self, run_config, n, n_ne, resumed):
        waited = self.started.wait(10.0) if self.started is not None else None
        self._rec("start", run_config, waited)

    def add_rows(self, rows):
        self._rec("add_rows", rows)

    def flush(self):
        self._rec("flush")

    def finish(self, metrics, artifacts):
        self._rec("finish", metrics)

    def fail(self):
        self._rec("fail")

    def _off(self, what, e):
        self.on = False
        self.off.append((what, str(e)))


def test_tracker_thread_runs_the_calls_in_order_on_one_worker_and_does_not_block_the_caller():
    """start returns while the tracker's start still waits (the caller goes on training); every call
    runs on the one worker thread, in order, with the arguments as they were when queued; finish
    returns once everything ran."""
    import threading

    from ncn.tracking import TrackerThread

    log, started = [], threading.Event()
    t = TrackerThread(lambda: FakeTracker(log, started))
    config, rows = {"a": [1]}, [{"step": 1}]
    t.start(config, 10, 5, False)  # would block here for 10 s if start ran on this thread
    t.add_rows(rows)
    config["a"].append(2)
    rows.append({"step": 2})
    rows[0]["step"] = 99
    started.set()
    t.flush()
    t.finish({"final_loss": 1.0}, [])
    assert [c[0] for c in log] == ["init", "start", "add_rows", "flush", "finish"]
    assert {c[1] for c in log} == {"ncn-mlflow"} != {threading.current_thread().name}
    assert log[1][2:] == ({"a": [1]}, True)  # the config as queued; start saw the event set by the caller
    assert log[2][2] == [{"step": 1}]
    assert not t._thread.is_alive()
    with pytest.raises(Exception, match="after the run was closed"):
        t.flush()


def test_tracker_thread_turns_tracking_off_on_an_error_and_training_goes_on(caplog):
    from ncn.tracking import TrackerThread

    log = []
    fake = []
    t = TrackerThread(lambda: fake.append(FakeTracker(log, boom="add_rows")) or fake[0])
    t.start({}, 1, 1, False)
    t.add_rows([{"step": 1}])  # raises inside the worker: tracking goes off
    t.flush()
    t.fail()
    assert [c[0] for c in log] == ["init", "start"] and fake[0].off == [("add_rows", "add_rows broke")]
    assert not t._thread.is_alive()

    with caplog.at_level("WARNING", logger="ncn"):
        t2 = TrackerThread(lambda: (_ for _ in ()).throw(RuntimeError("no store")))  # the Tracker itself fails
        t2.start({}, 1, 1, False)
        t2.finish({}, [])
    assert not t2._thread.is_alive() and "failed to start (RuntimeError: no store)" in caplog.text


def test_tracker_thread_left_open_marks_the_run_failed_at_exit():
    """A job that dies before its loop never calls finish or fail: the exit handler closes the run FAILED."""
    import atexit

    from ncn.tracking import TrackerThread

    log = []
    t = TrackerThread(lambda: FakeTracker(log))
    t.start({}, 1, 1, False)
    t._abandon()  # what atexit runs
    assert [c[0] for c in log] == ["init", "start", "fail"] and not t._thread.is_alive()
    atexit.unregister(t._abandon)  # already unregistered by close; harmless


def test_training_steps_do_not_wait_for_mlflow(tmp_path, monkeypatch):
    """A real training job with MLflow on: the tracker's start waits (up to 10 s) for the first
    training forward. With the start on the training's thread that forward could never come first."""
    import threading

    import torch

    from ncn import tracking

    log, first_forward = [], threading.Event()
    monkeypatch.setattr(tracking, "Tracker", lambda cfg, run_dir, **kw: FakeTracker(log, first_forward))
    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: first_forward.set())
    try:
        data = make_data(tmp_path / "data")
        cfg = tiny_config(tmp_path, mlflow={"enabled": True})
        m = run_train(cfg, tmp_path / "run", data, variant="causal", seed=0)
    finally:
        hook.remove()
    assert m["finished"]
    assert [c[0] for c in log][:2] == ["init", "start"] and log[1][-1] is True, log[:2]
    assert log[-1][0] == "finish" and {c[1] for c in log} == {"ncn-mlflow"}


# ---- the pipeline's MLflow server (ncn.trackserver): MLflow imported once, not per job ----------

PROBE = ("import atexit, sys; atexit.register(lambda: print('MLFLOW_IMPORTED', 'mlflow' in sys.modules, "
         "'TORCH_IMPORTED', 'torch' in sys.modules, file=sys.stderr)); from ncn.cli import main; "
         "sys.exit(main(sys.argv[1:]))")


def start_server(tmp: Path) -> tuple[Path, Path, int]:
    """(config, marker, server pid): a store with a pipeline run and its server (ncn mlflow-init --serve)."""
    cfg = tiny_config(tmp, mlflow={"enabled": True})
    ready = tmp / "mlflow.ready"
    r = ncn_subprocess(["mlflow-init", "--config", str(cfg), "--out", str(ready), "--serve"])
    assert r.returncode == 0 and "jobs log through 'ncn mlflow-serve'" in r.stdout, r.stdout + r.stderr
    return cfg, ready, int(r.stdout.split("(pid ")[1].split(",")[0])


def probed_job(args: list[str], env: dict, wait: bool = True, **popen):
    cmd = [sys.executable, "-c", PROBE, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **popen)
    return subprocess.run(cmd, env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (d / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(d.name))
    return out


def _state(pid: int) -> str:
    """A process's state letter from /proc (R, S, T stopped, Z, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(check, what: str, tries: int = 100) -> None:
    for _ in range(tries):
        if check():
            return
        time.sleep(0.1)
    pytest.fail(what)


def test_server_records_what_an_in_process_job_records_and_the_job_never_imports_mlflow(store, tmp_path):
    """Training and evaluation through `ncn mlflow-serve`: the job process never imports MLflow,
    and the store holds the same params, metrics, tags, dataset, files and loadable model as the
    in-process job of the `store` fixture. `ncn mlflow-end` stops the server."""
    import mlflow

    from ncn.trackserver import socket_path

    cfg, ready, server = start_server(tmp_path)
    env = {"NCN_MLFLOW_PIPELINE": str(ready), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
    run = tmp_path / "runs" / "causal"
    for args in (["train", *train_args(cfg, run, store["data"])],
                 ["evaluate", "--run", str(run), "--data", str(store["data"]), "--config", str(cfg)]):
        r = probed_job(args, env)
        assert r.returncode == 0 and "MLFLOW_IMPORTED False TORCH_IMPORTED False" in r.stderr, r.stderr[-3000:]
        assert "failed" not in r.stderr and "lost" not in r.stderr, r.stderr[-3000:]
    log_text = (tmp_path / "logs" / "mlflow-serve.log").read_text()
    assert "tracker for job pid" in log_text and "log_eval for job pid" in log_text, log_text
    assert "job for job pid" in log_text and ": ncn train --config" in log_text and ": ncn evaluate --run" in log_text, log_text
    (here,), (there,) = runs_named(store["tmp"], "causal-xs-s0"), runs_named(tmp_path, "causal-xs-s0")
    assert there.info.status == "FINISHED" and there.data.tags["mlflow.parentRunId"] == json.loads(ready.read_text())["run_id"]
    assert set(there.data.params) == set(here.data.params)
    # MLflow adds mlflow.source.git.branch/repoURL where its entry point lies in a git checkout (a
    # job's, not pytest's); the commit is ours (source_tags) on both
    ours = lambda tags: {k for k in tags if not k.startswith("mlflow.source.git.")} | (  # noqa: E731
        {"mlflow.source.git.commit"} & set(tags))
    assert ours(there.data.tags) == ours(here.data.tags) and "mlflow.source.git.commit" in ours(there.data.tags)
    evaluated = {"val_loss", "val_ppl", "val_bpb"}  # the fixture's run may have had them logged by another test
    assert {k for k in there.data.metrics if not k.startswith("system/")} - evaluated == \
           {k for k in here.data.metrics if not k.startswith("system/")} - evaluated
    assert evaluated <= set(there.data.metrics)
    assert any(k.startswith("system/") for k in there.data.metrics)
    assert [i.dataset.digest for i in there.inputs.dataset_inputs] == [i.dataset.digest for i in here.inputs.dataset_inputs]
    assert artifacts(tmp_path, there.info.run_id) == artifacts(store["tmp"], here.info.run_id)
    (ev,) = runs_named(tmp_path, "causal-xs-s0-eval")
    assert ev.data.tags["ncn.train_run_id"] == there.info.run_id and artifacts(tmp_path, ev.info.run_id) == {"eval.json"}
    old = os.getcwd()
    os.chdir(tmp_path)  # the artifacts' relative URIs resolve against it; an absolute store URI (MLflow caches stores by URI)
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
        assert mlflow.pytorch.load_model(f"runs:/{there.info.run_id}/model") is not None
    finally:
        os.chdir(old)
    r = ncn_subprocess(["mlflow-end", "--ready", str(ready), "--results", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    assert not Path(socket_path(ready)).exists()
    _until(lambda: not Path(f"/proc/{server}").exists() or _state(server) == "Z", "the server did not exit at mlflow-end", 50)


@pytest.mark.slow
def test_a_killed_job_ends_its_server_child_and_its_resumed_job_continues_the_run(tmp_path):
    """kill -9 of a job whose run the server's child created: the child exits, the server serves
    the next job, and the resumed job continues the same MLflow run to FINISHED."""
    import signal

    data = make_data(tmp_path / "data")
    cfg, ready, server = start_server(tmp_path)
    cfg = tiny_config(tmp_path, "long.yaml", mlflow={"enabled": True},
                      train={"tokens": 400 * 4 * 16, "ckpt_every": 40, "log_every": 10})
    env, run = {"NCN_MLFLOW_PIPELINE": str(ready)}, tmp_path / "run"
    job = probed_job(["train", *train_args(cfg, run, data)], env, wait=False)
    for _ in range(600):  # until the first checkpoint's metrics reached the store
        with contextlib.suppress(OSError, ValueError):
            if json.loads((run / "mlflow_run.json").read_text())["logged_through_step"] >= 40:
                break
        assert job.poll() is None, job.communicate()[1][-3000:]
        time.sleep(0.1)
    assert children_of(server), "the job's tracking does not run in a child of the server"
    job.send_signal(signal.SIGKILL)
    job.communicate()
    _until(lambda: not children_of(server), "the killed job's child is still running")
    first = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    r = probed_job(["train", *train_args(cfg, run, data)], env)
    assert r.returncode == 0 and "MLFLOW_IMPORTED False" in r.stderr, r.stderr[-3000:]
    (again,) = runs_named(tmp_path, "causal-xs-s0")
    assert again.info.run_id == first and again.info.status == "FINISHED"
    steps = [m.step for m in client_for(tmp_path).get_metric_history(first, "loss")]
    assert len(steps) == len(set(steps)) and max(steps) == 400
    assert ncn_subprocess(["mlflow-end", "--ready", str(ready), "--results", str(tmp_path)]).returncode == 0


def test_a_job_forked_by_the_server_is_the_job_its_own_process_would_be(tmp_path):
    """`ncn train` in a fork of the server (ncn.trackserver.delegate) against the same job in its
    own process (NCN_FORK_JOBS=0): the job's process never imports torch; the metrics, the train
    log and the weights are bitwise the same; an error's message and exit status are passed on."""
    import torch

    data = make_data(tmp_path / "data")
    cfg, ready, server = start_server(tmp_path)
    served = {"NCN_MLFLOW_PIPELINE": str(ready)}
    runs = {}
    for how, env in (("own", {**served, "NCN_FORK_JOBS": "0"}), ("forked", {**served, "NCN_BENCH_PROBE": "child"})):
        runs[how] = tmp_path / how
        r = probed_job(["train", *train_args(cfg, runs[how], data)], env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"TORCH_IMPORTED {how == 'own'}" in r.stderr, r.stderr[-3000:]
    stamps = json.loads(r.stderr.split("NCN_BENCH_TIMES ")[1].splitlines()[0])  # `ncn bench startup`'s, from the fork
    assert stamps["forked"][0] <= stamps["first_forward"][0] <= stamps["last_step_done"][0] <= stamps["atexit"][0]
    own, forked = (json.loads((runs[h] / "metrics.json").read_text()) for h in ("own", "forked"))
    assert comparable(own) == comparable(forked)
    untimed = lambda run: [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in read_log(run)]  # noqa: E731
    assert untimed(runs["own"]) == untimed(runs["forked"]) and len(untimed(runs["own"])) > 1
    weights = [torch.load(runs[h] / "model.pt", map_location="cpu", weights_only=False) for h in ("own", "forked")]
    assert_same_tensors(*weights)
    for bad, rc, says in ((["--threads", "0"], 2, "--threads must be at least 1"), (["--bogus"], 2, "unrecognized arguments")):
        for env in ({**served, "NCN_FORK_JOBS": "0"}, served):
            r = probed_job(["train", *train_args(cfg, tmp_path / "bad", data), *bad], env)
            assert r.returncode == rc and says in r.stderr, (env, r.returncode, r.stderr[-2000:])
    # a job whose start-up environment differs from the server's runs in its own process
    r = probed_job(["train", *train_args(cfg, tmp_path / "bad", data), "--threads", "0"], {**served, "PYTHONHASHSEED": "7"})
    assert r.returncode == 2 and "TORCH_IMPORTED True" in r.stderr, r.stderr[-2000:]
    assert "(its start-up environment differs: PYTHONHASHSEED): it runs in its own process" in r.stderr, r.stderr[-2000:]
    assert ncn_subprocess(["mlflow-end", "--ready", str(ready), "--results", str(tmp_path)]).returncode == 0
    served = (tmp_path / "logs" / "mlflow-serve.log").read_text()  # each fork's job, then its CPU and RSS
    fork = served.split(": job for job pid")[0].rsplit("pid ", 1)[1]
    assert f"pid {fork} done: CPU " in served and "exited with status 2" in served, served[-3000:]
    # ... and each fork's row in the ledger (ncn bench stages adds its CPU to its stage's)
    from ncn.trackserver import LEDGER_COLUMNS, ledger_path

    lines = ledger_path(ready).read_text().splitlines()
    assert lines[0].split("\t") == list(LEDGER_COLUMNS)
    rows = [dict(zip(LEDGER_COLUMNS, line.split("\t"))) for line in lines[1:]]
    mine = next(r for r in rows if r["pid"] == fork)
    assert mine["kind"] == "job" and mine["stage"] == "train" and mine["status"] == "0", rows
    assert float(mine["cpu_s"]) > 0.1 and float(mine["max_rss_mb"]) > 100 and mine["command"].startswith("train --config")
    assert {r["status"] for r in rows if r["kind"] == "job"} == {"0", "2"}
    assert any(r["kind"] == "tracker" and float(r["cpu_s"]) > 0 for r in rows), rows


def test_a_fork_declines_a_job_that_would_not_start_as_it_would_in_its_own_process(monkeypatch):
    """`_declines`: another interpreter, container or cgroup, or an environment read at start-up that
    differs from the server's, sends the job back to its own process; the thread counts that
    Snakemake sets per job do not (the fork applies them); one the server had and the job lacks does."""
    from ncn import trackserver as ts

    monkeypatch.setattr(ts, "_START_ENV", {"HOME": "/h", "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "1"})
    here = ts._where()
    job = lambda **env: {"where": here, "env": {"HOME": "/x", "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "1", **env}}  # noqa: E731
    assert ts._declines(job()) is None
    assert ts._declines(job(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", SNAKEMAKE_X="y")) is None
    assert "PYTHONHASHSEED" in ts._declines(job(PYTHONHASHSEED="2"))
    assert "MALLOC_ARENA_MAX" in ts._declines(job(MALLOC_ARENA_MAX="2"))
    assert "NCN_SCHEMA" in ts._declines(job(NCN_SCHEMA="/other.yaml"))
    lacking = job()
    del lacking["env"]["OMP_NUM_THREADS"]
    assert "OMP_NUM_THREADS" in ts._declines(lacking)
    assert "interpreter" in ts._declines({**job(), "where": ("/other/python", *here[1:])})
    assert "interpreter" in ts._declines({**job(), "where": (*here[:4], "0::/slurm/job_1\n")})
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert ts._threads("OMP_NUM_THREADS", "MKL_NUM_THREADS") == 3
    monkeypatch.setenv("MKL_NUM_THREADS", "junk")
    assert ts._threads("MKL_NUM_THREADS", "OMP_NUM_THREADS") is None


def test_the_server_and_its_jobs_check_that_the_other_end_is_this_user():
    import socket

    from ncn import trackserver as ts

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert ts._same_user(a) and ts._same_user(b)


def assert_same_tensors(a, b) -> None:
    """Two (nested) checkpoints hold the same values, their tensors bitwise."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


@pytest.mark.slow
def test_a_forked_job_dies_of_the_signal_its_job_process_gets(tmp_path):
    """Signals to a job's process while its fork trains, as a job in its own process would take them:
    Ctrl-Z (SIGTSTP) stops both and SIGCONT continues both, in a process group a shell could continue
    (in an orphaned one, where the kernel drops a SIGTSTP, neither stops); SIGTERM kills the fork and
    the job's process dies of SIGTERM. A fork killed by a signal its job's process did not pass on
    (the OOM killer, kill -9 of the fork) makes that process die of the same signal (the server says which).
    A stopped fork whose job's process is killed is killed by the server."""
    import signal

    data = make_data(tmp_path / "data")
    cfg, ready, server = start_server(tmp_path)
    cfg = tiny_config(tmp_path, "long.yaml", mlflow={"enabled": True}, train={"tokens": 4000 * 4 * 16})
    # the signal that ends it and where it goes (the job's process, its fork, the job's process once both are
    # stopped), and the job's process group: one of this session, or an orphaned one
    cases = ((signal.SIGTERM, "job", {"process_group": 0}), (signal.SIGKILL, "fork", {"start_new_session": True}),
             (signal.SIGKILL, "stopped job", {"process_group": 0}))
    jobs = []
    try:
        for n, (sig, to, group) in enumerate(cases):
            run = tmp_path / f"run{n}"
            job = probed_job(["train", *train_args(cfg, run, data)], {"NCN_MLFLOW_PIPELINE": str(ready)}, wait=False, **group)
            jobs.append(job)
            _until(lambda: (run / "train_log.partial.csv").exists() or job.poll() is not None, "it does not train", 600)
            assert job.poll() is None, job.communicate()[1][-3000:]
            served = tmp_path / "logs" / "mlflow-serve.log"
            _until(lambda: f": job for job pid {job.pid}:" in served.read_text(), "the server did not log the fork")
            fork = int(re.search(rf"pid (\d+): job for job pid {job.pid}:", served.read_text()).group(1))
            assert fork in children_of(server)
            job.send_signal(signal.SIGTSTP)
            if to == "fork":  # an orphaned process group: the kernel drops the job's SIGTSTP, and the fork goes on
                time.sleep(1.0)
                assert _state(fork) != "T" and _state(job.pid) != "T", (_state(fork), _state(job.pid))
                os.kill(fork, sig)
            else:
                _until(lambda: _state(fork) == "T" and _state(job.pid) == "T", "Ctrl-Z did not stop the fork and the job")
                if to == "job":
                    job.send_signal(signal.SIGCONT)
                    _until(lambda: _state(fork) != "T" and _state(job.pid) != "T", "SIGCONT did not continue both")
                job.send_signal(sig)  # a stopped fork cannot kill itself when its job's process is killed: the server does
            assert job.wait(timeout=60) == -sig, job.communicate()[1][-3000:]
            _until(lambda: fork not in children_of(server), "the job's fork is still running")
            says = job.communicate()[1]
            assert (f"was killed by signal {sig}" in says) == (to == "fork"), says[-2000:]  # not said of the signal it passed on
            _until(lambda: f"pid {fork} (job for job pid {job.pid}" in served.read_text(), "the server did not log the end")
            assert f"was killed by signal {int(sig)}" in served.read_text()
    finally:  # a failure must not leave a stopped fork, its tracker or its job behind
        for job in jobs:
            with contextlib.suppress(ProcessLookupError):
                job.kill()
        for pid in children_of(server):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    from ncn.trackserver import ledger_path

    killed = [line.split("\t") for line in ledger_path(ready).read_text().splitlines() if "\tsignal " in line]
    assert sorted(row[7] for row in killed if row[3] == "job") == ["signal 15", "signal 9", "signal 9"], killed
    assert ncn_subprocess(["mlflow-end", "--ready", str(ready), "--results", str(tmp_path)]).returncode == 0


def test_without_a_server_a_job_tracks_in_its_own_process(tmp_path, monkeypatch):
    """No server (or NCN_MLFLOW_SERVER=0): connect says None at once, and the caller logs itself."""
    from ncn import trackserver

    monkeypatch.setenv("NCN_MLFLOW_PIPELINE", str(tmp_path / "mlflow.ready"))
    t0 = time.perf_counter()
    assert trackserver.connect("tracker") is None and trackserver.remote_tracker({}, tmp_path) is None
    assert trackserver.remote_log_eval(tmp_path, {}) is False and time.perf_counter() - t0 < 1.0
    assert trackserver.stop(tmp_path / "mlflow.ready") is False
    monkeypatch.setenv("NCN_MLFLOW_SERVER", "0")
    assert trackserver.connect("tracker") is None


@pytest.mark.slow
def test_the_server_exits_when_the_process_it_watches_is_gone(tmp_path):
    from ncn import trackserver

    ready = tmp_path / "mlflow.ready"
    watched = subprocess.Popen(["sleep", "120"])
    server = trackserver.spawn(ready, watched.pid, tmp_path / "serve.log")
    assert trackserver.wait_ready(server, ready, tmp_path / "serve.log") is None
    watched.kill()
    watched.wait()
    assert server.wait(timeout=15) == 0 and not Path(trackserver.socket_path(ready)).exists()
