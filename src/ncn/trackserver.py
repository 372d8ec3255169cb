"""One process per Snakemake invocation that imports torch and MLflow once: the jobs' MLflow work
runs in forks of it, and so do the jobs themselves.

Why. A job that logs to MLflow itself pays for MLflow in every process: `import mlflow` (~2-3 s
of CPU), the SQLite store's SQLAlchemy models (~1-1.5 s) and `mlflow.pytorch` before it logs
anything. On the tracker's worker thread that work also holds the GIL that a small model's
Python-bound steps need, so it slowed the steps it overlapped. And every job imports torch
(1.5-2.4 s on this project's CPUs) before its first step: a smoke-profile training job trains for
about a second (`bench/README.md`, "Start-up").

What. `ncn mlflow-init --serve` (the Snakefile's onstart) starts `ncn mlflow-serve`, detached. It
imports torch, MLflow, the SQL store's module, `mlflow.pytorch` and the modules of the stages in
`FORKED_STAGES`, then listens on a Unix socket named after the pipeline marker (`socket_path`);
the analyses' modules (pandas, matplotlib, seaborn) it imports the first time it is idle. For each job that connects it forks a child,
which takes the job's working directory, environment and file descriptors (passed over the socket):
- kind "job" (`delegate`, called by `ncn.cli.main` for `FORKED_STAGES`): the child runs the job's
  `ncn <stage> ...` as a new `ncn` process would (`_as_a_fresh_process`). The job's own process
  only waits: it passes on the signals it gets and exits with the child's status; if it is
  killed, the child kills itself. Such a job starts its first step ~0.2 s after its process starts.
- kind "tracker" / "log_eval": the child runs the same `Tracker` (or `log_eval`) the job would have
  run in-process, its warnings in the job's log. A training job's `TrackerThread` talks to it
  through `Remote`; calls keep their order and `finish`/`fail` return once the child has closed
  the run. A job that is killed closes its socket; its child then stops.

Accounting. A forked job's CPU and memory are the server's child's, so the job's Snakemake
`benchmark:` file counts only its waiting process (its wall time is right). Each fork appends a row
with its job, CPU seconds and peak RSS to the pipeline's ledger (`ledger_path`: logs/forks.tsv) as
it exits, and `ncn bench stages` adds them to the stages' (results/<profile>/timing/stages.csv).
The server's log names every fork with its job, and how it ended.

Exit. The job's process exits with its fork's status; if the fork is killed by a signal (the OOM
killer, `kill -9` of the fork), the server tells the job's process which (`_fate`) and it dies of
the same signal, so Snakemake sees what it would have seen of a job in its own process. Ctrl-Z
stops both, and `fg` continues both; a stopped fork whose job's process is killed is killed by the
server (`_end_orphans`).

Fallback. Where no server answers (a run by hand, a cluster node without the head's /tmp, a
server that failed to start or died), a job runs and tracks in its own process as before;
NCN_FORK_JOBS=0 keeps just the jobs in their own processes, NCN_MLFLOW_SERVER=0 turns the server
off. The records and outputs are the same either way. `ncn mlflow-end` stops the server; it also
exits when Snakemake's process is gone. The server forks only after its imports, never opens the
store or CUDA itself, so no child inherits a database connection or a CUDA context.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import logging
import os
import resource
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
ENV_FORK = "NCN_FORK_JOBS"  # "0": jobs run in their own process (only their MLflow work in the server)
FORKED_STAGES = ("train", "evaluate", "generate", "analyze")  # the stages whose jobs run in a fork of the server
PASSED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# SIGTSTP (Ctrl-Z) stops the fork with SIGSTOP (the fork's process group is orphaned: the kernel drops a SIGTSTP
# to it), then the job's process; SIGCONT continues both. Where the job's own process group is orphaned
# (no shell to continue it) the kernel drops its SIGTSTP, and the fork goes on too, as the job would have
_IN_FORK = False  # True in the server's forks: a job never forks again
_FRESH_WARNINGS: list = []  # the warning filters a new job process has (`_preload`): a forked job starts with them
_START_ENV: dict = {}  # the server's environment before its imports
# environment read once, at start-up or import (the interpreter, malloc, OpenMP, BLAS, torch, our
# schema path): a job whose values differ from the server's runs in its own process. The thread
# counts (Snakemake sets them per job) are applied in the fork instead.
STARTUP_ENV = ("PYTHON", "MALLOC_", "GLIBC_TUNABLES", "LD_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "GOTO_",
               "PYTORCH_", "TORCH", "NCN_SCHEMA")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS")
CONNECT_TIMEOUT_S = 5.0
EXIT_WAIT_S = 60.0  # how long a job's process waits for its fork to be gone after its exit status
FATE_WAIT_S = 5.0  # how long the server waits for a fork that closed its socket to be reapable (`_fate`)
# the pipeline's record of its forks (`ledger_path`): a row per fork, written by the fork as it exits
# (by the server for one killed by a signal); `ncn bench stages` adds their CPU to the stages'
LEDGER_COLUMNS = ("end_unix", "pid", "job_pid", "kind", "stage", "cpu_s", "max_rss_mb", "status", "command")
_LEDGER: Path | None = None  # this server's ledger (set by `serve`)
_ENDED: dict[int, int] = {}  # wait statuses of the latest reaped forks (`_fate`)


def socket_path(ready: str | Path) -> str:
    """The server's socket for a pipeline marker: in the temp folder (a Unix socket's path must stay
    under ~100 bytes), named by the user and the marker's absolute path."""
    key = hashlib.sha256(str(Path(ready).resolve()).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"ncn-mlflow-{os.getuid()}-{key}.sock")


