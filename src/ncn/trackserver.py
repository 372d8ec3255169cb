"""One process per Snakemake invocation that does the jobs' MLflow work, MLflow imported once.

Why. A job that logs to MLflow itself pays for MLflow in every process: `import mlflow` (~2-3 s
of CPU), the SQLite store's SQLAlchemy models (~1-1.5 s) and `mlflow.pytorch` before it logs
anything. A smoke-profile training job trains for about a second, so most of its time was
MLflow's (`bench/README.md`, "Start-up"). On the tracker's worker thread that work also holds the
GIL that a small model's Python-bound steps need, so it slowed the steps it overlapped.

What. `ncn mlflow-init --serve` (the Snakefile's onstart) starts `ncn mlflow-serve`, detached. It
imports torch, MLflow, the SQL store's module and `mlflow.pytorch`, then listens on a Unix socket
named after the pipeline marker (`socket_path`). For each job that connects it forks a child. The
child has every import already and runs the same `Tracker` (or `log_eval`) the job would have run,
with the job's working directory, environment and stderr (passed over the socket), so its
warnings land in the job's log. A training job's `TrackerThread` talks to it through `Remote`;
calls keep their order and `finish`/`fail` return once the child has closed the run, as before.
A job that is killed closes its socket; its child then stops, as the worker thread would have died
with the process.

Fallback. Where no server answers (a run by hand, a cluster node without the head's /tmp, a
server that failed to start or died), a job tracks in its own process as before. The records are
the same either way. `ncn mlflow-end` stops the server; it also exits when Snakemake's process is
gone. The server forks only after its imports, and it never opens the store itself, so no child
inherits a database connection.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path

log = logging.getLogger("ncn.trackserver")

# Modules a Tracker's calls import the first time they run (MLflow 3.17: the store's migration
# check, GitPython for the source tags, system metrics, pyfunc for log_model, the SQLite dialect).
LATER_IMPORTS = ("alembic.command", "alembic.config", "git", "mlflow.pyfunc", "mlflow.system_metrics.system_metrics_monitor",
                 "mlflow.store.tracking.sqlalchemy_workspace_store", "mlflow.tracing.processor.otel",
                 "sqlalchemy.dialects.sqlite.pysqlite", "torch.utils.serialization")
ENV_OFF = "NCN_MLFLOW_SERVER"  # "0": jobs never use a server (they track in-process)
CONNECT_TIMEOUT_S = 5.0


def socket_path(ready: str | Path) -> str:
    """The server's socket for a pipeline marker: in the temp folder (a Unix socket's path must stay
    under ~100 bytes), named by the user and the marker's absolute path."""
    key = hashlib.sha256(str(Path(ready).resolve()).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"ncn-mlflow-{os.getuid()}-{key}.sock")


