"""MLflow tracking that never stops training: the files in the run folder are the record.

Runs. Each Snakemake invocation opens one pipeline run (`ncn mlflow-init`, from the Snakefile's
onstart) and closes it (`ncn mlflow-end`, from onsuccess/onerror), logging the figures, tables,
claims.json and the paper to it. Jobs find it through NCN_MLFLOW_PIPELINE (the path of
results/<profile>/mlflow.ready) and nest under it: one run per training job ("causal-xs-s0", with
system metrics, the tokenized data as a dataset input and the model) and one per evaluation
("causal-xs-s0-eval"). `ncn train` by hand logs to the experiment "<experiment>-hand" (or
$MLFLOW_EXPERIMENT_NAME).

A portable store. The default store is results/<profile>/mlflow.db; every path MLflow keeps is
relative to its folder (experiments' artifact_location is "mlartifacts/<id>", so run and model
artifact URIs are relative too), and mlflow.ready / RUN/mlflow_run.json name the database relative
to themselves. Copying or moving the folder moves everything. MLflow resolves those relative URIs
against the current directory, so `ncn` makes its artifact calls inside the store's folder and the
UI is started there (`make mlflow-ui`).

Off the critical path. A training job's Tracker runs on a worker thread (`TrackerThread`): MLflow's
import and the run's first writes overlap the first training steps; finishing waits for them.
Under Snakemake the Tracker and `log_eval` run in the pipeline's MLflow server instead
(ncn.trackserver: one process that imports MLflow once and forks a child per job); the job then
never imports MLflow. Where no server answers, they run in the job as described here.

Failures. Calls that touch the store go through `_retry` (SQLite reports "database is locked" at
once, without waiting, when a reader must become a writer on a busy store) and, in a job, through
`Tracker._safe`: if MLflow still fails, a warning is logged, tracking is off for the rest of the
job, and training goes on. `ncn mlflow-sync` replays finished run folders afterwards. The run
folder's mlflow_run.json ({store, experiment, run_id, logged_through_step}) lets a resumed job
continue its MLflow run without logging a step twice; metrics go in batches at each checkpoint.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import getpass
import json
import logging
import math
import os
import queue
import random
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from ncn.errors import NCNError
from ncn.fileio import read_csv_rows, read_json, sha256_file, write_json
from ncn.provenance import git_commit

log = logging.getLogger("ncn.tracking")

STATE_FILE = "mlflow_run.json"
PIPELINE_ENV = "NCN_MLFLOW_PIPELINE"
ARTIFACT_DIR = "mlartifacts"  # beside the database
ARTIFACTS = ("metrics.json", "config.json", "train_log.csv")
# metrics.json -> MLflow: results are metrics (at the last step), constants are params
FINAL_METRICS = {"final_loss": "final_loss", "final_ce": "final_ce", "final_reg": "final_reg",
                 "wall_time_s": "wall_time_s", "tokens_per_s": "mean_tokens_per_s"}
END_PARAMS = ("epochs", "device", "dtype", "batch_order_sha256")
# eval.json -> MLflow: these are metrics (also on the training run); other numbers (val_tokens,
# val_bytes, ...) are the evaluation run's params
EVAL_METRICS = {k: k for k in ("val_loss", "val_ppl", "val_bpb", "val_loss_prefix_pool")}
# results/<profile>/... -> the pipeline run's artifacts (what exists when the invocation ends)
RESULTS = ("figures", "tables", "claims.json", "paper/ncn.pdf", "config.json")
MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_DIGEST_LEN = 36  # MAX_DATASET_DIGEST_SIZE: the digest is the sha256's first 36 hex digits
_jitter = random.Random()  # never the global RNG: its state is part of the checkpoints


# ---- the store, the experiment, the retry helper -----------------------------------------------


class Store:
    """A tracking URI; for a local SQLite store also its folder, which stored paths are relative to."""

    def __init__(self, uri: str):
        self.db = Path(uri[len("sqlite:///"):]).resolve() if uri.startswith("sqlite:///") else None
        self.uri = f"sqlite:///{self.db}" if self.db else uri
        self.root = self.db.parent if self.db else None

    @classmethod
    def at(cls, ref: str, base: Path) -> Store:
        """The store a saved reference names: a URI, or a database path relative to `base`."""
        return cls(ref if "://" in ref else f"sqlite:///{Path(base) / ref}")

    def ref(self, base: Path) -> str:
        """The reference to save in a file in `base`: the database's relative path, or the URI."""
        return os.path.relpath(self.db, Path(base).resolve()) if self.db else self.uri

    def rel(self, path: Path) -> str:
        """A path as MLflow records it: relative to the store's folder (else the current one)."""
        return os.path.relpath(Path(path).resolve(), self.root or Path.cwd())

    @contextlib.contextmanager
    def cwd(self):
        """Artifact calls: MLflow resolves the stored relative artifact URIs against the current dir."""
        old = os.getcwd()
        if self.root:
            os.chdir(self.root)
        try:
            yield
        finally:
            os.chdir(old)