def ledger_path(ready: str | Path) -> Path:
    """The pipeline's record of the server's forks, beside its log: results/<profile>/logs/forks.tsv."""
    return Path(ready).parent / "logs" / "forks.tsv"


def read_ledger(path: str | Path) -> list[dict]:
    """The ledger's rows after its header, as {LEDGER_COLUMNS name: text} (a row cut short has fewer keys)."""
    return [dict(zip(LEDGER_COLUMNS, line.split("\t"))) for line in Path(path).read_text().splitlines()[1:]]


def _open(ready: str | Path, timeout_s: float) -> socket.socket:
    """A socket connected to the server of a pipeline marker (OSError if none listens, or if its
    listener is another user's: the path is in the shared temp folder), blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(socket_path(ready))
        sock.settimeout(None)
        if not _same_user(sock):
            raise OSError(f"{socket_path(ready)} is another user's socket")
        return sock
    except OSError:
        sock.close()
        raise


def _same_user(sock: socket.socket) -> bool:
    """Whether the process at the other end of a Unix socket is this user's (Linux's SO_PEERCRED;
    elsewhere the socket file's owner-only mode is the check)."""
    import struct

    if not hasattr(socket, "SO_PEERCRED"):
        return True
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid == os.getuid()


def _where() -> tuple:
    """Where a process runs, as far as a fork of the server must match it: its interpreter and
    environment prefix, its mount and PID namespaces (a container) and its cgroup (a cluster job's
    limits). None for what this system does not have."""
    def read(fn, path):
        with contextlib.suppress(OSError):
            return fn(path)
        return None

    return (os.path.realpath(sys.executable), sys.prefix, read(os.readlink, "/proc/self/ns/mnt"),
            read(os.readlink, "/proc/self/ns/pid"), read(lambda p: Path(p).read_text(), "/proc/self/cgroup"))


