"""`ncn analyze runs`: every finished run's metrics.json + eval.json in one table.

The table (ncn.analysis.runs.collect) is what every aggregate reads. Measured wall times and
throughput go to a second CSV, so the table itself is byte-identical across reruns.
"""

from __future__ import annotations

import sys


def add_arguments(p) -> None:
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="run folders results/runs/V/S/seedN")
    p.add_argument("--out", required=True, help="output CSV (results/tables/runs.csv)")
    p.add_argument("--timing", required=True,
                   help="measured wall times and throughput per run (results/timing/runs.csv), kept out of "
                        "--out so the table is byte-identical across reruns")


def main(args, cfg=None) -> int:
    from ncn.analysis.runs import collect
    from ncn.analysis.tables import write_csv
    from ncn.runs import TIMING_KEYS

    df = collect(args.runs)
    timing = [c for c in TIMING_KEYS if c in df]
    write_csv(df.drop(columns=timing), args.out, float_format=None)
    write_csv(df[["variant", "size", "seed", *timing]], args.timing, float_format=None)
    print(f"ncn analyze runs: {len(df)} runs -> {args.out}", file=sys.stderr)
    return 0
