"""The future-token leak of "asrun": its pool sees the whole window, the future included.

`ncn evaluate` measures asrun twice: val_loss (as it ran, full-window pool) and
val_loss_prefix_pool (the same weights, pool restricted to the prefix). Per seed
leak = val_loss − val_loss_prefix_pool (nats/token); < 0 means the future information lowers
the loss, i.e. the reported loss is optimistic by |leak|. One row per size: mean and t-CI.
"""

from __future__ import annotations

import pandas as pd

from ncn.analysis import options, tables
from ncn.analysis.macros import fmt_fixed, row
from ncn.analysis.runs import largest_size, load_runs_table, per_seed, sizes_by_scale
from ncn.analysis.stats import paired_differences, t_interval


def leak_table(runs: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    conf = cfg["analysis"]["confidence"]
    rows = []
    for size in sizes_by_scale(cfg):
        full = per_seed(runs, "asrun", size, "val_loss")
        prefix = per_seed(runs, "asrun", size, "val_loss_prefix_pool")
        if not full:
            continue
        seeds, d = paired_differences(full, prefix)
        iv = t_interval(d, conf)
        fi = t_interval([full[s] for s in seeds], conf)
        pi = t_interval([prefix[s] for s in seeds], conf)
        rows.append({"variant": "asrun", "size": size, "n_seeds": len(seeds),
                     "loss_full_mean": fi.mean, "loss_full_ci_low": fi.low, "loss_full_ci_high": fi.high,
                     "loss_prefix_mean": pi.mean, "loss_prefix_ci_low": pi.low, "loss_prefix_ci_high": pi.high,
                     "leak_mean": iv.mean, "leak_ci_low": iv.low, "leak_ci_high": iv.high,
                     "leak_per_seed": " ".join(f"{x:.6g}" for x in d)})
    cols = ["variant", "size", "n_seeds", "loss_full_mean", "loss_full_ci_low", "loss_full_ci_high",
            "loss_prefix_mean", "loss_prefix_ci_low", "loss_prefix_ci_high", "leak_mean", "leak_ci_low",
            "leak_ci_high", "leak_per_seed"]
    return pd.DataFrame(rows, columns=cols)


def leak_tex(df: pd.DataFrame, confidence: float) -> str:
    pct = f"{round(confidence * 100)}\\%"
    header = ["Size", "Seeds", "Loss, full pool", "Loss, prefix pool", f"Leak (full $-$ prefix) [{pct} CI]"]
    rows = []
    for r in df.itertuples(index=False):
        leak = tables.num(r.leak_mean, 4)
        if not tables.is_missing(r.leak_ci_low):
            leak += " " + tables.ci(r.leak_ci_low, r.leak_ci_high, 4)
        rows.append([tables.escape(r.size), str(int(r.n_seeds)),
                     tables.pm(r.loss_full_mean, r.loss_full_ci_low, r.loss_full_ci_high, 4),
                     tables.pm(r.loss_prefix_mean, r.loss_prefix_ci_low, r.loss_prefix_ci_high, 4), leak])
    if not rows:
        rows = [["--", "0", "--", "--", "no asrun runs"]]
    return tables.booktabs(header, rows, "lrrrl")


def add_arguments(p) -> None:
    options.add_runs_table(p)
    options.add_config(p)
    options.add_table(p)


def main(args, cfg: dict) -> None:
    df = leak_table(load_runs_table(args.runs_table), cfg)
    tables.write_csv(df, args.csv)
    tables.write_tex(args.tex, leak_tex(df, cfg["analysis"]["confidence"]))


def numbers(leak: pd.DataFrame, cfg: dict) -> dict:
    """The prose's macros of the leak table: asrun at the largest size."""
    r = row(leak, size=largest_size(cfg))
    return {"the future-token leak of asrun, largest size: val loss full - prefix-only pooling (negative: it leaks)": {
        "LeakLossFull": fmt_fixed(r.get("loss_full_mean"), 3),
        "LeakLossPrefix": fmt_fixed(r.get("loss_prefix_mean"), 3),
        "LeakGap": fmt_fixed(r.get("leak_mean"), 3),
        "LeakGapCILow": fmt_fixed(r.get("leak_ci_low"), 3),
        "LeakGapCIHigh": fmt_fixed(r.get("leak_ci_high"), 3),
    }}