def connect(kind: str, ready: str | Path | None = None, fds: tuple[int, ...] = (1, 2), **hello) -> Connection | None:
    """A connection to this pipeline's server, its child set up for `kind` ("tracker", "log_eval"
    or "job") with this process's directory, environment and file descriptors `fds` (`hello`: more
    for the child), or None if no server answers (then the caller works in its own process)."""
    ready = ready or os.environ.get("NCN_MLFLOW_PIPELINE")
    if not ready or os.environ.get(ENV_OFF) == "0":
        return None
    conn = None
    try:
        conn = Connection(_open(ready, CONNECT_TIMEOUT_S).detach())
        conn.send({"kind": kind, "pid": os.getpid(), "cwd": os.getcwd(), "env": dict(os.environ), "fds": fds, **hello})
        for fd in fds:
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


def delegate(stage: str, args: list[str]) -> int | None:
    """Run `ncn <stage> args` in a fork of this pipeline's server, which has torch and the stage's
    modules imported already, and return its exit status; None where the caller should run it
    itself: no server answers, a stage not in `FORKED_STAGES`, NCN_FORK_JOBS=0, a tracer or
    profiler in this process (coverage, cProfile), a torchrun world, or this process already a fork.

    This process stays the job that Snakemake waits for: the fork gets its directory,
    environment, argv, umask, stdin, stdout and stderr; signals sent to this process are sent on
    to the fork, and if this process is killed the fork kills itself. Its exit status is the fork's.
    """
    import threading

    if (stage not in FORKED_STAGES or _IN_FORK or os.environ.get(ENV_FORK) == "0" or sys.gettrace()
            or sys.getprofile() or int(os.environ.get("WORLD_SIZE") or 1) > 1
            or threading.current_thread() is not threading.main_thread()):  # signals are the main thread's
        return None
    umask = os.umask(0o022)
    os.umask(umask)
    conn = connect("job", fds=(0, 1, 2), argv=[sys.argv[0], stage, *args], path=list(sys.path), umask=umask,
                   where=_where())
    if conn is None:
        return None
    try:
        pid = conn.recv()
        if pid is not None:
            conn.send("go")  # the fork starts the job only now: it runs here or there, never both
    except (EOFError, OSError):
        pid = None  # the server's fork failed before it began
    if pid is None:  # ... or declined (`_declines`): run here
        conn.close()
        return None
    return _wait_for(conn, pid, os.environ["NCN_MLFLOW_PIPELINE"])