def _open(ready: str | Path, timeout_s: float) -> socket.socket:
    """A socket connected to the server of a pipeline marker (OSError if none listens), blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(socket_path(ready))
        sock.settimeout(None)
        return sock
    except OSError:
        sock.close()
        raise


def connect(kind: str, ready: str | Path | None = None) -> Connection | None:
    """A connection to this pipeline's server, its child set up for `kind` ("tracker" or
    "log_eval") with this process's directory, environment, stdout and stderr, or None if no
    server answers (then the caller tracks in its own process)."""
    ready = ready or os.environ.get("NCN_MLFLOW_PIPELINE")
    if not ready or os.environ.get(ENV_OFF) == "0":
        return None
    conn = None
    try:
        conn = Connection(_open(ready, CONNECT_TIMEOUT_S).detach())
        conn.send({"kind": kind, "pid": os.getpid(), "cwd": os.getcwd(), "env": dict(os.environ)})
        for fd in (1, 2):
            send_handle(conn, fd, 0)
        if conn.poll(CONNECT_TIMEOUT_S) and conn.recv() == "ready":
            return conn
    except (OSError, EOFError, ValueError) as e:
        log.debug("no MLflow server at %s (%s)", socket_path(ready), e)
    if conn is not None:
        conn.close()
    return None


class Remote:
    """A Tracker whose calls run in the server's child for this job (`TrackerThread` calls it on its
    worker thread, in order). A lost connection turns tracking off, as a failing store does."""

    def __init__(self, conn: Connection):
        self.conn, self.on = conn, True

    def _call(self, name: str, *args, wait: bool = False) -> None:
        if not self.on:
            return
        self.conn.send((name, args))
        if wait:
            self.conn.recv()  # "done": the child closed the run

    def start(self, *args) -> None:
        self._call("start", *args)

    def add_rows(self, rows) -> None:
        self._call("add_rows", rows)

    def flush(self) -> None:
        self._call("flush")

    def finish(self, *args) -> None:
        self._call("finish", *args, wait=True)

    def fail(self) -> None:
        self._call("fail", wait=True)

    def _off(self, what: str, e: BaseException) -> None:
        log.warning("MLflow server connection lost during %s (%s: %s); training continues without tracking; "
                    "replay the run later with 'ncn mlflow-sync --runs <runs dir>'", what, type(e).__name__, e)
        self.on = False
        with contextlib.suppress(OSError):
            self.conn.close()


def remote_tracker(cfg: dict, run_dir: Path) -> Remote | None:
    """The job's Tracker in the server's child, or None if no server answers."""
    conn = connect("tracker")
    if conn is None:
        return None
    conn.send((cfg, Path(run_dir)))
    return Remote(conn)


def remote_log_eval(run_dir: Path, values: dict) -> bool:
    """`log_eval` in the server's child; False if no server answers (the caller logs itself)."""
    conn = connect("log_eval")
    if conn is None:
        return False
    try:
        conn.send((Path(run_dir), values))
        conn.recv()
        return True
    except (OSError, EOFError) as e:
        log.warning("MLflow server: evaluation metrics not logged (%s: %s); eval.json is the record",
                    type(e).__name__, e)
        return True
    finally:
        conn.close()


# ---- the server and its children -------------------------------------------------------------


def _child(conn: Connection, hello: dict) -> None:
    """Serve one job: take its directory, environment, stdout and stderr, then run its calls."""
    import random

    from ncn import tracking

    for fd in (1, 2):
        theirs = recv_handle(conn)
        os.dup2(theirs, fd)
        os.close(theirs)
    os.chdir(hello["cwd"])
    os.environ.clear()
    os.environ.update(hello["env"])
    tracking._jitter.seed()  # each child its own retry jitter (forked children share the parent's state)
    random.seed()
    conn.send("ready")
    if hello["kind"] == "log_eval":
        run_dir, values = conn.recv()
        tracking.log_eval_here(run_dir, values)
        conn.send("done")
        return
    cfg, run_dir = conn.recv()
    tracker = tracking.Tracker(cfg, run_dir)
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):  # the job ended or was killed
            return
        tracking.run_call(tracker, name, args)
        if name in ("finish", "fail"):
            conn.send("done")


def _fork_child(conn: Connection, hello: dict) -> int:
    pid = os.fork()
    if pid:
        conn.close()
        return pid
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _child(conn, hello)
    except BaseException as e:  # noqa: BLE001 - a child must never return into the server loop
        with contextlib.suppress(Exception):
            log.warning("MLflow server child: %s: %s", type(e).__name__, e)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _preload() -> None:
    """What the children need, imported once: torch, MLflow, the SQL store's models, mlflow.pytorch."""
    from ncn.tracking import MLFLOW_ENV, import_mlflow_pytorch

    for key, value in MLFLOW_ENV:
        os.environ.setdefault(key, value)
    import mlflow  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import torch  # noqa: F401

    import ncn.model  # noqa: F401

    import_mlflow_pytorch()
    # log_model checks the model's pip requirements against the installed packages through a map of
    # every installed distribution's modules, built once per process and kept in a module global
    # (~0.8-1.6 s of CPU): build it here so that every child inherits it. A later MLflow without
    # this private function just builds it in each child again.
    from mlflow.utils import requirements_utils

    with contextlib.suppress(Exception):
        requirements_utils._init_packages_to_modules_map()
    for name in LATER_IMPORTS:  # what a child would import on its first run (a name gone in a later
        with contextlib.suppress(Exception):  # MLflow costs the children the import again, nothing else)
            importlib.import_module(name)


