"""MLflow tracking that never stops training: the files in the run folder are the record.

Every MLflow call goes through `_retry` (backoff on SQLite's "database is locked") and,
inside a training job, through `Tracker._safe`: if MLflow still fails, a warning is logged,
tracking is switched off for the rest of the job, and training goes on. `ncn mlflow-sync`
later replays finished runs' metrics.json / train_log.csv into the store.

The run folder keeps `mlflow_run.json` ({tracking_uri, experiment_id, run_id,
logged_through_step}) so a resumed job continues the same MLflow run without logging a
step twice. Metrics are sent in batches at each checkpoint and at the end, never one call
per step.

Commands: `ncn mlflow-init` (create the store and experiment once, before parallel jobs,
so they do not race on SQLite schema migrations) and `ncn mlflow-sync`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ncn.errors import NCNError
from ncn.fileio import read_json, write_json

log = logging.getLogger("ncn.tracking")

STATE_FILE = "mlflow_run.json"
ARTIFACTS = ("metrics.json", "config.json", "train_log.csv")
MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH (MLflow 3)
METRICS_PER_CALL = 1000  # MAX_METRICS_PER_BATCH: one retryable call per chunk
_jitter = random.Random()  # never the global RNG: its state is part of the checkpoints


# ---- store location and the retry helper ---------------------------------------------------


def resolve_uri(uri: str) -> str:
    """Make a relative `sqlite:///path` absolute (against the current dir) and create its folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :])
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path.resolve())
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database: `<db dir>/mlartifacts`."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None  # a server decides


def _is_locked(e: BaseException) -> bool:
    msg = str(e).lower()
    return "database is locked" in msg or "database table is locked" in msg or "busy" in msg


def _retry(fn: Callable, *args, attempts: int = 8, **kw):
    """Call fn, retrying with exponential backoff + jitter while SQLite reports a lock."""
    delay = 0.2
    for i in range(attempts):
        try:
            return fn(*args, **kw)
        except Exception as e:
            if i == attempts - 1 or not _is_locked(e):
                raise
            time.sleep(delay * (1.0 + _jitter.random()))
            delay = min(delay * 2, 5.0)


def _client(uri: str):
    # no network calls home from compute nodes (MLflow 3 telemetry)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # an unreachable server fails in seconds
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_name(cfg: dict) -> str:
    return cfg.get("mlflow", {}).get("experiment") or cfg["profile"]


def get_or_create_experiment(client, name: str, uri: str) -> str:
    exp = _retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return _retry(client.create_experiment, name, artifact_location=artifact_root(uri))
    except Exception:  # a parallel job created it first
        exp = _retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- params and metrics ----------------------------------------------------------------------


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
    """The whole resolved config, the resolved model/train settings and the param counts."""
    params = flatten(run_config["config"])
    params.update(flatten(run_config["model_config"], "resolved_model."))
    params.update(flatten(run_config["train"], "resolved_train."))
    params.update({"n_params": str(n_params), "n_params_non_embedding": str(n_params_non_embedding)})
    return params


def run_tags(run_config: dict, run_dir: Path) -> dict[str, str]:
    commit = git_commit()
    return {
        "variant": run_config["variant"],
        "size": run_config["size"],
        "seed": str(run_config["seed"]),
        "profile": run_config["config"]["profile"],
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "ncn.run_dir": str(Path(run_dir).resolve()),
    }


def run_name(run_config: dict) -> str:
    return f"{run_config['variant']}-{run_config['size']}-s{run_config['seed']}"


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


def numeric_metrics(values: dict, step: int, prefix: str = "") -> list[tuple[str, float, int]]:
    """(prefix+key, value, step) for the finite numbers of a dict (bools, text, None skipped), by key."""
    return [(f"{prefix}{k}", float(v), step) for k, v in sorted(values.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]


def _metric_objs(triples: list[tuple[str, float, int]]):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key=k, value=float(v), timestamp=now, step=int(s)) for k, v, s in triples]