def store_uri(cfg: dict) -> str:
    """mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else results/<profile>/mlflow.db."""
    return (cfg["mlflow"].get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///results/{cfg['profile']}/mlflow.db")


def experiment_name(cfg: dict) -> str:
    return cfg.get("mlflow", {}).get("experiment") or cfg["profile"]


def hand_experiment(cfg: dict) -> str:
    """Where `ncn train` outside Snakemake logs: $MLFLOW_EXPERIMENT_NAME, else "<experiment>-hand"."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"{experiment_name(cfg)}-hand"


def _is_locked(e: BaseException) -> bool:
    msg = str(e).lower()
    return "database is locked" in msg or "database table is locked" in msg or "busy" in msg


def _locked_or_duplicate(e: BaseException) -> bool:
    """Worth retrying a dataset insert: a lock (`_is_locked`), or a concurrent insert of the same
    row (SQLite's message; PostgreSQL's and MySQL's)."""
    msg = str(e).lower()
    return _is_locked(e) or "unique constraint failed" in msg or "duplicate key" in msg or "duplicate entry" in msg


def _retry(fn: Callable, *args, attempts: int = 8, transient: Callable[[BaseException], bool] = _is_locked, **kw):
    """Call fn, retrying with exponential backoff + jitter while `transient` (SQLite reports a lock)."""
    delay = 0.2
    for i in range(attempts):
        try:
            return fn(*args, **kw)
        except Exception as e:
            if i == attempts - 1 or not transient(e):
                raise
            time.sleep(delay * (1.0 + _jitter.random()))
            delay = min(delay * 2, 5.0)


MLFLOW_ENV = (("MLFLOW_DISABLE_TELEMETRY", "true"),  # no calls home from compute nodes
              ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"),  # an unreachable server fails in seconds
              ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
              ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),  # no \r in job logs
              ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "5"))  # MLflow's 10 s: short jobs got none


def _client(store: Store):
    for key, value in MLFLOW_ENV:
        os.environ.setdefault(key, value)
    import mlflow

    mlflow.set_tracking_uri(store.uri)
    return mlflow.MlflowClient(tracking_uri=store.uri)


def experiment_id(store: Store, name: str) -> str:
    """The experiment's id, creating it (with an artifact location relative to the store) if needed."""
    client = _client(store)
    exp = _retry(client.get_experiment_by_name, name)
    if exp is None:
        try:
            _retry(client.create_experiment, name)
        except Exception:  # a parallel job created it first
            if _retry(client.get_experiment_by_name, name) is None:
                raise
        exp = _retry(client.get_experiment_by_name, name)
        _relative_locations(store, exp.experiment_id)
    return exp.experiment_id


def _relative_locations(store: Store, exp_id: str) -> None:
    """Set the experiment's (and the Default one's) artifact_location to "mlartifacts/<id>".
    MLflow makes every local location absolute and has no call to change it, so this is SQL."""
    if store.db is None:
        return
    with contextlib.closing(sqlite3.connect(store.db, timeout=60)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? || experiment_id WHERE experiment_id IN (0, ?)",
                    (f"{ARTIFACT_DIR}/", int(exp_id)))


def pipeline() -> dict | None:
    """The pipeline run of this Snakemake invocation ($NCN_MLFLOW_PIPELINE), or None by hand."""
    path = os.environ.get(PIPELINE_ENV)
    if not path:
        return None
    try:
        ready = read_json(path)
    except (OSError, ValueError) as e:
        return {"error": f"{path}: {e}"}
    if not ready.get("run_id"):
        return {"error": ready.get("error") or f"{path} names no pipeline run"}
    return {**ready, "store": Store.at(ready["store"], Path(path).parent)}


def ui_url(results: str | Path, port: int = 5000) -> str:
    """The MLflow UI's runs table of a results folder's experiment: the "Model training" view
    (MLflow 3 opens on GenAI traces), sorted by run name, which also lists nested runs flat."""
    try:
        exp = f"experiments/{read_json(Path(results) / 'mlflow.ready')['experiment_id']}/runs"
    except (OSError, ValueError, KeyError):
        exp = "experiments"
    return (f"http://127.0.0.1:{port}/#/{exp}?workflowType=machine_learning"
            "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true")


