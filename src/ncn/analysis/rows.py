"""`ncn analyze rows <what>`: one run's measurement rows of an analysis that scores every run.

`skip`, `kvcache` and `knobs` score each run they are given on the held-out split, and only then
write their tables and figures. Measured in one job, they run one after another once the last
run is trained: ~36 min of one core in the default profile, at the tail of the DAG. With
`resources.analysis_per_run` (the default), the workflow instead measures every run in a job of
its own (rule `analysis_rows`), started as soon as that run is trained, so the measurements
overlap training; the analysis's job then reads the rows (`ncn analyze skip --rows CSV...`) and
writes its outputs.

The rows keep every float at full precision (the shortest repr that reads back the same float),
so `--rows` and `--run` give byte-identical outputs (tests/test_analysis_rows.py).

    ncn analyze rows skip --run results/default/runs/causal/l/seed0 --config C --data D \\
        --out results/default/runs/causal/l/seed0/analysis/skip.csv
"""

from __future__ import annotations

import importlib
from typing import Callable

# what -> (module, the function measuring one run: fn(run_dir, cfg, data_dir, threads) -> DataFrame)
MEASURES: dict[str, tuple[str, str]] = {
    "skip": ("ncn.analysis.skip", "skip_table"),
    "kvcache": ("ncn.analysis.kvcache", "kvcache_table"),
    "knobs": ("ncn.analysis.knobs", "knobs_table"),
}


def measure_fn(what: str) -> Callable:
    module, fn = MEASURES[what]
    return getattr(importlib.import_module(module), fn)


def write_rows(df, path) -> None:
    """The rows as CSV with every float at full precision (read back exactly by read_rows)."""
    from ncn.analysis import tables

    tables.write_csv(df, path, float_format=None)


def read_rows(path):
    from ncn.analysis import tables
    from ncn.errors import NCNError

    import pandas as pd

    try:
        df = tables.read_table(path)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame()
    if df.empty:
        raise NCNError(f"{path}: no rows; rerun its job (ncn analyze rows ...)")
    return df


def add_source(p, runs_help: str) -> None:
    """--run RUN... (measure here) or --rows CSV... (read what `ncn analyze rows` measured)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", nargs="+", metavar="RUN", help=runs_help)
    g.add_argument("--rows", nargs="+", metavar="CSV",
                   help="the runs' rows already measured by `ncn analyze rows` (one CSV per run, in run order), "
                        "read instead of measuring (the workflow's per-run jobs)")


def gather(args, measure_one: Callable, desc: str):
    """Every run's rows, in the order given: read from --rows, or measured with measure_one(run)."""
    import pandas as pd

    from ncn.progress import bar

    if args.rows:
        return pd.concat([read_rows(p) for p in args.rows], ignore_index=True)
    return pd.concat([measure_one(r) for r in bar(args.run, desc=desc)], ignore_index=True)


def add_arguments(p) -> None:
    from ncn.analysis import options

    p.add_argument("analysis", choices=list(MEASURES), help="the analysis whose per-run measurement to take")
    p.add_argument("--run", required=True, metavar="RUN", help="one run folder holding model.pt")
    options.add_config(p)
    options.add_data(p)
    p.add_argument("--out", required=True, help="output CSV of the run's rows (full precision)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def stage(args) -> str:
    """The config slice this job reads: the measured analysis's (ncn.stages.READS)."""
    return f"analyze.{args.analysis}"


def main(args, cfg: dict) -> None:
    write_rows(measure_fn(args.analysis)(args.run, cfg, args.data, args.threads), args.out)