def _wait_for(conn: Connection, pid: int, ready: str) -> int:
    """The forked job's exit status, passing on the signals this process gets meanwhile. If the fork
    dies of a signal, this process dies of the same one (the server says which: `_fate`)."""
    sent: list[int] = []

    def tell(signum):  # the fork, unless it is gone already
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def pass_on(signum, frame):
        sent.append(signum)
        tell(signum)

    def stop_too(signum, frame):  # Ctrl-Z: stop the fork, then this process, until SIGCONT continues both
        tell(signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here; or the kernel drops it (an orphaned process group)
        signal.signal(signal.SIGTSTP, stop_too)
        tell(signal.SIGCONT)  # continued, or never stopped: so is the fork

    def go_on(signum, frame):
        tell(signal.SIGCONT)

    handlers = {**{s: pass_on for s in PASSED_SIGNALS}, signal.SIGTSTP: stop_too, signal.SIGCONT: go_on}
    old = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        rc = int(conn.recv())  # its exit status, sent after its exit handlers ran
        with contextlib.suppress(EOFError, OSError):  # then until it is gone (its memory, a GPU's context
            while conn.poll(EXIT_WAIT_S):  # freed) before Snakemake gives its threads to the next job
                conn.recv()
        return rc
    except (EOFError, OSError):  # it ended without one: killed by a signal
        return _died(pid, _ask_fate(ready, pid), sent)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        conn.close()


def _died(pid: int, status: int | None, sent: list[int]) -> int:
    """A fork ended without an exit status (its wait status, if the server had it): die of its signal,
    as the job in its own process would have, or return its exit code."""
    signum = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    if signum is None and status is None and sent:  # no word from the server: the signal we passed on
        signum = sent[-1]
    if signum not in sent:
        how = f"was killed by signal {signum} ({signal.strsignal(signum)})" if signum else (
            f"exited with status {os.WEXITSTATUS(status)}" if status is not None else "ended without an exit status")
        print(f"ncn: the job's process {pid}, a fork of the pipeline's MLflow server, {how} before it could send "
              "its exit status; the server's log (results/<profile>/logs/mlflow-serve.log) has more", file=sys.stderr)
    if signum:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's cannot be set
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        return 128 + signum  # a signal whose default is not to end the process (never a fork's death)
    return (os.WEXITSTATUS(status) or 1) if status is not None else 1


def _ask_fate(ready: str, pid: int) -> int | None:
    """The wait status of the server's fork `pid` (`_fate`), or None if the server cannot say."""
    try:
        with Connection(_open(ready, CONNECT_TIMEOUT_S).detach()) as conn:
            conn.send(("fate", pid))
            return conn.recv() if conn.poll(FATE_WAIT_S + CONNECT_TIMEOUT_S) else None
    except (OSError, EOFError):
        return None


# ---- the server and its children -------------------------------------------------------------


def _child(conn: Connection, hello: dict) -> int:
    """Serve one job: take its directory, environment and file descriptors, then run its calls (or,
    for kind "job", the job itself); the exit status for the fork."""
    import random

    from ncn import tracking

    for fd in hello.get("fds", (1, 2)):
        theirs = recv_handle(conn)
        os.dup2(theirs, fd)
        os.close(theirs)
    os.chdir(hello["cwd"])
    os.environ.clear()
    os.environ.update(hello["env"])
    tracking._jitter.seed()  # each child its own retry jitter (forked children share the parent's state)
    random.seed()
    conn.send("ready")
    if hello["kind"] == "job":
        return _job(conn, hello)
    if hello["kind"] == "log_eval":
        run_dir, values = conn.recv()
        tracking.log_eval_here(run_dir, values)
        conn.send("done")
        return 0
    cfg, run_dir = conn.recv()
    tracker = tracking.Tracker(cfg, run_dir)
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):  # the job ended or was killed
            return 0
        tracking.run_call(tracker, name, args)
        if name in ("finish", "fail"):
            conn.send("done")


def _job(conn: Connection, hello: dict) -> int:
    """Run `ncn <stage> ...` (`delegate`) as a fresh `ncn` process would, then send its exit status."""
    import threading

    from ncn import cli

    global _IN_FORK
    _IN_FORK = True
    why = _declines(hello)
    if why:
        log.info("pid %s declined job pid %s (%s): it runs in its own process", os.getpid(), hello["pid"], why)
        conn.send(None)
        return 0
    sys.argv, sys.path[:] = hello["argv"], hello["path"]
    os.umask(hello["umask"])
    _as_a_fresh_process()
    conn.send(os.getpid())
    try:
        go = conn.recv()
    except (EOFError, OSError):  # its process gave up waiting (and runs the job itself) or is gone
        go = None
    if go != "go":
        return 0
    done = threading.Event()
    threading.Thread(target=_die_with, args=(conn, done), daemon=True, name="ncn-job-watch").start()
    if os.environ.get("NCN_BENCH_PROBE") == "child":
        from ncn import probe

        probe.install({"forked": probe.now()})
    rc = _exit_status(hello["argv"][1:])
    cli.run_exit_handlers()  # what `ncn.cli.run` does before os._exit
    done.set()
    conn.send(rc)
    return rc


