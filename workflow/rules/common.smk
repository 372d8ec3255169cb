# Shared names and helpers for every rule file.
import json
import os
import sys
from pathlib import Path

from ncn.config import seeds_of
from ncn.fileio import write_json
from ncn.variants import names as variant_names, ncn_names

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
PROFILE = config["profile"]

RES = "results"
DATA = f"{RES}/data"
RUN = f"{RES}/runs/{{variant}}/{{size}}/seed{{seed}}"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
# Written by `ncn mlflow-init` once, before the training jobs run in parallel. The store itself
# (results/mlflow.db) is deliberately not an output: Snakemake deletes outputs before rerunning a
# job, and the store holds every run ever recorded.
MLFLOW_READY = f"{RES}/mlflow.ready"


def _drop_stale_mlflow_marker():
    """A marker whose SQLite store was deleted (rm results/mlflow.db) would let parallel training
    jobs race to create the schema: remove it, so mlflow_init runs again first."""
    try:
        uri = json.loads(Path(MLFLOW_READY).read_text()).get("tracking_uri") or ""
    except (OSError, ValueError):
        return
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        Path(MLFLOW_READY).unlink()


_drop_stale_mlflow_marker()

# The resolved config (defaults filled, --config overrides applied) that every `ncn` call reads.
# Rewritten only when its content changes; rules depend on the config *sections* they use via
# `params: cfg=section(...)`, so a changed value reruns only what depends on it. It is not an
# input of any rule: its mtime would rerun everything.
CONFIG_JSON = f"{RES}/config.json"
# Every rule runs in this environment under `--sdm conda` (path relative to workflow/rules/).
CONDA_ENV = "../../envs/ncn.yaml"


def _write_resolved_config():
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    p = Path(CONFIG_JSON)
    if not p.exists() or p.read_text() != text:
        write_json(p, config)


# Written when jobs are about to run (onstart hooks run only then, and only in the main process),
# so a dry run (`-n`) or `--lint` of another config never changes the file under running jobs.
onstart:
    _write_resolved_config()


def section(*keys):
    """A stable string of the config sections a rule depends on (a params rerun trigger)."""
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True)


def size_section(size, *keys):
    """Like section(), plus the definition of one named size: a change to size_defs.m reruns
    only the jobs of size m."""
    return json.dumps({"size_def": config["size_defs"][size], **{k: config.get(k) for k in keys}}, sort_keys=True)


def size_resource(size, key):
    """A scheduler resource of a size: size_defs.<size>.<key> if set, else resources.<key>."""
    return config["size_defs"][size].get(key, config["resources"][key])


def run_dir(w, output):
    """params helper: the run folder of a job (derived from its first output)."""
    return os.path.dirname(output[0])


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


wildcard_constraints:
    variant="|".join(variant_names()),  # the registry, ncn.variants
    size="[A-Za-z0-9_]+",
    seed=r"\d+",


# Each rule file appends the final outputs of its stage; `rule all` asks for all of them.
TARGETS = []


def all_targets():
    return TARGETS
