# Shared names and helpers for every rule file.
import json
from pathlib import Path

from ncn.config import validate as ncn_validate
from ncn.fileio import write_json

# Cross-field checks the JSON schema cannot express (sizes exist, heads divide width, ...).
ncn_validate(config, source="snakemake config")

VARIANTS = list(config["variants"])
NCN_VARIANTS = [v for v in VARIANTS if v != "none"]
SIZES = list(config["sizes"])
SEEDS = list(config["seeds"])
PROFILE = config["profile"]

RES = "results"
DATA = f"{RES}/data"
RUN = RES + "/runs/{variant}/{size}/seed{seed}"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"

# The resolved config (defaults filled, --config overrides applied) that every `ncn` call reads.
# Rewritten only when its content changes; rules depend on the config *sections* they use via
# `params: cfg=section(...)`, so a changed value reruns only what depends on it.
CONFIG_JSON = f"{RES}/config.json"


def _write_resolved_config():
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    p = Path(CONFIG_JSON)
    if not p.exists() or p.read_text() != text:
        write_json(p, config)


_write_resolved_config()


def section(*keys):
    """A stable string of the config sections a rule depends on (a params rerun trigger)."""
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True)


def run_dirs(variants=None, sizes=None, seeds=None):
    return expand(
        RUN,
        variant=variants or VARIANTS,
        size=sizes or SIZES,
        seed=seeds if seeds is not None else SEEDS,
    )


wildcard_constraints:
    variant="|".join(["none", "asrun", "causal", "tonic", "static"]),
    size="[A-Za-z0-9_]+",
    seed=r"\d+",


# Each rule file appends the final outputs of its stage; `rule all` asks for all of them.
TARGETS = []


def all_targets():
    return TARGETS