# ---- what a run records ---------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 1}} -> {'train.lr': '1'}; lists as JSON; values cut to MLflow's limit."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    text = json.dumps(obj) if isinstance(obj, (list, tuple)) or obj is None else str(obj)
    if len(text) > MAX_PARAM_LEN:
        text = text[: MAX_PARAM_LEN - 3] + "..."
    out[prefix[:-1]] = text
    return out


def run_params(run_config: dict, n_params: int, n_params_non_embedding: int) -> dict[str, str]:
    """The run's identity and counts, the whole resolved config and the resolved model/train settings."""
    params = {k: str(run_config[k]) for k in ("variant", "size", "seed", "steps", "tokens_per_step")}
    params.update({"n_params": str(n_params), "n_params_non_embedding": str(n_params_non_embedding),
                   "tokens": str(run_config["steps"] * run_config["tokens_per_step"]),
                   "tokenizer_sha256": str(run_config.get("tokenizer_sha256"))})
    params.update(flatten(run_config["config"]))
    params.update(flatten(run_config["model_config"], "resolved_model."))
    params.update(flatten(run_config["train"], "resolved_train."))
    return params


def run_name(run_config: dict) -> str:
    return f"{run_config['variant']}-{run_config['size']}-s{run_config['seed']}"


def source_tags(name: str, pipeline_run: bool, commit: str) -> dict[str, str]:
    """MLflow's standard source tags (the UI's "Source" and "Created by" columns)."""
    return {"mlflow.source.name": name, "mlflow.source.type": "JOB" if pipeline_run else "LOCAL",
            "mlflow.source.git.commit": commit, "mlflow.user": getpass.getuser()}


def log_rows_as_metrics(rows: Iterable[dict]) -> list[tuple[str, float, int]]:
    """(key, value, step) for every numeric cell of train_log rows (empty cells skipped)."""
    out = []
    for row in rows:
        step = int(row["step"])
        for k, v in row.items():
            if k == "step" or v is None or v == "":
                continue
            x = float(v)
            if math.isfinite(x):
                out.append((k, x, step))
    return out


def numeric_metrics(values: dict, step: int, names: dict | None = None) -> list[tuple[str, float, int]]:
    """(name, value, step) for the finite numbers of a dict (bools, text, None skipped), by key;
    `names` picks and renames keys."""
    names = names or {k: k for k in values}
    return [(names[k], float(v), step) for k, v in sorted(values.items())
            if k in names and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]


def _metric_objs(triples: list[tuple[str, float, int]]):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key=k, value=float(v), timestamp=now, step=int(s)) for k, v, s in triples]


def log_dataset(store: Store, path: Path, context: str) -> None:
    """A token file as the active run's dataset input: its source relative to the store, its digest
    the sha256 (cut to MLflow's 36 characters; the whole hash is the input's `sha256` tag)."""
    import mlflow
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    sha = sha256_file(path)
    source = get_dataset_source_from_json(json.dumps({"uri": store.rel(path)}), "local")
    dataset = MetaDataset(source, name=Path(path).name, digest=sha[:MAX_DIGEST_LEN])
    # Jobs logging the same file at once race on MLflow's check-then-insert of the dataset row (the
    # loser gets "UNIQUE constraint failed"); the second try finds the row and links to it.
    _retry(mlflow.log_input, dataset, context=context, tags={"sha256": sha, "bytes": str(Path(path).stat().st_size)},
           transient=_locked_or_duplicate)