def _exit_status(argv: list[str]) -> int:
    """`ncn.cli.main(argv)`'s exit status as the interpreter would make it (SystemExit, a traceback)."""
    import traceback

    from ncn import cli

    try:
        return int(cli.main(argv) or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to a process
        traceback.print_exc()
        return 1


def _declines(hello: dict) -> str | None:
    """Why a job must not run in this fork, or None: it runs elsewhere than the server (another
    interpreter or environment, a container, a cluster job's cgroup), its start-up environment
    differs from the server's (`STARTUP_ENV`), or the server touched CUDA."""
    if tuple(hello.get("where") or ()) != _where():
        return "another interpreter, container or cgroup"
    env = hello["env"]
    differ = sorted(k for k in set(env) | set(_START_ENV) if k.startswith(STARTUP_ENV) and k not in THREAD_ENV
                    and env.get(k) != _START_ENV.get(k))
    differ += [k for k in THREAD_ENV if k in _START_ENV and k not in env]
    if differ:
        return "its start-up environment differs: " + ", ".join(differ[:5])
    if _cuda_unusable():
        return "the server initialised CUDA"
    return None


def _as_a_fresh_process() -> None:
    """Undo what the server's own set-up left that a new process would not have: its logging
    handler and level, the warning filters its imports added, block-buffered stdout (a fresh
    process line-buffers a terminal), its signal handlers, its temp folder, matplotlib's removal
    of its temporary config folder at exit; and take the job's torch and BLAS threads from its
    environment (Snakemake's OMP_NUM_THREADS, ...), as their libraries' start-up would have."""
    import atexit
    import shutil
    import warnings

    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)
    logging.root.setLevel(logging.WARNING)
    warnings.filters[:] = _FRESH_WARNINGS
    warnings._filters_mutated()
    with contextlib.suppress(Exception):
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tempfile.tempdir = None  # the job's TMPDIR
    atexit.unregister(shutil.rmtree)  # matplotlib's, for the server's config folder (an unwritable HOME)
    threads = _threads("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if threads:  # what torch reads at its import, in a new process
        import torch

        torch.set_num_threads(threads)
    threads = _threads("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    if threads:  # numpy's OpenBLAS read them at the server's import
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads, user_api="blas")


def _threads(*names: str) -> int | None:
    """The first of these environment variables that is set, as a positive count, else None."""
    for name in names:
        value = os.environ.get(name, "")
        if value.strip():
            return int(value) if value.strip().isdigit() and int(value) > 0 else None
    return None


def _cuda_unusable() -> bool:
    """True if this fork inherited an initialised CUDA (torch's "bad fork"), where CUDA would fail."""
    torch = sys.modules.get("torch")
    check = getattr(getattr(torch, "cuda", None), "_is_in_bad_fork", None)
    return bool(check and check())


def _die_with(conn: Connection, done) -> None:
    """The forked job's watch: its job process never writes after the hello, so a read returns only
    when that process is gone. Killed before the job was `done`, it would have taken the job with
    it: die the same way."""
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    if not done.is_set():
        os.kill(os.getpid(), signal.SIGKILL)


def _fork_child(conn: Connection, hello: dict, srv: socket.socket) -> int:
    pid = os.fork()
    if pid:
        conn.close()
        return pid
    code = 0
    try:
        srv.close()  # the server's: a fork must not keep its socket alive
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = _child(conn, hello)
    except BaseException as e:  # noqa: BLE001 - a child must never return into the server loop
        with contextlib.suppress(Exception):
            log.warning("MLflow server child: %s: %s", type(e).__name__, e)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            _book(os.getpid(), hello, str(code), resource.getrusage(resource.RUSAGE_SELF))
        with contextlib.suppress(Exception):
            logging.shutdown()
        os._exit(code)


def _book(pid: int, hello: dict, status: str, usage) -> None:
    """Append a fork's row to the ledger (`LEDGER_COLUMNS`): its job, CPU seconds (all its threads) and
    peak RSS (with the server's pages it shares). One write of one line: rows never interleave."""
    if _LEDGER is None:
        return
    kind, argv = hello.get("kind"), hello.get("argv") or []
    stage = argv[1] if kind == "job" and len(argv) > 1 else kind
    command = " ".join(argv[1:])[:300].replace("\t", " ").replace("\n", " ")
    cpu_s, rss_mib = _cpu_rss(usage)
    row = (f"{time.time():.3f}", pid, hello.get("pid"), kind, stage, f"{cpu_s:.3f}", f"{rss_mib:.1f}", status, command)
    fd = os.open(_LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, ("\t".join(map(str, row)) + "\n").encode())
    finally:
        os.close(fd)


def _cpu_rss(usage) -> tuple[float, float]:
    """CPU seconds (user + system, all threads) and peak RSS in MiB of a `resource` rusage."""
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _preload() -> None:
    """What the children need, imported once: torch and the forked stages' modules (after them, the
    warning filters a new job process has: `_FRESH_WARNINGS`), MLflow, the SQL store's models,
    mlflow.pytorch."""
    import warnings

    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # torch.cuda.is_available() here must not initialise CUDA (forks)
    import torch  # noqa: F401

    import ncn.evaluate  # noqa: F401 - the forked stages' modules (FORKED_STAGES)
    import ncn.generate  # noqa: F401
    import ncn.model  # noqa: F401
    import ncn.train  # noqa: F401

    _FRESH_WARNINGS[:] = warnings.filters
    from ncn.tracking import MLFLOW_ENV, import_mlflow_pytorch

    for key, value in MLFLOW_ENV:
        os.environ.setdefault(key, value)
    import mlflow  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

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


def _import_when_idle(module: str) -> None:
    """One of the analyses' modules (with them pandas, matplotlib and seaborn: ~2-3 s in all),
    imported when the server is idle, one a second, not before it answers: a pipeline's analyses
    come last."""
    import gc
    import warnings

    before = list(warnings.filters)
    with contextlib.suppress(Exception):  # a broken analysis fails in its own job, as before
        importlib.import_module(module)
    _FRESH_WARNINGS[:0] = [f for f in warnings.filters if f not in before]  # an analysis job's imports add them too
    gc.freeze()


def serve(ready: Path, watch_pid: int | None, idle_check_s: float = 1.0) -> int:
    """Accept jobs until told to stop or until `watch_pid` (Snakemake) is gone; fork a child each."""
    import gc

    global _LEDGER
    _START_ENV.update(os.environ)
    _LEDGER = ledger_path(ready)
    with contextlib.suppress(OSError):
        _LEDGER.parent.mkdir(parents=True, exist_ok=True)
        if not _LEDGER.exists() or not _LEDGER.stat().st_size:
            _LEDGER.write_text("\t".join(LEDGER_COLUMNS) + "\n")
    _preload()
    gc.freeze()  # the imports' objects: never scanned again by a fork's collections, nor copied by them
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
    children: dict[int, tuple[str, dict]] = {}
    from ncn.analysis.cli import ANALYSES

    idle_imports = [module for module, _ in ANALYSES.values()]
    try:
        while watch_pid is None or _alive(watch_pid):
            _reap(children)
            _end_orphans(children)
            try:
                sock, _ = srv.accept()
            except TimeoutError:
                if idle_imports:
                    _import_when_idle(idle_imports.pop(0))
                continue
            if _take(sock, srv, children) == "stop":
                break
    finally:
        srv.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def _take(sock: socket.socket, srv: socket.socket, children: dict[int, tuple[str, dict]]) -> str | None:
    """One connection: a job's hello (fork a child for it), a stop request ("stop", once the
    children are done), a job's question how its fork ended (("fate", pid): `_fate`), or nothing
    (`_ping` only connects; another user; a broken hello)."""
    sock.settimeout(None)
    if not _same_user(sock):
        sock.close()
        return None
    conn = Connection(sock.detach())
    try:
        hello = conn.recv() if conn.poll(CONNECT_TIMEOUT_S) else None
    except Exception:  # noqa: BLE001 - EOF, a reset, a hello that does not unpickle: not the server's end
        hello = None
    if hello == "stop":
        _wait_children(children, 120.0)
        conn.send("stopped")
    if isinstance(hello, tuple) and len(hello) == 2 and hello[0] == "fate":
        with contextlib.suppress(OSError):
            conn.send(_fate(hello[1], children))
    if not isinstance(hello, dict):
        conn.close()
        return "stop" if hello == "stop" else None
    what = f"{hello.get('kind')} for job pid {hello.get('pid')}" + (
        f": ncn {' '.join(hello['argv'][1:])[:300]}" if hello.get("kind") == "job" else "")
    try:
        pid = _fork_child(conn, hello, srv)
    except OSError as e:  # no fork (memory, process limits): the job works in its own process
        log.warning("no fork for %s: %s", what, e)
        conn.close()
        return None
    children[pid] = (what, {k: hello.get(k) for k in ("kind", "pid", "argv")})
    log.info("pid %s: %s", pid, what)
    return None


def _reap(children: dict[int, tuple[str, dict]]) -> None:
    """Collect the children that have exited (or are no longer ours), drop them, and log how each
    ended with its CPU seconds and peak RSS (a forked job's are not in its Snakemake benchmark); the
    ledger gets the row of one killed by a signal (the others wrote their own)."""
    for pid, (what, hello) in list(children.items()):
        try:
            done, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            del children[pid]
            continue
        if done == 0:
            continue
        used = "CPU %.2f s, peak RSS %.0f MiB with the server's shared pages" % _cpu_rss(usage)
        if os.WIFSIGNALED(status):
            log.warning("pid %s (%s) was killed by signal %s; %s", pid, what, os.WTERMSIG(status), used)
            with contextlib.suppress(Exception):
                _book(pid, hello, f"signal {os.WTERMSIG(status)}", usage)
        elif os.WEXITSTATUS(status):
            log.warning("pid %s (%s) exited with status %s; %s", pid, what, os.WEXITSTATUS(status), used)
        else:
            log.info("pid %s done: %s", pid, used)
        del children[pid]
        _ENDED[pid] = status
        while len(_ENDED) > 4096:
            del _ENDED[next(iter(_ENDED))]


def _end_orphans(children: dict[int, tuple[str, dict]]) -> None:
    """Kill a forked job whose job process is gone. A running fork does that itself (`_die_with`);
    a stopped one (Ctrl-Z, then its job's process killed) cannot, and would wait forever."""
    for pid, (_, hello) in children.items():
        if hello.get("kind") == "job" and hello.get("pid") and not _alive(hello["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _fate(pid: int, children: dict[int, tuple[str, dict]]) -> int | None:
    """The wait status of fork `pid`, which has closed its socket, so it is exiting: reaped now, if it
    was not already; None if it is no fork of this server's or not gone within FATE_WAIT_S."""
    end = time.monotonic() + FATE_WAIT_S
    while pid in children and time.monotonic() < end:
        _reap(children)
        if pid in children:
            time.sleep(0.01)
    return _ENDED.get(pid)


def _wait_children(children: dict[int, tuple[str, dict]], timeout: float) -> None:
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
        description="Run a pipeline's jobs and their MLflow work in forks of one process that imports torch "
        "and MLflow once (started detached by 'ncn mlflow-init --serve', stopped by 'ncn mlflow-end'). Jobs "
        f"find it through their pipeline marker; the stages {', '.join(FORKED_STAGES)} run in a fork (not with "
        f"{ENV_FORK}=0). With {ENV_OFF}=0, or when it is not running, a job runs and tracks in its own process.")
    p.add_argument("--ready", required=True, help="the pipeline marker, e.g. results/smoke/mlflow.ready")
    p.add_argument("--watch-pid", type=int, default=None, help="exit when this process (Snakemake) is gone")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    return serve(Path(a.ready), a.watch_pid)
