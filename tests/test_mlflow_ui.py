"""The MLflow store of a finished smoke run as its users meet it (slow; shares the session's smoke
run, tests/conftest.py):

* the UI, in headless Chromium (Debian's `chromium`; the test skips, saying so, without it):
  `mlflow ui` on 127.0.0.1 and a free port, the runs table at the address `make mlflow-ui`
  prints, screenshotted, with every run name in the page's text;
* a copied results folder: the UI serves the copy's artifacts, the model loads from the copy,
  later `ncn` commands on its runs write to the copy's store, and the original is never touched.

Set NCN_SCREENSHOT_DIR to keep the screenshot (it is written to a temporary folder otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(folder: Path, port: int):
    """`mlflow ui` started inside a results folder (as `make mlflow-ui` does), until /health answers."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "ui.log", "w")
    p = subprocess.Popen([str(MLFLOW), "ui", "--backend-store-uri", "sqlite:///mlflow.db", "--host", "127.0.0.1",
                          "--port", str(port), "--workers", "1"],
                         cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert p.poll() is None, (folder / "ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow ui did not answer in 180 s"
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(p.pid, 15)
        p.wait(timeout=60)
        log.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def chromium(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1920,1080",
                           "--virtual-time-budget=30000", *args, url],
                          capture_output=True, text=True, timeout=300)


def train_runs(smoke) -> list[str]:
    cfg = smoke["cfg"]
    return [f"{v}-{s}-s{n}" for v in cfg["variants"] for s in cfg["sizes"] for n in cfg["seeds"]]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed: apt-get install chromium "
                    "(make test installs it when run as root)")
def test_runs_table_in_a_browser_shows_every_run(smoke_session, tmp_path):
    from ncn.tracking import ui_url

    res = smoke_session["repo"] / "results" / "smoke"
    port = free_port()
    with mlflow_ui(res, port):
        url = ui_url(res, port)
        assert "workflowType=machine_learning" in url and "/runs?" in url
        shot_dir = Path(os.environ.get("NCN_SCREENSHOT_DIR") or tmp_path)
        shot_dir.mkdir(parents=True, exist_ok=True)
        shot = shot_dir / "mlflow_runs_table.png"
        r = chromium(url, tmp_path, f"--screenshot={shot}")
        assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]
        dom = chromium(url, tmp_path, "--dump-dom").stdout
    print(f"\nscreenshot of the runs table: {shot}", file=sys.stderr)
    missing = [name for name in train_runs(smoke_session) + ["pipeline "] if name not in dom]
    assert not missing, f"not on the page: {missing}"
    assert "causal-xs-s0-eval" in dom


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file of the MLflow store (database and artifacts) of a results folder."""
    files = [folder / "mlflow.db", *sorted((folder / "mlartifacts").rglob("*"))]
    return {str(p.relative_to(folder)): _sha(p) for p in files if p.is_file()}


def test_copied_results_folder_works_on_the_copy_only(smoke_session, tmp_path):
    from mlflow.tracking import MlflowClient

    from ncn.tracking import read_state

    res = smoke_session["repo"] / "results" / "smoke"
    before = _snapshot(res)
    copy = tmp_path / "elsewhere" / "smoke-copy"
    shutil.copytree(res, copy, symlinks=True)
    # nothing in the markers points back to the original
    ready = json.loads((copy / "mlflow.ready").read_text())
    run = copy / "runs" / "causal" / "xs" / "seed0"
    state = json.loads((run / "mlflow_run.json").read_text())
    assert ready["store"] == "mlflow.db" and state["store"] == "../../../../mlflow.db"
    assert read_state(run)["store"].db == copy / "mlflow.db"

    # the UI on the copy serves the copy's artifacts (one is edited in the copy, so it can tell)
    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    info = client.get_run(state["run_id"]).info
    assert not info.artifact_uri.startswith("/")
    (copy / info.artifact_uri / "metrics.json").write_text('{"copy": true}')
    with mlflow_ui(copy, free_port()) as base:
        listed = get_json(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={state['run_id']}")
        assert {f["path"] for f in listed["files"]} >= {"metrics.json", "config.json", "train_log.csv"}
        with urllib.request.urlopen(f"{base}/get-artifact?path=metrics.json&run_uuid={state['run_id']}", timeout=60) as r:
            assert json.loads(r.read()) == {"copy": True}

    # later ncn commands on the copy: evaluate, mlflow-sync, loading the model
    env = {**os.environ, **smoke_session["env"]}
    env.pop("NCN_MLFLOW_PIPELINE", None)
    ncn = str(Path(sys.executable).with_name("ncn"))
    p = subprocess.run([ncn, "evaluate", "--run", str(run), "--data", str(copy / "data")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 and "could not log" not in p.stderr, p.stderr[-3000:]
    p = subprocess.run([ncn, "mlflow-sync", "--runs", str(copy / "runs")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0 and "0 replayed" in p.stdout, p.stdout + p.stderr[-3000:]
    load = ("import mlflow, torch; from ncn.model import load_model; mlflow.set_tracking_uri('sqlite:///mlflow.db'); "
            f"m = mlflow.pytorch.load_model('runs:/{state['run_id']}/model'); ref, _ = load_model('{run / 'model.pt'}'); "
            "x = torch.randint(0, ref.cfg.vocab_size, (2, 8)); print(torch.equal(m(x).logits, ref(x).logits))")
    p = subprocess.run([sys.executable, "-c", load], cwd=copy, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 and p.stdout.split()[-1] == "True", p.stdout + p.stderr[-3000:]
    assert client.get_run(state["run_id"]).data.metrics["val_loss"] > 0  # in the copy's store
    assert _snapshot(res) == before, "the original results folder changed"