def import_mlflow_pytorch():
    """`mlflow.pytorch`, its import's side effect undone: its Lightning module calls
    logging.basicConfig(), which doubled our log lines."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    import mlflow.pytorch

    root.handlers[:] = handlers
    root.setLevel(level)
    return mlflow.pytorch


def log_model(model_pt: Path) -> None:
    """model.pt as an MLflow PyTorch model: `mlflow.pytorch.load_model("runs:/<id>/model")` returns
    the Transformer (pickled by reference: loading needs the ncn package installed)."""
    import torch

    from ncn.model import load_model

    mlflow_pytorch = import_mlflow_pytorch()
    model, _ = load_model(model_pt)
    quiet = logging.getLogger("mlflow.pytorch")  # its warning about pickle, once per job
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        mlflow_pytorch.log_model(model, name="model", serialization_format="pickle",
                                 pip_requirements=[f"torch=={torch.__version__}"])
    finally:
        quiet.setLevel(level)


def _end_quietly() -> None:
    """Leave the active run and stop its system-metrics thread without waiting on a failing store."""
    import mlflow
    from mlflow.tracking import fluent

    run = mlflow.active_run()
    if run is not None:
        monitor = fluent.run_id_to_system_metrics_monitor.pop(run.info.run_id, None)
        with contextlib.suppress(Exception):
            if monitor is not None:
                monitor.finish()
            mlflow.end_run("FAILED")


# ---- the tracker a training job uses ------------------------------------------------------


class Tracker:
    """One MLflow run per training job; every failure becomes a warning (see the module doc).

    `store`/`experiment` override where the run goes (`ncn mlflow-sync`), `strict` raises instead
    of warning, and `replay` marks a run made from finished files (no system metrics)."""

    def __init__(self, cfg: dict, run_dir: Path, enabled: bool = True, *, store: Store | None = None,
                 experiment: str | None = None, strict: bool = False, replay: bool = False):
        self.run_dir, self.strict, self.replay = Path(run_dir), strict, replay
        self.run_id: str | None = None
        self.logged_through = 0
        self.pending: list[tuple[str, float, int]] = []
        self.on = bool(enabled and cfg["mlflow"]["enabled"])
        if not self.on:
            return
        ctx = None if store else pipeline()
        if ctx and "error" in ctx:
            self._off("pipeline run", RuntimeError(ctx["error"]))
            return
        self.parent = ctx["run_id"] if ctx else None
        self.commit = ctx["git_commit"] if ctx else git_commit()
        self.store = store or (ctx["store"] if ctx else Store(store_uri(cfg)))
        self.experiment = experiment or (ctx["experiment"] if ctx else hand_experiment(cfg))

    def _off(self, what: str, e: BaseException) -> None:
        log.warning(
            "MLflow %s failed (%s: %s); training continues without tracking - the files in %s are "
            "the record; replay them later with 'ncn mlflow-sync --runs <runs dir>'",
            what, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "", self.run_dir,
        )
        self.on = False
        with contextlib.suppress(Exception):
            _end_quietly()

    def _safe(self, what: str, fn: Callable, *args, **kw):
        if not self.on:
            return None
        try:
            return _retry(fn, *args, **kw)
        except Exception as e:
            if self.strict:
                raise
            self._off(what, e)
            return None

    def _save_state(self) -> None:
        write_json(self.run_dir / STATE_FILE, {
            "store": self.store.ref(self.run_dir), "experiment": self.experiment, "run_id": self.run_id,
            "logged_through_step": self.logged_through,
        })

    def _old_state(self) -> dict | None:
        """mlflow_run.json (read_state), if its run belongs to this store."""
        state = read_state(self.run_dir)
        return state if state and state["store"].uri == self.store.uri else None

    def start(self, run_config: dict, n_params: int, n_params_non_embedding: int, resumed: bool) -> None:
        """Create the MLflow run, or continue the previous one when resuming from a checkpoint."""
        if not self.on:
            return
        import mlflow

        self.client = self._safe("connect", _client, self.store)
        state = self._old_state() if self.on else None
        old = state["run_id"] if state else None
        if old and resumed:
            try:
                _retry(mlflow.start_run, run_id=old, log_system_metrics=not self.replay)
                saved = int(state["logged_through_step"])
                self.run_id, self.logged_through = old, max(saved, self._last_logged_step(old))
                log.info("MLflow: continuing run %s", old)
                return
            except Exception as e:  # deleted from the store, or the store is down: a new run below
                log.info("MLflow: cannot continue run %s (%s); starting a new one", old, type(e).__name__)
        elif old:  # a job that died before its first checkpoint: close its run
            with contextlib.suppress(Exception):
                if self.client.get_run(old).info.status == "RUNNING":
                    _retry(self.client.set_terminated, old, status="KILLED")
        exp_id = self._safe("experiment", experiment_id, self.store, self.experiment)
        tags = {"variant": run_config["variant"], "size": run_config["size"], "seed": str(run_config["seed"]),
                "profile": run_config["config"]["profile"], "ncn.stage": "train",
                "ncn.run_dir": self.store.rel(self.run_dir), **({"ncn.replayed": "true"} if self.replay else {}),
                **source_tags("ncn train", self.parent is not None, self.commit)}
        run = self._safe("create run", mlflow.start_run, experiment_id=exp_id, run_name=run_name(run_config),
                         parent_run_id=self.parent, tags=tags, log_system_metrics=not self.replay) if exp_id else None
        if run is None:
            return
        self.run_id, self.logged_through = run.info.run_id, 0
        self._safe("log params", mlflow.log_params, run_params(run_config, n_params, n_params_non_embedding))
        train_bin = Path(run_config.get("data_dir") or "/nonexistent") / "train.bin"
        if train_bin.is_file():
            # one attempt here: log_dataset retries locks and duplicates itself (nesting would multiply them)
            self._safe("log dataset", log_dataset, self.store, train_bin, "training", attempts=1)
        if self.on:
            self._save_state()

    def _last_logged_step(self, run_id: str) -> int:
        """The last step of `loss` the store holds for the run (0 if it cannot tell). A job killed
        after a batch reached the store but before mlflow_run.json recorded it leaves the file
        behind the store; its resumed job must not log those steps again. A batch is one
        transaction, so its `loss` rows are there exactly when the rest of it is."""
        try:
            return max((m.step for m in _retry(self.client.get_metric_history, run_id, "loss")), default=0)
        except Exception:
            return 0

    def add_rows(self, rows: Iterable[dict]) -> None:
        """Queue train_log rows not yet in MLflow (a resumed job re-adds the restored rows)."""
        if self.on and self.run_id is not None:
            self.pending += [t for t in log_rows_as_metrics(rows) if t[2] > self.logged_through]

    def flush(self) -> None:
        if not self.on or self.run_id is None or not self.pending:
            return
        last = max(s for _, _, s in self.pending)
        self._safe("log metrics", self.client.log_batch, self.run_id, metrics=_metric_objs(self.pending))
        if self.on:
            self.pending, self.logged_through = [], max(last, self.logged_through)
            self._save_state()

    def finish(self, metrics: dict, artifacts: Iterable[Path]) -> None:
        """The final metrics and constants, the files, the model (from RUN/model.pt); FINISHED."""
        if not self.on or self.run_id is None:
            return
        import mlflow

        self.flush()
        self.pending = numeric_metrics(metrics, int(metrics["steps"]), FINAL_METRICS)
        self.flush()
        self._safe("log params", mlflow.log_params, {k: str(metrics[k]) for k in END_PARAMS if k in metrics})
        files = [str(Path(p).resolve()) for p in artifacts if Path(p).exists()]
        model_pt = (self.run_dir / "model.pt").resolve()
        with self.store.cwd():
            for path in files:
                self._safe("log artifact", mlflow.log_artifact, path)
            if model_pt.exists():
                self._safe("log model", log_model, model_pt)
        self._safe("finish run", mlflow.end_run, "FINISHED")

    def fail(self) -> None:
        if self.on and self.run_id is not None:
            import mlflow

            self.flush()
            self._safe("mark run failed", mlflow.end_run, "FAILED")


def run_call(tracker: Tracker, name: str, args: tuple) -> None:
    """One queued call of a job's tracker (on its worker thread, or in the MLflow server's child):
    skipped once tracking is off; an error turns tracking off, never the training's problem
    (Tracker._safe already catches the store's errors)."""
    if not tracker.on:
        return
    try:
        getattr(tracker, name)(*args)
    except Exception as e:
        tracker._off(name, e)


class TrackerThread:
    """A training job's Tracker, off the critical path: its calls run in order on one worker
    thread, so MLflow's import (~1 s) and the store's first writes (the run, its params, the
    dataset) overlap the first training steps instead of preceding them (`ncn bench startup`).
    MLflow's active run is thread-local; every call of the job's Tracker runs on this one thread,
    so that thread owns the run. `finish` and `fail` return once the run is closed. Arguments
    are copied when queued: the caller may go on changing its lists. A job killed before the
    thread created its run leaves no run (and no mlflow_run.json): its resumed job starts one
    and logs every step the checkpoint kept."""

    def __init__(self, make: Callable[[], Tracker]):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, args=(make,), name="ncn-mlflow", daemon=True)
        self._thread.start()
        atexit.register(self._abandon)

    def _work(self, make: Callable[[], Tracker]) -> None:
        try:
            tracker = make()
        except Exception as e:  # e.g. an unreadable pipeline marker: the files stay the record
            log.warning("MLflow tracking failed to start (%s: %s); training continues without it", type(e).__name__, e)
            tracker = None
        while (call := self._calls.get()) is not None:
            if tracker is not None:
                run_call(tracker, *call)

    def _put(self, name: str, *args) -> None:
        if self._closed:
            raise NCNError(f"MLflow tracker: '{name}' after the run was closed")
        self._calls.put((name, args))

    def start(self, run_config: dict, n_params: int, n_params_non_embedding: int, resumed: bool) -> None:
        self._put("start", copy.deepcopy(run_config), n_params, n_params_non_embedding, resumed)

    def add_rows(self, rows: Iterable[dict]) -> None:
        self._put("add_rows", [dict(r) for r in rows])

    def flush(self) -> None:
        self._put("flush")

    def finish(self, metrics: dict, artifacts: Iterable[Path]) -> None:
        self._put("finish", copy.deepcopy(metrics), [Path(p) for p in artifacts])
        self.close()

    def fail(self, timeout: float | None = None) -> None:
        if not self._closed:
            self._put("fail")
        self.close(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the thread (waiting at most `timeout` seconds)."""
        if not self._closed:
            self._closed = True
            self._calls.put(None)
            atexit.unregister(self._abandon)
        self._thread.join(timeout)

    def _abandon(self) -> None:
        """At exit without finish or fail (an error before the training loop): mark the run failed."""
        self.fail(timeout=30.0)


def read_state(run_dir: Path) -> dict | None:
    """mlflow_run.json of a run folder, its store resolved (relative to the folder), or None."""
    path = Path(run_dir) / STATE_FILE
    try:
        state = read_json(path)
        return {**state, "store": Store.at(state["store"], Path(run_dir))} if state.get("run_id") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_eval(run_dir: Path, values: dict) -> None:
    """Evaluation metrics onto the run's training run and, under Snakemake, into an evaluation run
    nested in the pipeline run: in the pipeline's MLflow server if it answers (ncn.trackserver),
    else here. Warn-only: eval.json is the record."""
    from ncn.trackserver import remote_log_eval

    if not remote_log_eval(run_dir, values):
        log_eval_here(run_dir, values)


def log_eval_here(run_dir: Path, values: dict) -> None:
    run_dir = Path(run_dir)
    state, ctx = read_state(run_dir), pipeline()
    try:
        if state:
            steps = int(read_json(run_dir / "metrics.json").get("steps", 0))
            client = _client(state["store"])
            _retry(client.log_batch, state["run_id"], metrics=_metric_objs(numeric_metrics(values, steps, EVAL_METRICS)))
        if ctx and "error" not in ctx:
            _eval_run(ctx, run_dir, values, state["run_id"] if state else None)
    except Exception as e:
        log.warning("MLflow: could not log evaluation metrics (%s: %s); eval.json is the record",
                    type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")


def _eval_run(ctx: dict, run_dir: Path, values: dict, train_run_id: str | None) -> None:
    import mlflow

    store = ctx["store"]
    _client(store)
    rc = read_json(run_dir / "config.json")
    tags = {k: str(rc[k]) for k in ("variant", "size", "seed")}
    tags.update({"profile": rc["config"]["profile"], "ncn.stage": "evaluate", "ncn.run_dir": store.rel(run_dir),
                 **({"ncn.train_run_id": train_run_id} if train_run_id else {}),
                 **source_tags("ncn evaluate", True, ctx["git_commit"])})
    files = [str(p.resolve()) for p in (run_dir / "eval.json",) if p.exists()]
    with _retry(mlflow.start_run, experiment_id=ctx["experiment_id"], run_name=f"{run_name(rc)}-eval",
                parent_run_id=ctx["run_id"], tags=tags):
        _retry(mlflow.log_params, {**{k: tags[k] for k in ("variant", "size", "seed", "profile")},
                                   **{k: str(v) for k, v in values.items() if k not in EVAL_METRICS}})
        _retry(mlflow.log_metrics, {k: v for k, v, _ in numeric_metrics(values, 0, EVAL_METRICS)})
        valid_bin = Path(rc.get("data_dir") or "/nonexistent") / "valid.bin"
        if valid_bin.is_file():
            log_dataset(store, valid_bin, "evaluation")  # retries locks and duplicates itself
        with store.cwd():
            for path in files:
                _retry(mlflow.log_artifact, path)


# ---- ncn mlflow-init / mlflow-end: the pipeline run ------------------------------------------


def main_mlflow_init(argv: list[str]) -> int:
    from ncn.config import load_config

    p = argparse.ArgumentParser(
        prog="ncn mlflow-init",
        description="Start the pipeline's MLflow run (the Snakefile's onstart does this once per "
        "invocation): create the store (SQLite schema) and the profile's experiment if needed, open a "
        "run that the jobs' runs nest under, and write a marker naming it, relative to itself. On an "
        "error the marker records it (jobs then train untracked) and the exit status is 2.",
    )
    p.add_argument("--config", required=True, help="pipeline config (mlflow.tracking_uri, mlflow.experiment, profile)")
    p.add_argument("--out", required=True, help="marker file to write, e.g. results/smoke/mlflow.ready")
    p.add_argument("--serve", action="store_true",
                   help="also start 'ncn mlflow-serve' (detached; it exits with this command's parent, or at "
                   "'ncn mlflow-end'): the jobs' MLflow work in one process that imports MLflow once")
    a = p.parse_args(argv)
    cfg = load_config(a.config, stage="mlflow-init")
    out = Path(a.out)
    marker: dict[str, Any] = {"enabled": cfg["mlflow"]["enabled"], "experiment": experiment_name(cfg)}
    if not cfg["mlflow"]["enabled"]:
        write_json(out, marker)
        print("MLflow disabled in the config (mlflow.enabled: false); nothing to create")
        return 0
    from ncn import trackserver

    serve_log = out.parent / "logs" / "mlflow-serve.log"
    serve = a.serve and os.environ.get(trackserver.ENV_OFF) != "0"
    server = trackserver.spawn(out, os.getppid(), serve_log) if serve else None  # its imports overlap ours
    store = Store(store_uri(cfg))
    try:
        marker.update(start_pipeline_run(store, cfg, out.parent))
    except Exception as e:
        marker["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        write_json(out, marker)
        if server is not None:
            trackserver.stop(out)
        raise NCNError(f"cannot start the pipeline run in the MLflow store {store.uri}: {marker['error']}; jobs "
                       "train untracked - replay them later with 'ncn mlflow-sync'") from None
    write_json(out, marker)
    print(f"MLflow: pipeline run {marker['run_id']} in experiment '{marker['experiment']}' of {store.uri}")
    if server is not None:
        why = trackserver.wait_ready(server, out, serve_log)
        print(f"MLflow: jobs log in-process ({why})" if why else f"MLflow: jobs log through 'ncn mlflow-serve' "
              f"(pid {server.pid}, log {serve_log})")
    return 0


def start_pipeline_run(store: Store, cfg: dict, marker_dir: Path) -> dict:
    """Open the pipeline run (the client API: it stays RUNNING after this process exits)."""
    client = _client(store)
    _retry(client.search_experiments, max_results=1)  # opens the store: creates / migrates it
    exp_id = experiment_id(store, experiment_name(cfg))
    commit = git_commit()
    tags = {"profile": cfg["profile"], "ncn.stage": "pipeline", **source_tags("snakemake", True, commit)}
    run = _retry(client.create_run, exp_id, run_name=f"pipeline {datetime.now():%Y-%m-%d %H:%M:%S}", tags=tags)
    from mlflow.entities import Param

    # provenance: the whole resolved config as params (a stage slice keeps it in .resolved)
    resolved = getattr(cfg, "resolved", cfg)
    _retry(client.log_batch, run.info.run_id, params=[Param(k, v) for k, v in flatten(resolved).items()])
    return {"store": store.ref(marker_dir), "experiment_id": exp_id, "run_id": run.info.run_id, "git_commit": commit}


def main_mlflow_end(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn mlflow-end",
        description="Close the pipeline's MLflow run (the Snakefile's onsuccess/onerror): log the "
        f"results that exist ({', '.join(RESULTS)}) and the Snakemake log to it, then set its status.",
    )
    p.add_argument("--ready", required=True, help="the marker ncn mlflow-init wrote, e.g. results/smoke/mlflow.ready")
    p.add_argument("--results", required=True, help="the profile's results folder, e.g. results/smoke")
    p.add_argument("--status", choices=("FINISHED", "FAILED"), default="FINISHED")
    p.add_argument("--log", nargs="*", default=[], help="the Snakemake log(s) of the invocation")
    a = p.parse_args(argv)
    from ncn.trackserver import stop

    stop(Path(a.ready))  # the jobs' MLflow server, if one runs (ncn mlflow-init --serve)
    ready = read_json(a.ready) if Path(a.ready).exists() else {}
    if not ready.get("run_id"):
        print(f"ncn mlflow-end: {a.ready} names no pipeline run; nothing to close")
        return 0
    store = Store.at(ready["store"], Path(a.ready).parent)
    results = Path(a.results).resolve()
    files = [(results / r, str(Path(r).parent) if "/" in r else None) for r in RESULTS if (results / r).exists()]
    files += [(Path(f).resolve(), "snakemake") for f in a.log if Path(f).is_file()]
    try:
        client = _client(store)
        with store.cwd():
            for path, folder in files:
                if path.is_dir():
                    _retry(client.log_artifacts, ready["run_id"], str(path), artifact_path=path.name)
                else:
                    _retry(client.log_artifact, ready["run_id"], str(path), artifact_path=folder)
        _retry(client.set_terminated, ready["run_id"], status=a.status)
    except Exception as e:
        raise NCNError(f"MLflow store {store.uri}: cannot close the pipeline run {ready['run_id']}: "
                       f"{type(e).__name__}: {e}") from None
    print(f"MLflow: pipeline run {ready['run_id']} {a.status} with {len(files)} result(s) logged")
    return 0


# ---- ncn mlflow-sync -----------------------------------------------------------------------


def _read_log(path: Path) -> list[dict]:
    return read_csv_rows(path) if path.exists() else []


def _recorded(client, exp_id: str, store: Store, run_dir: Path, state: dict | None) -> bool:
    """Whether the store already holds a FINISHED run of this folder."""
    if state and state["store"].uri == store.uri:
        with contextlib.suppress(Exception):
            if _retry(client.get_run, state["run_id"]).info.status == "FINISHED":
                return True
    runs = _retry(client.search_runs, [exp_id], max_results=1,
                  filter_string=f"tags.`ncn.run_dir` = '{store.rel(run_dir)}' and attributes.status = 'FINISHED'")
    return len(runs) > 0


def sync_run(cfg: dict, store: Store, exp_name: str, run_dir: Path) -> str | None:
    """Replay one finished run folder into the store. Returns the new run id, or None if recorded."""
    run_config, metrics = read_json(run_dir / "config.json"), read_json(run_dir / "metrics.json")
    state = read_state(run_dir)
    client = _client(store)
    if _recorded(client, experiment_id(store, exp_name), store, run_dir, state):
        return None
    if state and state["store"].uri == store.uri:  # a partial run (tracking failed mid-job): replace it
        with contextlib.suppress(Exception):
            _retry(client.delete_run, state["run_id"])
    (run_dir / STATE_FILE).unlink(missing_ok=True)
    t = Tracker(cfg, run_dir, store=store, experiment=exp_name, strict=True, replay=True)
    t.start(run_config, metrics["n_params"], metrics["n_params_non_embedding"], resumed=False)
    t.add_rows(_read_log(run_dir / "train_log.csv"))
    t.finish(metrics, [run_dir / name for name in ARTIFACTS])
    t.logged_through = int(metrics["steps"])
    t._save_state()
    return t.run_id


def main_mlflow_sync(argv: list[str]) -> int:
    from ncn.config import load_config

    p = argparse.ArgumentParser(
        prog="ncn mlflow-sync",
        description="Replay finished training runs (metrics.json, train_log.csv, config.json, model.pt) "
        "into the MLflow store, for runs that have no FINISHED MLflow run there - e.g. when MLflow was "
        "unreachable or locked during training. Safe to repeat: recorded runs are skipped; a partial "
        "MLflow run of the folder is replaced. A run goes to the store its mlflow_run.json names, else "
        "to the config's.",
    )
    p.add_argument("--runs", required=True, help="folder searched recursively for run folders, e.g. results/smoke/runs")
    p.add_argument("--config", help="config whose mlflow section (store, experiment) to use; default: each run's own")
    a = p.parse_args(argv)
    root = Path(a.runs)
    if not root.is_dir():
        raise NCNError(f"runs folder not found: {root}")
    cfg = load_config(a.config, stage="mlflow-sync") if a.config else None
    counts = {"synced": 0, "skipped": 0, "unfinished": 0}
    for run_dir in sorted(m.parent for m in root.rglob("metrics.json") if (m.parent / "config.json").exists()):
        if not read_json(run_dir / "metrics.json").get("finished"):
            counts["unfinished"] += 1
            continue
        run_cfg, state = cfg or read_json(run_dir / "config.json")["config"], read_state(run_dir)
        if not run_cfg["mlflow"]["enabled"]:
            counts["skipped"] += 1
            continue
        store = state["store"] if state and cfg is None else Store(store_uri(run_cfg))
        exp_name = state["experiment"] if state and cfg is None else experiment_name(run_cfg)
        try:
            rid = sync_run(run_cfg, store, exp_name, run_dir)
        except NCNError:
            raise
        except Exception as e:
            raise NCNError(f"MLflow store {store.uri} failed while syncing {run_dir}: {type(e).__name__}: {e}") from None
        counts["synced" if rid else "skipped"] += 1
        if rid:
            print(f"synced {run_dir} -> MLflow run {rid}")
    print(f"mlflow-sync: {counts['synced']} replayed, {counts['skipped']} already recorded or disabled, "
          f"{counts['unfinished']} unfinished (skipped)")
    return 0