def serve(ready: Path, watch_pid: int | None, idle_check_s: float = 1.0) -> int:
    """Accept jobs until told to stop or until `watch_pid` (Snakemake) is gone; fork a child each."""
    _preload()
    path = socket_path(ready)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)  # only this user may connect
    try:
        srv.bind(path)
    finally:
        os.umask(old_umask)
    srv.listen(64)
    srv.settimeout(idle_check_s)
    print(f"MLflow server: pid {os.getpid()}, socket {path}", flush=True)
    children: set[int] = set()
    try:
        while watch_pid is None or _alive(watch_pid):
            _reap(children)
            try:
                sock, _ = srv.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            conn = Connection(sock.detach())
            try:  # a job's hello, a stop request, or nothing (`_ping` only connects)
                hello = conn.recv() if conn.poll(CONNECT_TIMEOUT_S) else None
            except (EOFError, OSError):
                hello = None
            if hello is None:
                conn.close()
                continue
            if hello == "stop":
                _wait_children(children, 120.0)
                conn.send("stopped")
                conn.close()
                break
            children.add(_fork_child(conn, hello))
            log.info("%s for job pid %s", hello["kind"], hello["pid"])
    finally:
        srv.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def _reap(children: set[int]) -> None:
    """Collect the children that have exited (or are no longer ours) and drop them from the set."""
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        children.discard(pid)


def _wait_children(children: set[int], timeout: float) -> None:
    end = time.monotonic() + timeout
    while children and time.monotonic() < end:
        _reap(children)
        time.sleep(0.05)


def spawn(ready: Path, watch_pid: int, log_path: Path):
    """Start `ncn mlflow-serve` detached (its output appended to `log_path`); see `wait_ready`."""
    import subprocess

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ncn.cli", "mlflow-serve", "--ready", str(ready), "--watch-pid", str(watch_pid)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)


def wait_ready(proc, ready: Path, log_path: Path, wait_s: float = 60.0) -> str | None:
    """None once the server answers, else why not (the jobs then track in-process)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return f"the server exited ({proc.returncode}); see {log_path}"
        if _ping(ready):
            return None
        time.sleep(0.1)
    return f"the server did not answer within {wait_s:.0f} s; see {log_path}"


def _ping(ready: Path) -> bool:
    try:
        _open(ready, 1.0).close()
        return True
    except OSError:
        return False


def stop(ready: Path, timeout_s: float = 150.0) -> bool:
    """Ask the server to stop once its children are done; False if none was running."""
    try:
        with Connection(_open(ready, 2.0).detach()) as conn:
            conn.send("stop")
            return conn.poll(timeout_s) and conn.recv() == "stopped"
    except (OSError, EOFError):
        return False


def main_mlflow_serve(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn mlflow-serve",
        description="Do the MLflow work of a pipeline's jobs in one process that imports MLflow once "
        "(started detached by 'ncn mlflow-init --serve', stopped by 'ncn mlflow-end'). Jobs find it "
        f"through their pipeline marker; with {ENV_OFF}=0, or when it is not running, a job tracks in its "
        "own process.")
    p.add_argument("--ready", required=True, help="the pipeline marker, e.g. results/smoke/mlflow.ready")
    p.add_argument("--watch-pid", type=int, default=None, help="exit when this process (Snakemake) is gone")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    return serve(Path(a.ready), a.watch_pid)
