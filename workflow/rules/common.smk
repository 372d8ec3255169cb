# Shared names and helpers for every rule file.
import json
import os
import subprocess
import sys
from pathlib import Path

from ncn.stages import trigger as stage_trigger
from ncn.config import seeds_of
from ncn.fileio import write_json
from ncn.analysis.rows import MEASURES as PER_RUN_ANALYSES
from ncn.variants import names as variant_names, ncn_names, spec as variant_spec

# The config is validated (defaults filled) in the Snakefile before this file is included.

# Rules call `ncn ...`; make that the `ncn` of the environment running Snakemake, even when the
# venv is not activated (`.venv/bin/snakemake ...`) and on cluster nodes that re-run this file.
envvars:
    "PATH",


_search_path = os.environ["PATH"]
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + _search_path

VARIANTS = list(config["variants"])
NCN_VARIANTS = ncn_names(VARIANTS)  # every configured variant but the baseline
SIZES = list(config["sizes"])
SEEDS = list(config["seeds"])
# the seeds of one variant: variant_seeds[v] when set, else seeds
VARIANT_SEEDS = lambda v: seeds_of(config, v)  # noqa: E731
PROFILE = config["profile"]

# One results folder per profile: smoke, default, cpu-trunk and paper never overwrite each other.
RES = f"results/{PROFILE}"
DATA = f"{RES}/data"
RUN = f"{RES}/runs/{{variant}}/{{size}}/seed{{seed}}"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
# The pipeline's MLflow run (ncn.tracking): `ncn mlflow-init` creates the store (RES/mlflow.db)
# if needed and opens one run per invocation when jobs are about to run (onstart, below), and
# writes this marker naming it; the training and evaluation jobs nest their runs under it (they
# find it through NCN_MLFLOW_PIPELINE); onsuccess/onerror log the results to it and close it.
# `--serve` also starts `ncn mlflow-serve`, which imports torch and MLflow once (ncn.trackserver):
# the train, evaluate, generate and analyze jobs run in forks of it, and so does the jobs' MLflow
# work; `ncn mlflow-end` stops it, and it exits with Snakemake in any case.
# Neither the marker nor the store is an output: Snakemake deletes outputs before rerunning a job,
# and the store holds every run ever recorded.
MLFLOW_READY = f"{RES}/mlflow.ready"
os.environ["NCN_MLFLOW_PIPELINE"] = MLFLOW_READY


envvars:
    "NCN_MLFLOW_PIPELINE",


# The resolved config (defaults filled, --config overrides applied) that every `ncn` call reads.
# Rewritten only when its content changes; rules depend on the config *sections* they use via
# `params: cfg=trigger(stage)`, so a changed value reruns only what depends on it. It is not an
# input of any rule: its mtime would rerun everything.
CONFIG_JSON = f"{RES}/config.json"
# Every rule runs in this environment under `--sdm conda` (path relative to workflow/rules/).
CONDA_ENV = "../../envs/ncn.yaml"


def _write_resolved_config():
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    p = Path(CONFIG_JSON)
    if not p.exists() or p.read_text() != text:
        write_json(p, config)