# ---- the tracker a training job uses ------------------------------------------------------


class Tracker:
    """One MLflow run per training job; every failure becomes a warning (see module doc)."""

    def __init__(self, cfg: dict, run_dir: Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.client = None
        self.run_id: str | None = None
        self.logged_through = 0
        self.pending: list[tuple[str, float, int]] = []
        if not (enabled and cfg["mlflow"]["enabled"]):
            return
        self.uri = cfg["mlflow"]["tracking_uri"]
        self.experiment = experiment_name(cfg)
        self.client = True  # _safe calls only while a client is set
        try:
            self.uri = resolve_uri(self.uri)
        except OSError as e:
            self._warn("store folder", e)
            return
        self.client = self._safe("connect", _client, self.uri)

    def _warn(self, what: str, e: BaseException) -> None:
        log.warning(
            "MLflow %s failed (%s: %s); training continues without tracking - the files in %s are "
            "the record; replay them later with 'ncn mlflow-sync --runs <runs dir>'",
            what, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "", self.run_dir,
        )
        self.client = None

    def _safe(self, what: str, fn: Callable, *args, **kw):
        if self.client is None:
            return None
        try:
            return _retry(fn, *args, **kw)
        except Exception as e:
            self._warn(what, e)
            return None

    def _save_state(self) -> None:
        write_json(self.run_dir / STATE_FILE, {
            "tracking_uri": self.uri, "experiment": self.experiment, "run_id": self.run_id,
            "logged_through_step": self.logged_through,
        })

    def start(self, run_config: dict, n_params: int, n_params_non_embedding: int, resumed: bool) -> None:
        """Create the MLflow run, or continue the previous one when resuming from a checkpoint."""
        if self.client is None:
            return
        state_path = self.run_dir / STATE_FILE
        old = read_json(state_path) if state_path.exists() else None
        if old and old.get("tracking_uri") != self.uri:
            old = None  # another store: start a run there
        if old and resumed and old.get("run_id"):
            try:
                _retry(self.client.update_run, old["run_id"], status="RUNNING")
                self.run_id = old["run_id"]
                self.logged_through = int(old.get("logged_through_step", 0))
                log.info("MLflow: continuing run %s", self.run_id)
                return
            except Exception as e:  # deleted from the store, or the store is down: a new run below
                log.info("MLflow: cannot continue run %s (%s); starting a new one", old["run_id"], type(e).__name__)
                old = None
        if old and old.get("run_id"):  # a job that died before its first checkpoint: close its run
            try:
                if _retry(self.client.get_run, old["run_id"]).info.status == "RUNNING":
                    _retry(self.client.set_terminated, old["run_id"], status="KILLED")
            except Exception:
                pass  # gone from the store: nothing to close
        exp_id = self._safe("experiment", get_or_create_experiment, self.client, self.experiment, self.uri)
        if exp_id is None:
            return
        run = self._safe("create run", self.client.create_run, exp_id, run_name=run_name(run_config),
                         tags=run_tags(run_config, self.run_dir))
        if run is None:
            return
        self.run_id = run.info.run_id
        self.logged_through = 0
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in run_params(run_config, n_params, n_params_non_embedding).items()]
        for i in range(0, len(params), 100):
            self._safe("log params", self.client.log_batch, self.run_id, params=params[i : i + 100])
        if self.client is not None:
            self._save_state()

    def add_rows(self, rows: Iterable[dict]) -> None:
        """Queue train_log rows not yet in MLflow (a resumed job re-adds the restored rows)."""
        if self.client is None or self.run_id is None:
            return
        self.pending += [t for t in log_rows_as_metrics(rows) if t[2] > self.logged_through]

    def flush(self) -> None:
        if self.client is None or self.run_id is None or not self.pending:
            return
        last = max(s for _, _, s in self.pending)
        for i in range(0, len(self.pending), METRICS_PER_CALL):
            chunk = _metric_objs(self.pending[i : i + METRICS_PER_CALL])
            if self._safe("log metrics", self.client.log_batch, self.run_id, metrics=chunk) is None and self.client is None:
                return
        self.pending = []
        self.logged_through = last
        self._save_state()

    def finish(self, metrics: dict, artifacts: Iterable[Path]) -> None:
        if self.client is None or self.run_id is None:
            return
        self.flush()
        self.pending = numeric_metrics(metrics, int(metrics["steps"]), prefix="final/")
        self.flush()
        for path in artifacts:
            if Path(path).exists():
                self._safe("log artifact", self.client.log_artifact, self.run_id, str(path))
        if self.client is not None:
            self._safe("finish run", self.client.set_terminated, self.run_id, status="FINISHED")

    def fail(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.flush()
            self._safe("mark run failed", self.client.set_terminated, self.run_id, status="FAILED")


def log_eval(run_dir: Path, values: dict) -> None:
    """Add evaluation metrics to the run's MLflow run, if it has one (warn-only)."""
    state_path = Path(run_dir) / STATE_FILE
    if not state_path.exists():
        return
    state = read_json(state_path)
    if not state.get("run_id"):
        return
    try:
        client = _client(state["tracking_uri"])
        _retry(client.log_batch, state["run_id"], metrics=_metric_objs(numeric_metrics(values, 0)))
    except Exception as e:
        log.warning("MLflow: could not log evaluation metrics (%s: %s); eval.json is the record",
                    type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")


# ---- ncn mlflow-init -----------------------------------------------------------------------


def main_mlflow_init(argv: list[str]) -> int:
    from ncn.config import load_config

    p = argparse.ArgumentParser(
        prog="ncn mlflow-init",
        description="Create the MLflow tracking store (SQLite schema migrations) and the profile's "
        "experiment once, before parallel training jobs start, so they never race on the schema. "
        "Writes a small marker JSON that the training rules depend on.",
    )
    p.add_argument("--config", required=True, help="pipeline config (mlflow.tracking_uri, mlflow.experiment, profile)")
    p.add_argument("--out", required=True, help="marker file to write, e.g. results/mlflow.ready")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    marker = {"enabled": cfg["mlflow"]["enabled"], "experiment": experiment_name(cfg)}
    if cfg["mlflow"]["enabled"]:
        uri = resolve_uri(cfg["mlflow"]["tracking_uri"])
        try:
            client = _client(uri)
            _retry(client.search_experiments, max_results=1)  # opens the store: creates / migrates it
            marker["experiment_id"] = get_or_create_experiment(client, marker["experiment"], uri)
        except Exception as e:
            raise NCNError(f"cannot create the MLflow store at {uri}: {type(e).__name__}: {e}") from None
        marker["tracking_uri"] = uri
        print(f"MLflow store ready: {uri}, experiment '{marker['experiment']}' (id {marker['experiment_id']})")
    else:
        print("MLflow disabled in the config (mlflow.enabled: false); nothing to create")
    write_json(a.out, marker)
    return 0


# ---- ncn mlflow-sync -----------------------------------------------------------------------


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _finished_run_exists(client, exp_id: str, run_dir: Path, state: dict | None) -> bool:
    if state and state.get("run_id"):
        try:
            if _retry(client.get_run, state["run_id"]).info.status == "FINISHED":
                return True
        except Exception:
            pass  # deleted or another store
    runs = _retry(client.search_runs, [exp_id],
                  filter_string=f"tags.`ncn.run_dir` = '{run_dir.resolve()}' and attributes.status = 'FINISHED'",
                  max_results=1)
    return len(runs) > 0


def sync_run(client, uri: str, exp_name: str, run_dir: Path) -> str | None:
    """Replay one finished run folder into the store. Returns the new run id, or None if skipped."""
    from mlflow.entities import Param

    run_config = read_json(run_dir / "config.json")
    metrics = read_json(run_dir / "metrics.json")
    state_path = run_dir / STATE_FILE
    state = read_json(state_path) if state_path.exists() else None
    if state and state.get("tracking_uri") != uri:
        state = None
    exp_id = get_or_create_experiment(client, exp_name, uri)
    if _finished_run_exists(client, exp_id, run_dir, state):
        return None
    if state and state.get("run_id"):  # a partial run (tracking failed mid-job): replace it
        try:
            _retry(client.delete_run, state["run_id"])
        except Exception:
            pass
    run = _retry(client.create_run, exp_id, run_name=run_name(run_config), tags=run_tags(run_config, run_dir))
    rid = run.info.run_id
    params = [Param(k, v) for k, v in run_params(run_config, metrics["n_params"], metrics["n_params_non_embedding"]).items()]
    for i in range(0, len(params), 100):
        _retry(client.log_batch, rid, params=params[i : i + 100])
    triples = log_rows_as_metrics(_read_log(run_dir / "train_log.csv"))
    triples += numeric_metrics(metrics, int(metrics["steps"]), prefix="final/")
    for i in range(0, len(triples), METRICS_PER_CALL):
        _retry(client.log_batch, rid, metrics=_metric_objs(triples[i : i + METRICS_PER_CALL]))
    for name in ARTIFACTS:
        if (run_dir / name).exists():
            _retry(client.log_artifact, rid, str(run_dir / name))
    _retry(client.set_terminated, rid, status="FINISHED")
    write_json(state_path, {"tracking_uri": uri, "experiment": exp_name, "run_id": rid,
                            "logged_through_step": int(metrics["steps"])})
    return rid


def main_mlflow_sync(argv: list[str]) -> int:
    from ncn.config import load_config

    p = argparse.ArgumentParser(
        prog="ncn mlflow-sync",
        description="Replay finished training runs (metrics.json, train_log.csv, config.json) into the "
        "MLflow store, for runs that have no FINISHED MLflow run there - e.g. when MLflow was "
        "unreachable or locked during training. Safe to repeat: recorded runs are skipped; a partial "
        "MLflow run of the folder is replaced.",
    )
    p.add_argument("--runs", required=True, help="folder searched recursively for run folders, e.g. results/runs")
    p.add_argument("--config", help="config whose mlflow section (URI, experiment) to use; default: each run's own")
    a = p.parse_args(argv)
    root = Path(a.runs)
    if not root.is_dir():
        raise NCNError(f"runs folder not found: {root}")
    cfg = load_config(a.config) if a.config else None
    run_dirs = sorted(m.parent for m in root.rglob("metrics.json") if (m.parent / "config.json").exists())
    synced = skipped = unfinished = 0
    clients: dict[str, Any] = {}
    for run_dir in run_dirs:
        metrics = read_json(run_dir / "metrics.json")
        if not metrics.get("finished"):
            unfinished += 1
            continue
        run_cfg = cfg or read_json(run_dir / "config.json")["config"]
        if not run_cfg["mlflow"]["enabled"] and cfg is None:
            skipped += 1
            continue
        uri = resolve_uri(run_cfg["mlflow"]["tracking_uri"])
        try:
            client = clients.get(uri) or clients.setdefault(uri, _client(uri))
            rid = sync_run(client, uri, experiment_name(run_cfg), run_dir)
        except NCNError:
            raise
        except Exception as e:
            raise NCNError(f"MLflow store {uri} failed while syncing {run_dir}: {type(e).__name__}: {e}") from None
        if rid is None:
            skipped += 1
        else:
            synced += 1
            print(f"synced {run_dir} -> MLflow run {rid}")
    print(f"mlflow-sync: {synced} replayed, {skipped} already recorded or disabled, {unfinished} unfinished (skipped)")
    return 0
