"""`ncn analyze <what>`: tables, figures and claims from finished runs.

Typical order (what workflow/rules/analysis.smk runs):
  ncn analyze runs      --runs RUN...                     --out results/tables/runs.csv
  ncn analyze trace     --run RUN --config C --data D     --out results/traces/V_S.csv
  ncn analyze ab        --runs-table T --config C         --tables results/tables --figures results/figures
  ncn analyze scaling   --runs-table T --config C         --tables ... --figures ...
  ncn analyze leak      --runs-table T --config C         --tables ...
  ncn analyze brainscan --traces CSV... --config C        --figures ...
  ncn analyze skip      --run RUN... --config C --data D  --tables ... --figures ...
  ncn analyze claims    --runs-table T --traces CSV... --config C --data D --out results/claims.json --tex ...
"""

from __future__ import annotations

import argparse
import sys

from ncn.errors import NCNError

WHAT = {
    "runs": "collect metrics.json + eval.json of runs into one CSV (one row per run)",
    "trace": "g, beta, gamma per layer per token and token surprisal of one run on fixed sentences",
    "ab": "A/B of every variant vs the iso-parameter baseline per size (mean and t-CI over seeds, paired dPPL) + loss curves",
    "scaling": "validation loss vs parameters per variant, fitted power laws, NCN-baseline gap",
    "leak": "asrun's future-token leak: loss with full vs prefix-only pooling",
    "brainscan": "heatmaps (layers x tokens) of the signals with fixed shared colour limits + deviation from init",
    "skip": "block skipping: skip a token's FFN where gamma < eps; loss, skipped fraction, wall time",
    "claims": "one measured verdict per claim: claims.json + a LaTeX table",
}


def _config(path):
    from ncn.config import load_config

    return load_config(path)


def _add_config(p):
    p.add_argument("--config", required=True, help="the resolved config (results/config.json) or a profile YAML")


def _add_dirs(p, figures=True):
    p.add_argument("--tables", default="results/tables", help="folder for the .csv/.tex tables (default: %(default)s)")
    if figures:
        p.add_argument("--figures", default="results/figures", help="folder for the .pdf/.png figures (default: %(default)s)")


def _add_runs_table(p):
    p.add_argument("--runs-table", default="results/tables/runs.csv",
                   help="the table written by 'ncn analyze runs' (default: %(default)s); its run_dir column "
                        "locates each run's train_log.csv")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ncn analyze",
        description="Turn finished runs into tables (results/tables/*.csv|tex), figures "
        "(results/figures/*.pdf|png), per-token traces (results/traces/) and claim verdicts "
        "(results/claims.json). Every table CSV and JSON output is byte-identical on rerun "
        "(measured wall times go to results/timing/).",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="what", required=True, metavar="what")
    mk = lambda name: sub.add_parser(name, help=WHAT[name], description=WHAT[name])  # noqa: E731

    q = mk("runs")
    q.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="run folders results/runs/V/S/seedN")
    q.add_argument("--out", default="results/tables/runs.csv", help="output CSV (default: %(default)s)")
    q.add_argument("--timing", default="results/timing/runs.csv",
                   help="measured wall times and throughput per run, kept out of --out so the table is "
                        "byte-identical across reruns (default: %(default)s)")

    q = mk("trace")
    q.add_argument("--run", required=True, help="run folder holding model.pt (an NCN variant)")
    _add_config(q)
    q.add_argument("--data", default="results/data", help="tokenized data folder: meta.json, valid.bin, tokenizer.json")
    q.add_argument("--out", required=True, help="output CSV, e.g. results/traces/causal_s.csv")
    q.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")

    for name in ("ab", "scaling"):
        q = mk(name)
        _add_runs_table(q)
        _add_config(q)
        _add_dirs(q)

    q = mk("leak")
    _add_runs_table(q)
    _add_config(q)
    _add_dirs(q, figures=False)

    q = mk("brainscan")
    q.add_argument("--traces", nargs="+", required=True, metavar="CSV",
                   help="trace CSVs to show, one per NCN variant (the pipeline passes the largest size)")
    _add_config(q)
    q.add_argument("--figures", default="results/figures", help="folder for the figures (default: %(default)s)")

    q = mk("skip")
    q.add_argument("--run", nargs="+", required=True, metavar="RUN", help="NCN run folder(s) holding model.pt")
    _add_config(q)
    q.add_argument("--data", default="results/data", help="tokenized data folder (default: %(default)s)")
    _add_dirs(q)
    q.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    q.add_argument("--repeats", type=int, default=1,
                   help="timed passes per eps; the wall time is their median (default: %(default)s)")

    q = mk("claims")
    _add_runs_table(q)
    q.add_argument("--traces", nargs="*", default=[], metavar="CSV",
                   help="traces at the largest size (the NCN's and asrun's); a missing one makes the "
                        "trace-based claims inconclusive")
    _add_config(q)
    q.add_argument("--data", default="results/data", help="tokenized data folder: meta.json (tokenizer kind), "
                   "valid.bin + tokenizer.json (GPT-2 tokens per byte for claim 2)")
    q.add_argument("--out", default="results/claims.json", help="claims JSON (default: %(default)s)")
    q.add_argument("--tex", default="results/tables/claims.tex", help="claims LaTeX table (default: %(default)s)")
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.what == "runs":
        from ncn.analysis.runs import collect
        from ncn.analysis.tables import write_csv
        from ncn.runs import TIMING_KEYS

        df = collect(a.runs)
        timing = [c for c in TIMING_KEYS if c in df]
        write_csv(df.drop(columns=timing), a.out, float_format=None)
        write_csv(df[["variant", "size", "seed", *timing]], a.timing, float_format=None)
        print(f"ncn analyze runs: {len(df)} runs -> {a.out}", file=sys.stderr)
        return 0

    cfg = _config(a.config)
    if a.what == "trace":
        from ncn.analysis.trace import trace_run, write_trace

        df = trace_run(a.run, cfg, a.data, a.threads)
        write_trace(df, a.out)
        print(f"ncn analyze trace: {df['sentence_id'].nunique()} sentences -> {a.out}", file=sys.stderr)
    elif a.what in ("ab", "scaling", "leak"):
        import importlib

        from ncn.analysis.runs import load_runs_table

        runs = load_runs_table(a.runs_table)
        mod = importlib.import_module(f"ncn.analysis.{a.what}")
        if a.what == "leak":
            mod.run(runs, cfg, a.tables)
        else:
            mod.run(runs, cfg, a.tables, a.figures)
    elif a.what == "brainscan":
        from ncn.analysis import brainscan

        brainscan.run(a.traces, cfg, a.figures)
    elif a.what == "skip":
        from ncn.analysis import skip

        skip.run(a.run, cfg, a.data, a.tables, a.figures, a.threads, a.repeats)
    elif a.what == "claims":
        from ncn.analysis import claims
        from ncn.analysis.runs import load_runs_table
        from ncn.analysis.trace import read_trace
        from ncn.data import load_meta

        runs = load_runs_table(a.runs_table)
        traces = {}
        for path in a.traces:
            df = read_trace(path)
            v = str(df["variant"].iloc[0])
            if v in traces:
                raise NCNError(f"two traces of variant {v} given ({path}); pass one per variant (the largest size)")
            traces[v] = df
        doc = claims.run(runs, traces, cfg, load_meta(a.data), a.data, a.out, a.tex)
        for c in doc["claims"]:
            print(f"  claim {c['id']} {c['key']:<22} {c['verdict']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
