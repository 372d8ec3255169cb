"""The Snakemake DAG: dry-runs of every profile and the SLURM profile, config errors caught before
any job runs, `--lint`, and (slow) the smoke profile end to end in a temporary copy of the repo:
every output made, one finished MLflow run per training job, nothing to do on a rerun, a changed
value rerunning only what depends on it, and a SIGKILLed training job resumed by a rerun.

Every test works in a temporary copy (`git ls-files`), never in the checkout's results/.
The end-to-end run happens once per session (`smoke_session`, tests/conftest.py) and its assertions share it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ncn.fileio import read_csv_rows

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "default", "paper")
DATA_RULES = {"fetch_data", "train_tokenizer", "tokenize"}
# metrics.json keys that measure time or interruptions (ncn.train.TIMING_KEYS), not the result
TIMING_KEYS = {"wall_time_s", "tokens_per_s", "resumed_at_steps"}


# ---- helpers -------------------------------------------------------------------------------------


def copy_repo(dst: Path) -> Path:
    """Copy the checkout's files (tracked, plus untracked ones git does not ignore) into dst."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, check=True, capture_output=True,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy what matters
        files = [str(p.relative_to(ROOT)) for d in ("Snakefile", "config", "workflow", "paper", "docs")
                 for p in ([ROOT / d] if (ROOT / d).is_file() else (ROOT / d).rglob("*")) if p.is_file()]
    for rel in files:
        src = ROOT / rel
        if src.is_file() and not rel.startswith("results/"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "results").mkdir(exist_ok=True)
    return dst


def snakemake_env(env: dict | None = None) -> dict:
    """A Snakemake run's environment: offline, `env` added, and its MLflow store the profile's own,
    not one that an earlier test's in-process MLflow named in MLFLOW_TRACKING_URI
    (mlflow.set_tracking_uri sets it for subprocesses)."""
    mine = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    return {**mine, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}


def snakemake(cwd: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run this environment's Snakemake in cwd (`snakemake_env`); stdout and stderr together in .stdout."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd, env=snakemake_env(env), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry-run: rule -> number of jobs."""
    counts: dict[str, int] = {}
    in_table = False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            in_table, counts = True, {}
            continue
        if in_table:
            m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if m and m.group(1) != "total":
                counts[m.group(1)] = int(m.group(2))
            elif line.strip().startswith("total"):
                in_table = False
    return counts


def load_profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())


def write_corpus(folder: Path, n_train: int = 1100, n_valid: int = 200, seed: int = 0) -> Path:
    """A small TinyStories-like corpus (stories separated by `<|endoftext|>` lines)."""
    rng = random.Random(seed)
    names = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Tim", "Zoe", "Sam"]
    animals = ["cat", "dog", "bird", "frog", "bunny", "duck", "fox", "bear"]
    things = ["ball", "kite", "apple", "box", "hat", "cake", "boat", "flower", "book", "toy"]
    places = ["park", "garden", "forest", "house", "lake", "school", "beach", "farm"]
    feelings = ["happy", "sad", "scared", "excited", "tired", "proud", "angry", "surprised"]

    def story() -> str:
        n, a, t, p, f = (rng.choice(x) for x in (names, animals, things, places, feelings))
        m = rng.choice([x for x in names if x != n])
        lines = [
            f"Once upon a time, there was a little {a} named {n}. {n} liked to play in the {p}.",
            f"One day, {n} found a {rng.choice(['big', 'small', 'red', 'shiny', 'old'])} {t}. "
            f"{n} was very {f}. \"Look at my {t}!\" said {n}.",
            f"{m} came to the {p} and saw the {t}. {m} wanted to play too. "
            f"They played with the {t} all day.",
            rng.choice([
                f"At the end of the day, {n} and {m} went home. They were {rng.choice(feelings)} and tired.",
                f"Then it started to rain. {n} and {m} ran inside and shared a {rng.choice(things)}.",
                f"{n} learned that sharing is good. The {a} smiled and said thank you.",
            ]),
        ]
        return "\n".join(lines[: rng.randint(3, 4)])

    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", n_train), ("valid.txt", n_valid)):
        (folder / name).write_text("".join(story() + "\n<|endoftext|>\n" for _ in range(n)), encoding="utf-8")
    return folder