def _ncn_hook(*args):
    """`ncn ARGS` from a hook: its output is shown, and a failure is a warning, never the pipeline's."""
    r = subprocess.run(["ncn", *args], capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip()
    if out:
        print(("WARNING: " if r.returncode else "") + out, file=sys.stderr)


def _end_pipeline_run(status, log):
    try:
        has_run = bool(json.loads(Path(MLFLOW_READY).read_text()).get("run_id"))
    except (OSError, ValueError):
        has_run = False
    logs = [str(f) for f in (log if isinstance(log, (list, tuple)) else [log]) if f]  # Snakemake 9: a list
    if has_run:
        _ncn_hook("mlflow-end", "--ready", MLFLOW_READY, "--results", RES, "--status", status, "--log", *logs)


# Hooks run only when jobs are about to run, and only in the main process, so a dry run (`-n`) or
# `--lint` of another config never changes the files under running jobs.
onstart:
    _write_resolved_config()
    _ncn_hook("mlflow-init", "--config", CONFIG_JSON, "--out", MLFLOW_READY, "--serve")


onsuccess:
    _end_pipeline_run("FINISHED", log)


onerror:
    _end_pipeline_run("FAILED", log)


def trigger(stage, size=None):
    """A rule's `params: cfg=` rerun trigger: the config keys its command reads, from the one list
    ncn.stages.READS (the command loads exactly that slice). With `size`, only that size's
    definition: a change to size_defs.m reruns only the jobs of size m."""
    return stage_trigger(config, stage, size)


def size_resource(size, key):
    """A scheduler resource of a size: size_defs.<size>.<key> if set, else resources.<key>."""
    return config["size_defs"][size].get(key, config["resources"][key])


def run_dir(w, output):
    """params helper: the run folder of a job (derived from its first output)."""
    return os.path.dirname(output[0])


# Per-run measurements (ncn.analysis.rows): with resources.analysis_per_run, skip, kvcache and
# knobs score each run in a job of its own (analysis_rows), started as soon as that run is trained
# so that it overlaps training, and their rules read the rows (--rows); else each of those rules
# measures all its runs in its one job (--run).
PER_RUN = config["resources"]["analysis_per_run"]
ROWS = "analysis/{what}.csv"  # a run's rows of one analysis, inside its run folder (rule analysis_rows)


def measured(what, dirs):
    """The inputs of an analysis that scores every run in `dirs`: their rows, or their models."""
    return [f"{d}/{ROWS.format(what=what)}" if PER_RUN else f"{d}/model.pt" for d in dirs]


def measured_option(what, dirs):
    """Its source option, matching `measured`: --rows CSV... or --run RUN..."""
    return ("--rows " + " ".join(measured(what, dirs))) if PER_RUN else ("--run " + " ".join(dirs))


def data_dir(w, input):
    """params helper: the data folder (derived from the tokenized data's meta.json)."""
    return os.path.dirname(input.meta)


def run_dirs(variants=None, sizes=None, seeds=None, pattern=RUN):
    """`pattern` (a run folder, or a file in it) of every configured run: each variant with its own
    seeds (variant_seeds, else seeds), or only `seeds` of them when given."""
    return [
        path
        for v in (variants or VARIANTS)
        for path in expand(
            pattern,
            variant=v,
            size=sizes or SIZES,
            seed=[s for s in seeds_of(config, v) if seeds is None or s in seeds],
        )
    ]


# The per-token story labels beside the tokens (`ncn data labels`; made in control.smk):
# what a run of a variant with control trains and is evaluated on.
LABEL_FILES = [f"{DATA}/train.label.bin", f"{DATA}/heldout.label.bin", f"{DATA}/labels.json"]


def label_inputs(w):
    """input helper: the story labels for a run of a variant with control (ncn.control), else none."""
    return LABEL_FILES if variant_spec(w.variant).control else []


wildcard_constraints:
    variant="|".join(variant_names()),  # the registry, ncn.variants
    size="[A-Za-z0-9_]+",
    seed=r"\d+",


# The report (`snakemake --report RES/report.html`): every item has a category, a label (the
# report lists labels, not paths) and a caption (workflow/report/<caption>). By file name.
REPORT_ITEMS = {
    "loss_curves.png": ("Figures", "Training loss curves", "loss_curves.rst"),
    "scaling.png": ("Figures", "Scaling with model size", "scaling.rst"),
    "brainscan.png": ("Figures", "Brain scan: the NCN signals", "brainscan.rst"),
    "brainscan_dev.png": ("Figures", "Brain scan: deviation from initialisation", "brainscan_dev.rst"),
    "skip_tradeoff.png": ("Figures", "Block skipping trade-off", "skip_tradeoff.rst"),
    "runs.csv": ("Tables", "Every run: training and validation metrics", "runs_table.rst"),
    "ab.csv": ("Tables", "A/B: each variant against the iso-parameter baseline", "ab_table.rst"),
    "scaling.csv": ("Tables", "Scaling: power-law fits and per-size gaps", "scaling_table.rst"),
    "leak.csv": ("Tables", "As-run future-token leak", "leak_table.rst"),
    "skip.csv": ("Tables", "Block skipping: loss and compute per threshold", "skip_table.rst"),
    "claims.json": ("Tables", "The claims and their verdicts", "claims.rst"),
    "ncn.pdf": ("Paper", "The paper (PDF)", "paper.rst"),
}
REPORT_NOUN = {"Figures": "Figure", "Tables": "Table", "Paper": "Document"}


def report_item(path):
    """report(path) with the category, label and caption of its REPORT_ITEMS entry."""
    category, label, caption = REPORT_ITEMS[os.path.basename(path)]
    return report(path, caption=f"../report/{caption}", category=category, labels={REPORT_NOUN[category]: label})


# Each rule file appends the final outputs of its stage; `rule all` asks for all of them.
TARGETS = []


def all_targets():
    return TARGETS
