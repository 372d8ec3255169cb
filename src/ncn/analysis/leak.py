"""The leak table: what a pool that sees the future buys, kept apart from train/test mismatch.

One row per (NCN variant, size) of the leak measurements (`ncn analyze leakprobe`, per seed):
  max_abs_dlogit_past      the largest over seeds of the structural measurement (0: position t
                           cannot see later tokens; > 0: it can). A fact, not an estimate.
  benefit_*                loss with the true future − loss with another window's future, at
                           positions ≤ t (nats/token): mean and t-CI over seeds. < 0: the true
                           future lowers the loss.
and, for the variants whose pool sees the future (asrun), the prefix-pool MISMATCH from the
runs table (eval.json, held-out set):
  loss_full_*, loss_prefix_*   heldout_loss as run and with the pool restricted to the prefix;
  leak_*                   their paired difference full − prefix per seed (the older "leak" number,
                           kept under its column names; it mixes the leak with the mismatch of
                           running a whole-window model under a pool it was never trained with).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ncn.analysis import options, tables
from ncn.analysis.macros import fmt_fixed, fmt_sig, row
from ncn.analysis.runs import largest_size, load_runs_table, per_seed, sizes_by_scale
from ncn.analysis.stats import paired_differences, t_interval
from ncn.errors import NCNError
from ncn.variants import order, spec

COLUMNS = ["variant", "size", "n_seeds", "max_abs_dlogit_past", "benefit_mean", "benefit_ci_low", "benefit_ci_high",
           "benefit_per_seed", "loss_full_mean", "loss_full_ci_low", "loss_full_ci_high", "loss_prefix_mean",
           "loss_prefix_ci_low", "loss_prefix_ci_high", "leak_mean", "leak_ci_low", "leak_ci_high", "leak_per_seed"]
NAN = math.nan


def _mismatch(runs: pd.DataFrame, variant: str, size: str, conf: float) -> dict:
    full = per_seed(runs, variant, size, "heldout_loss")
    prefix = per_seed(runs, variant, size, "heldout_loss_prefix_pool")
    seeds, d = paired_differences(full, prefix)
    if not seeds:
        return {}
    iv, fi, pi = t_interval(d, conf), t_interval([full[s] for s in seeds], conf), t_interval([prefix[s] for s in seeds], conf)
    return {"loss_full_mean": fi.mean, "loss_full_ci_low": fi.low, "loss_full_ci_high": fi.high,
            "loss_prefix_mean": pi.mean, "loss_prefix_ci_low": pi.low, "loss_prefix_ci_high": pi.high,
            "leak_mean": iv.mean, "leak_ci_low": iv.low, "leak_ci_high": iv.high,
            "leak_per_seed": " ".join(f"{x:.6g}" for x in d)}


def leak_table(runs: pd.DataFrame, measure: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    conf = cfg["analysis"]["confidence"]
    variants = sorted(set(measure["variant"]) if len(measure) else set(), key=order)
    variants += [v for v in cfg["variants"] if spec(v).sees_future and v not in variants]
    rows = []
    for v in variants:
        for size in sizes_by_scale(cfg):
            m = measure[(measure["variant"] == v) & (measure["size"] == size)] if len(measure) else measure
            out = {"variant": v, "size": size, "n_seeds": len(m)}
            if len(m):
                b = t_interval(m["benefit"].to_numpy(dtype=float), conf)
                out.update(max_abs_dlogit_past=float(m["max_abs_dlogit_past"].max()), benefit_mean=b.mean,
                           benefit_ci_low=b.low, benefit_ci_high=b.high,
                           benefit_per_seed=" ".join(f"{x:.6g}" for x in m["benefit"]))
            if spec(v).sees_future:
                out.update(_mismatch(runs, v, size, conf))
            if len(m) or len(out) > 3:
                rows.append(out)
    return pd.DataFrame(rows, columns=COLUMNS)


def leak_tex(df: pd.DataFrame, confidence: float) -> str:
    pct = f"{round(confidence * 100)}\\%"
    header = ["Variant", "Size", "Seeds", r"max $|\Delta\mathrm{logit}|$, past", f"Benefit [{pct} CI]",
              "Loss, full pool", "Loss, prefix pool", f"Mismatch, full $-$ prefix [{pct} CI]"]
    rows = []
    for r in df.itertuples(index=False):
        rows.append([tables.escape(r.variant), tables.escape(r.size), str(int(r.n_seeds)),
                     _structural(r.max_abs_dlogit_past),
                     _with_ci(r.benefit_mean, r.benefit_ci_low, r.benefit_ci_high),
                     tables.pm(r.loss_full_mean, r.loss_full_ci_low, r.loss_full_ci_high, 4),
                     tables.pm(r.loss_prefix_mean, r.loss_prefix_ci_low, r.loss_prefix_ci_high, 4),
                     _with_ci(r.leak_mean, r.leak_ci_low, r.leak_ci_high)])
    if not rows:
        rows = [["--", "--", "0", "--", "--", "--", "--", "no NCN runs"]]
    return tables.booktabs(header, rows, "llrrlrrl", tables.group_breaks(list(df["variant"])))


def _structural(x) -> str:
    if tables.is_missing(x):
        return "--"
    return "$0$" if x == 0 else tables.sci(x, 2)


def _with_ci(mean, low, high) -> str:
    s = tables.num(mean, 4)
    if not tables.is_missing(low):
        s += " " + tables.ci(low, high, 4)
    return s


def add_arguments(p) -> None:
    options.add_runs_table(p)
    p.add_argument("--measure", help="the leak measurements (results/tables/leak_measure.csv, from 'ncn analyze "
                   "leakprobe'); without it, only the prefix-pool mismatch")
    options.add_config(p)
    options.add_table(p)


def main(args, cfg: dict) -> None:
    if args.measure and not Path(args.measure).exists():
        raise NCNError(f"{args.measure} not found: run 'ncn analyze leakprobe' first")
    df = leak_table(load_runs_table(args.runs_table), tables.read_table(args.measure), cfg)
    tables.write_csv(df, args.csv)
    tables.write_tex(args.tex, leak_tex(df, cfg["analysis"]["confidence"]))


def numbers(leak: pd.DataFrame, cfg: dict) -> dict:
    """The prose's macros of the leak table at the largest size: asrun's benefit and mismatch, and
    the structural measurement of asrun and of "the NCN"."""
    from ncn.analysis.runs import primary_ncn

    size = largest_size(cfg)
    r = row(leak, variant="asrun", size=size) if "variant" in leak else row(leak, size=size)
    p = row(leak, variant=primary_ncn(cfg), size=size) if "variant" in leak else {}
    return {"the leak of asrun, largest size: structural max|dlogit|, benefit of the true future, "
            "prefix-pool mismatch (full - prefix pooling)": {
        "LeakLossFull": fmt_fixed(r.get("loss_full_mean"), 3),
        "LeakLossPrefix": fmt_fixed(r.get("loss_prefix_mean"), 3),
        "LeakGap": fmt_fixed(r.get("leak_mean"), 3),
        "LeakGapCILow": fmt_fixed(r.get("leak_ci_low"), 3),
        "LeakGapCIHigh": fmt_fixed(r.get("leak_ci_high"), 3),
        "LeakBenefit": fmt_fixed(r.get("benefit_mean"), 3),
        "LeakBenefitCILow": fmt_fixed(r.get("benefit_ci_low"), 3),
        "LeakBenefitCIHigh": fmt_fixed(r.get("benefit_ci_high"), 3),
        "LeakStructural": fmt_sig(r.get("max_abs_dlogit_past")),
        "LeakStructuralNCN": fmt_sig(p.get("max_abs_dlogit_past")),
    }}
