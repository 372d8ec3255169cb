"""Scaling: held-out loss vs non-embedding parameters per variant, across sizes.

The loss is the A/B's (ab.AB_SET: the held-out tail of the train excerpt, in the train format).

Per variant a power law loss ≈ a · N^b is fitted by least squares on logs
(np.polyfit(log N, log loss, 1)) over the per-size mean losses; with fewer than two sizes
there is no fit (NaN, and `fit_note` says so). The NCN–baseline gap per size is the paired
(by seed) difference loss(variant) − loss(none) with its t-CI.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ncn.analysis import options, plots, tables
from ncn.analysis.ab import AB_SET
from ncn.analysis.runs import load_runs_table, per_seed, sizes_by_scale
from ncn.analysis.stats import paired_differences, t_interval
from ncn.variants import baseline


def fit_power_law(n_params, losses) -> tuple[float, float]:
    """(a, b) of loss = a · N^b; (nan, nan) with fewer than two distinct N."""
    n = np.asarray(n_params, dtype=float)
    y = np.asarray(losses, dtype=float)
    ok = np.isfinite(n) & np.isfinite(y) & (n > 0) & (y > 0)
    if len(np.unique(n[ok])) < 2:
        return math.nan, math.nan
    b, log_a = np.polyfit(np.log(n[ok]), np.log(y[ok]), 1)
    return float(math.exp(log_a)), float(b)


def scaling_table(runs: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    conf = cfg["analysis"]["confidence"]
    base = baseline()
    rows = []
    for variant in cfg["variants"]:
        for size in sizes_by_scale(cfg):
            sub = runs[(runs["variant"] == variant) & (runs["size"] == size)]
            if sub.empty:
                continue
            loss = per_seed(runs, variant, size, f"{AB_SET}_loss")
            iv = t_interval(loss.values(), conf)
            if variant == base:
                gap = t_interval([], conf)
            else:
                _, d = paired_differences(loss, per_seed(runs, base, size, f"{AB_SET}_loss"))
                gap = t_interval(d, conf)
            rows.append({"variant": variant, "size": size, "n_seeds": len(sub),
                         "n_params_non_embedding": float(sub["n_params_non_embedding"].mean()),
                         "n_params": float(sub["n_params"].mean()),
                         "loss_mean": iv.mean, "loss_ci_low": iv.low, "loss_ci_high": iv.high,
                         "gap_mean": gap.mean, "gap_ci_low": gap.low, "gap_ci_high": gap.high})
    df = pd.DataFrame(rows)
    fits = {}
    for variant, sub in df.groupby("variant", sort=False):
        fits[variant] = fit_power_law(sub["n_params_non_embedding"], sub["loss_mean"])
    df["fit_coef"] = df["variant"].map(lambda v: fits[v][0])
    df["fit_exponent"] = df["variant"].map(lambda v: fits[v][1])
    df["fit_note"] = df["variant"].map(
        lambda v: "fit: loss = coef * N^exponent (N = non-embedding params)" if math.isfinite(fits[v][1])
        else "no fit: fewer than 2 sizes")
    return df


def scaling_tex(df: pd.DataFrame) -> str:
    header = ["Variant", "Size", "Non-emb. params", "Held-out loss", r"Gap vs baseline", "Fit exponent"]
    rows, base = [], baseline()
    for r in df.itertuples(index=False):
        gap = "--" if r.variant == base else tables.pm(r.gap_mean, r.gap_ci_low, r.gap_ci_high, 4)
        rows.append([tables.escape(r.variant), tables.escape(r.size), tables.sci(r.n_params_non_embedding, 2),
                     tables.pm(r.loss_mean, r.loss_ci_low, r.loss_ci_high, 3), gap, tables.num(r.fit_exponent, 3)])
    return tables.booktabs(header, rows, "llrrrr", tables.group_breaks(list(df["variant"])))


def scaling_figure(df: pd.DataFrame, pdf, png) -> None:
    import matplotlib.pyplot as plt

    plots.setup()
    fig, axes = plt.subplots(1, 2, figsize=(plots.TEXT_WIDTH_IN, 2.8))
    ax, gx = axes
    base = baseline()
    for variant, sub in df.groupby("variant", sort=False):
        c = plots.variant_colour(variant)
        n = sub["n_params_non_embedding"].to_numpy()
        m = sub["loss_mean"].to_numpy()
        err = np.nan_to_num(np.vstack([m - sub["loss_ci_low"], sub["loss_ci_high"] - m]), nan=0.0)
        ax.errorbar(n, m, yerr=err, fmt="o", color=c, ms=4, capsize=2, label=variant)
        coef, expo = sub["fit_coef"].iloc[0], sub["fit_exponent"].iloc[0]
        if math.isfinite(expo):
            grid = np.geomspace(n.min(), n.max(), 50)
            ax.plot(grid, coef * grid**expo, "-", color=c, lw=1, alpha=0.8)
        if variant != base:
            g = sub["gap_mean"].to_numpy()
            gerr = np.nan_to_num(np.vstack([g - sub["gap_ci_low"], sub["gap_ci_high"] - g]), nan=0.0)
            gx.errorbar(n, g, yerr=gerr, fmt="o-", color=c, ms=4, capsize=2, label=variant)
    from matplotlib.ticker import FormatStrFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.yaxis,):  # a narrow log range: plain decimals, not 3 × 10^0
        axis.set_major_formatter(FormatStrFormatter("%.2f"))
        axis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.set_xlabel("non-embedding parameters")
    plots.count_axis(ax.xaxis)
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("loss vs size (lines: power-law fits)")
    ax.legend(frameon=False)
    gx.axhline(0.0, color="0.5", lw=0.8, ls="--")
    gx.set_xscale("log")
    gx.set_xlabel("non-embedding parameters")
    plots.count_axis(gx.xaxis)
    gx.set_ylabel("held-out loss − baseline (paired by seed)")
    gx.set_title("NCN – baseline gap (< 0: NCN better)")
    if gx.get_legend_handles_labels()[0]:
        gx.legend(frameon=False)
    options.save_figure(fig, pdf, png)


def add_arguments(p) -> None:
    options.add_runs_table(p)
    options.add_config(p)
    options.add_table(p)
    options.add_figure(p, what="loss vs parameters and the NCN-baseline gap")


def main(args, cfg: dict) -> None:
    df = scaling_table(load_runs_table(args.runs_table), cfg)
    tables.write_csv(df, args.csv)
    tables.write_tex(args.tex, scaling_tex(df))
    scaling_figure(df, args.pdf, args.png)
