"""The smoke profile from scratch, as tests/conftest.py's smoke_session runs it (a copy of the repo, a
test-made corpus, --cores 2), in the modes named on the command line, in that order:
  fork: the default: the train, evaluate, generate and analyze jobs run in forks of `ncn mlflow-serve`
  own:  NCN_FORK_JOBS=0: every job in its own process, its MLflow work in the server (the sixth session's)
  off:  NCN_MLFLOW_SERVER=0: every job in its own process, logging from it
Prints one row per run: wall seconds, and the per-stage job seconds of results/smoke/timing/stages.csv;
appends each run's stages.csv rows, with its number, mode and wall seconds, to <dir>/stages.csv."""

import csv
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_workflow import copy_repo, snakemake, write_corpus  # noqa: E402

base = Path(sys.argv[1])
corpus = write_corpus(base / "corpus")
for i, mode in enumerate(sys.argv[2:] or ["own", "fork", "fork", "own"]):
    repo = base / f"repo{i}"
    shutil.rmtree(repo, ignore_errors=True)
    copy_repo(repo)
    env = {"NCN_DATA_DIR": str(corpus), **{"fork": {}, "own": {"NCN_FORK_JOBS": "0"}, "off": {"NCN_MLFLOW_SERVER": "0"}}[mode]}
    t0 = time.monotonic()
    r = snakemake(repo, "--cores", "2", "--configfile", "config/smoke.yaml", env=env, timeout=1800)
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:]
    rows = list(csv.DictReader(open(repo / "results" / "smoke" / "timing" / "stages.csv")))
    print(mode, f"wall_s={wall:.1f}", " ".join(f"{r[k]}" for r in rows for k in list(r)[:3]), flush=True)
    out = base / "stages.csv"
    new = not out.exists()
    with open(out, "a", newline="") as f:  # csv quotes the notes' commas
        w = csv.writer(f)
        if new:
            w.writerow(["run", "mode", "wall_s", *rows[0]])
        for row in rows:
            w.writerow([i, mode, f"{wall:.1f}", *row.values()])
    shutil.rmtree(repo / "results", ignore_errors=True)