# ---- fast: dry-runs, lint, config errors ---------------------------------------------------------


@pytest.fixture(scope="module")
def scratch():
    """A private temporary folder for the module (not pytest's tmp_path, whose old sessions
    another pytest process may delete while a long Snakemake run still works in them)."""
    path = Path(tempfile.mkdtemp(prefix="ncn-workflow-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def repo_copy(scratch) -> Path:
    """A fresh copy with no results: dry-runs there list every job."""
    return copy_repo(scratch / "repo")


@pytest.mark.parametrize("name", PROFILES)
def test_dry_run_lists_every_training_job(repo_copy, name):
    cfg = load_profile(name)
    args = ["-n", "--cores", "2"] + ([] if name == "default" else ["--configfile", f"config/{name}.yaml"])
    r = snakemake(repo_copy, *args)
    assert r.returncode == 0, r.stdout[-3000:]
    counts = job_counts(r.stdout)
    from ncn.config import planned_runs

    runs = len(planned_runs(cfg)) + len(control_runs(cfg))  # each variant with its own seeds
    assert counts.get("train") == runs, counts
    assert counts.get("evaluate") == runs, counts
    assert counts.get("fetch_data") == 1, counts
    if name == "default":
        assert set(cfg["variants"]) == {"none", "asrun", "causal", "tonic", "static"}
        assert len(cfg["sizes"]) >= 3 and len(cfg["seeds"]) >= 3
    if name == "paper":  # the train jobs ask the scheduler for a GPU
        trains = [b for b in r.stdout.split("\n\n") if "rule train:" in b]
        assert trains and all(re.search(r"\bgpu=1\b", b) for b in trains)
    # a dry run leaves no trace in results/
    assert sorted(p.name for p in (repo_copy / "results").iterdir()) in ([], ["README.md"])


def test_paper_profile_is_the_faithful_configuration():
    cfg = load_profile("paper")
    sd = cfg["size_defs"]["paper18m"]
    assert (sd["d_model"], sd["n_layer"], sd["n_head"], sd["d_ff"], sd["block_size"]) == (256, 6, 8, 1024, 512)
    for name, d in cfg["size_defs"].items():  # 32,768 tokens per optimizer step at every size
        mb = d.get("micro_batch", cfg["train"]["micro_batch"])
        ga = d.get("grad_accum", cfg["train"].get("grad_accum", 1))
        assert mb * ga * d["block_size"] == 32768, name
    t = cfg["train"]
    assert (t["lr"], t["weight_decay"], t["decay_all"], t["warmup_steps"], t["epochs"]) == (6e-4, 0.1, True, 100, 1.0)
    assert cfg["model"]["dropout"] == 0.1 and cfg["tokenizer"]["kind"] == "gpt2"
    assert cfg["seeds"] == [0, 1, 2] and cfg["resources"]["gpu"] >= 1
    assert cfg["data"]["hub_train_file"] == "TinyStoriesV2-GPT4-train.txt"


def test_slurm_profile_dry_runs_and_asks_for_gpus(repo_copy):
    r = snakemake(repo_copy, "--profile", "workflow/profiles/slurm", "-n")
    assert r.returncode == 0, r.stdout[-3000:]
    trains = [b for b in r.stdout.split("\n\n") if "rule train:" in b]
    assert trains and all(re.search(r"\bgpu=1\b", b) and "mem_mb=" in b and "runtime=" in b for b in trains)
    assert job_counts(r.stdout).get("train") == 57 + len(control_runs(load_profile("default")))  # (3 x 3 + 2 x 5) x 3 sizes


def test_rule_params_read_as_key_value_pairs():
    """The `params: cfg=` rerun triggers (common.smk's section()) read well in the report."""
    from ncn.config import params_text

    text = params_text({"train": {"lr": 0.003, "compile": False}, "seeds": [0, 1], "profile": "smoke", "x": None})
    assert text == "profile=smoke, seeds=[0, 1], train.compile=false, train.lr=0.003, x=null"
    assert params_text({"train": {"lr": 0.001}}) != params_text({"train": {"lr": 0.003}})
    assert '"' not in params_text(load_profile("smoke"))


def test_lint_reports_nothing(repo_copy):
    r = snakemake(repo_copy, "--lint")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Lints for" not in r.stdout, r.stdout[-3000:]


@pytest.mark.parametrize(
    "edit, culprit",
    [
        (lambda c: c["train"].update(lrr=1.0), "lrr"),
        (lambda c: c["train"].update(micro_batch="many"), "micro_batch"),
        (lambda c: c.update(sizes=["xs", "huge"]), "huge"),
        (lambda c: c.update(variants=["causal", "bogus"]), "bogus"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-size", "unknown-variant"],
)
def test_bad_config_fails_before_any_job_naming_the_key(repo_copy, tmp_path, edit, culprit):
    cfg = load_profile("smoke")
    edit(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = snakemake(repo_copy, "--cores", "1", "--configfile", str(bad))
    assert r.returncode != 0
    assert culprit in r.stdout, r.stdout[-3000:]
    assert "rule " not in r.stdout and "Job stats" not in r.stdout  # no job was even scheduled
    assert sorted(p.name for p in (repo_copy / "results").iterdir()) in ([], ["README.md"])


# ---- slow: the smoke profile end to end ----------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(smoke_session):
    """The smoke profile, run once per test session from scratch on a test-made corpus in a copy of
    the repo (tests/conftest.py). The tests below only add to it: a rerun, dry-runs, and a run of
    a seed outside the profile."""
    return smoke_session


def smoke_runs(cfg):
    from ncn.config import planned_runs

    return planned_runs(cfg)


def control_runs(cfg):
    """The runs of the control variant (ncn.analysis.rules.control_runs): trained, evaluated, tracked."""
    from ncn.analysis.rules import control_runs as runs

    return runs(cfg)


@pytest.mark.slow
def test_smoke_makes_every_output(smoke):
    from ncn.analysis.rules import largest_size
    from ncn.config import seeds_of

    repo, cfg = smoke["repo"], smoke["cfg"]
    # every output of the DAG (whatever stages exist) is there and up to date
    r = snakemake(repo, "--summary", "--configfile", "config/smoke.yaml", env=smoke["env"])
    assert r.returncode == 0, r.stdout[-3000:]
    rows = [line.split("\t") for line in r.stdout.splitlines() if line.startswith("results/")]
    assert all(row[0].startswith("results/smoke/") for row in rows)  # one folder per profile
    assert len(rows) > 50
    for row in rows:
        assert (repo / row[0]).exists(), row[0]
        assert row[-1] == "no update", row
    # the outputs this stage owns, by name
    res = repo / "results" / "smoke"
    data = res / "data"
    for f in ("train.txt", "valid.txt", "manifest.json", "tokenizer.json", "train.bin", "valid.bin", "meta.json"):
        assert (data / f).stat().st_size > 0, f
    assert (res / "mlflow.ready").exists() and (res / "mlflow.db").exists()
    resolved = json.loads((res / "config.json").read_text())
    # the smoke profile replaced config/default.yaml instead of being merged into it
    assert resolved["profile"] == "smoke" and set(resolved["size_defs"]) == set(cfg["size_defs"])
    for v, s, n in smoke_runs(cfg):
        run = res / "runs" / v / s / f"seed{n}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["finished"] is True and (metrics["variant"], metrics["size"], metrics["seed"]) == (v, s, n)
        assert (run / "model.pt").exists() and (run / "train_log.csv").exists()
        assert json.loads((run / "eval.json").read_text())["val_loss"] > 0
        assert (run / "samples.json").exists() == (n == seeds_of(cfg, v)[0] and s == largest_size(cfg))
        for kind in ("train", "evaluate"):
            assert (res / "logs" / kind / v / s / f"seed{n}.log").exists()
            assert (res / "benchmarks" / kind / v / s / f"seed{n}.tsv").exists()
    # the control variant: labels beside the tokens, its runs evaluated on them, one measurement per run
    assert control_runs(cfg) and all((data / f).stat().st_size > 0 for f in ("train.label.bin", "labels.json"))
    for v, s, n in control_runs(cfg):
        assert json.loads((res / "runs" / v / s / f"seed{n}" / "eval.json").read_text())[
            "heldout_control"] == "true story labels"
    measured = (res / "tables" / "control_runs.csv").read_text().splitlines()
    assert len(measured) == 1 + len(control_runs(cfg))


@pytest.mark.slow
def test_smoke_records_a_pipeline_run_with_nested_training_and_evaluation_runs(smoke):
    from mlflow.tracking import MlflowClient

    res = smoke["repo"] / "results" / "smoke"
    client = MlflowClient(tracking_uri=f"sqlite:///{res / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    assert exp is not None and exp.artifact_location == f"mlartifacts/{exp.experiment_id}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("ncn.stage"), []).append(r)
    # the session's first invocation (other tests may have added theirs since)
    pipeline = min(by_stage["pipeline"], key=lambda r: r.info.start_time)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id]
    expected = sorted(f"{v}-{s}-s{n}" for v, s, n in smoke_runs(smoke["cfg"]) + control_runs(smoke["cfg"]))
    assert sorted(r.info.run_name for r in nested if r.data.tags["ncn.stage"] == "train") == expected
    assert sorted(r.info.run_name for r in nested if r.data.tags["ncn.stage"] == "evaluate") == [f"{n}-eval" for n in expected]
    # the jobs logged through the invocation's MLflow server (ncn.trackserver), stopped at the end
    from ncn.trackserver import socket_path

    served = (res / "logs" / "mlflow-serve.log").read_text()
    assert served.count("tracker for job pid") >= len(expected) <= served.count("log_eval for job pid"), served[-2000:]
    # ... and the train, evaluate and analyze jobs ran in its forks (ncn.trackserver.delegate)
    assert served.count(": ncn train --config") >= len(expected) <= served.count(": ncn evaluate --"), served[-2000:]
    assert ": ncn analyze claims" in served and ": ncn generate" in served, served[-2000:]
    # ... whose CPU the timing table adds to their stages (a forked job's benchmark has only its waiting process)
    stages = {r["stage"]: r for r in read_csv_rows(res / "timing" / "stages.csv")}
    for stage in ("train", "evaluate", "analysis"):
        assert float(stages[stage]["fork_cpu_s"]) > float(stages[stage]["cpu_s"]), stages[stage]
    assert stages["data"]["fork_cpu_s"] == "", stages["data"]
    assert not Path(socket_path(res / "mlflow.ready")).exists()
    unfinished = [(r.info.run_name, r.info.status) for r in nested + [pipeline] if r.info.status != "FINISHED"]
    assert not unfinished, unfinished  # a job's MLflow failure is only a warning in its log: find it there
    old = os.getcwd()
    os.chdir(res)  # the store's locations are relative to its folder
    try:
        arts = {a.path for a in client.list_artifacts(pipeline.info.run_id)}
    finally:
        os.chdir(old)
    assert {"figures", "tables", "claims.json", "paper", "config.json", "snakemake"} <= arts, arts


@pytest.mark.slow
def test_smoke_rerun_has_nothing_to_do(smoke):
    r = snakemake(smoke["repo"], "--cores", "2", "--configfile", "config/smoke.yaml", env=smoke["env"])
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Nothing to be done" in r.stdout, r.stdout[-3000:]


@pytest.mark.slow
def test_report_lists_labelled_figures_tables_and_the_paper(smoke):
    repo = smoke["repo"]
    r = snakemake(repo, "--report", "results/smoke/report.html", "--configfile", "config/smoke.yaml", env=smoke["env"])
    assert r.returncode == 0, r.stdout[-3000:]
    html = (repo / "results" / "smoke" / "report.html").read_text(encoding="utf-8")
    figures = sorted(p.name for p in (repo / "results" / "smoke" / "figures").glob("*.png"))
    assert figures, "the smoke run made no figures"
    for name in figures:
        assert name in html, name
    for label in ("Training loss curves", "The claims and their verdicts", "The paper (PDF)",
                  "Every run: training and validation metrics"):
        assert label in html, label
    for category in ("Figures", "Tables", "Paper"):
        assert category in html, category
    assert "profile <tt" in html  # the captions were rendered with the config


def _dry_run_with(smoke, tmp_path, edit) -> dict[str, int]:
    cfg = load_profile("smoke")
    edit(cfg)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = snakemake(smoke["repo"], "-n", "--cores", "2", "--configfile", str(path), env=smoke["env"])
    assert r.returncode == 0, r.stdout[-3000:]
    return job_counts(r.stdout)


@pytest.mark.slow
def test_changed_lr_reruns_only_training_and_what_follows(smoke, tmp_path):
    counts = _dry_run_with(smoke, tmp_path, lambda c: c["train"].update(lr=c["train"]["lr"] / 2))
    n_runs = len(smoke_runs(smoke["cfg"]) + control_runs(smoke["cfg"]))
    assert counts["train"] == n_runs and counts["evaluate"] == n_runs
    assert not DATA_RULES & set(counts), counts


@pytest.mark.slow
def test_changed_eval_setting_reruns_no_training(smoke, tmp_path):
    counts = _dry_run_with(smoke, tmp_path, lambda c: c["eval"].update(max_tokens=c["eval"]["max_tokens"] // 2))
    assert counts["evaluate"] == len(smoke_runs(smoke["cfg"]) + control_runs(smoke["cfg"]))
    assert "train" not in counts and not DATA_RULES & set(counts), counts


@pytest.mark.slow
def test_sigkilled_training_job_resumes_on_rerun(smoke):
    """Kill `ncn train` mid-run under Snakemake: no output is left that looks finished, the
    checkpoints survive Snakemake's cleanup, and rerunning the target resumes and ends with the
    metrics of an uninterrupted run. (A seed outside the profile, so the other tests are unaffected.)"""
    repo, env = smoke["repo"], smoke["env"]
    run = repo / "results" / "smoke" / "runs" / "causal" / "xs" / "seed7"
    target = str((run / "metrics.json").relative_to(repo))
    # (targets before --configfile, which takes every path that follows it)
    r = snakemake(repo, target, "--cores", "1", "--configfile", "config/smoke.yaml",
                  env={**env, "NCN_FAULT_KILL_AT_STEP": "30"})
    assert r.returncode != 0, r.stdout[-3000:]
    assert not (run / "model.pt").exists() and not (run / "metrics.json").exists()
    assert list((run / "ckpt").glob("*.pt")), "checkpoints were deleted with the failed job's outputs"

    r = snakemake(repo, target, "--cores", "1", "--configfile", "config/smoke.yaml", env=env)
    assert r.returncode == 0, r.stdout[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["resumed_at_steps"], "the rerun started over instead of resuming"

    fresh = repo / "fresh"
    subprocess.run(
        [Path(sys.executable).with_name("ncn"), "train", "--config", "results/smoke/config.json", "--variant", "causal",
         "--size", "xs", "--seed", "7", "--out", str(fresh), "--data", "results/smoke/data", "--threads", "1"],
        cwd=repo, check=True, capture_output=True, env={**os.environ, **env},
    )
    uninterrupted = json.loads((fresh / "metrics.json").read_text())
    drop = lambda m: {k: v for k, v in m.items() if k not in TIMING_KEYS}  # noqa: E731
    assert drop(resumed) == drop(uninterrupted)
