"""The iso-parameter A/B: every variant against the baseline ("none"), per size, paired by seed.

For each (size, variant): validation loss, PPL and bits-per-byte as mean ± t-CI over seeds;
for each NCN variant the paired difference to the baseline on the same seed (same data, same
order): Δloss, ΔPPL, Δbpb with their t-CIs, and a direction read off the ΔPPL CI
(better / worse / no significant difference; inconclusive with fewer than 2 paired seeds).
"""

from __future__ import annotations

import math

import pandas as pd

from ncn.analysis import plots, tables
from ncn.analysis.runs import per_seed, read_train_log, sizes_by_scale
from ncn.analysis.stats import ab_verdict, paired_differences, t_interval
from ncn.variants import baseline

METRICS = (("val_loss", "loss"), ("val_ppl", "ppl"), ("val_bpb", "bpb"))


def ab_table(runs: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    conf = cfg["analysis"]["confidence"]
    base = baseline()
    rows = []
    for size in sizes_by_scale(cfg):
        for variant in cfg["variants"]:
            sub = runs[(runs["variant"] == variant) & (runs["size"] == size)]
            if sub.empty:
                continue
            row = {"size": size, "variant": variant, "n_seeds": len(sub)}
            for col in ("n_params", "n_params_non_embedding"):
                row[col] = float(sub[col].iloc[0]) if col in sub else math.nan
            for col, short in METRICS:
                iv = t_interval(per_seed(runs, variant, size, col).values(), conf)
                row |= {f"{short}_mean": iv.mean, f"{short}_ci_low": iv.low, f"{short}_ci_high": iv.high}
            n_pairs = 0
            for col, short in METRICS:
                if variant == base:
                    iv = t_interval([], conf)
                else:
                    seeds, d = paired_differences(per_seed(runs, variant, size, col), per_seed(runs, base, size, col))
                    iv = t_interval(d, conf)
                    n_pairs = max(n_pairs, len(seeds))
                row |= {f"d{short}_mean": iv.mean, f"d{short}_ci_low": iv.low, f"d{short}_ci_high": iv.high}
            row["n_pairs"] = n_pairs
            row["verdict"] = "baseline" if variant == base else (
                "no baseline" if n_pairs == 0 else ab_verdict(row["dppl_ci_low"], row["dppl_ci_high"]))
            rows.append(row)
    return pd.DataFrame(rows)


def ab_tex(ab: pd.DataFrame, confidence: float) -> str:
    pct = f"{round(confidence * 100)}\\%"
    header = ["Size", "Variant", "Params", "Val loss", "PPL", "bpb", f"$\\Delta$PPL [{pct} CI]", "Seeds", "Verdict"]
    rows, base = [], baseline()
    for r in ab.itertuples(index=False):
        dppl = "--" if r.variant == base else (
            tables.num(r.dppl_mean, 3) + (" " + tables.ci(r.dppl_ci_low, r.dppl_ci_high, 3)
                                          if not tables.is_missing(r.dppl_ci_low) else ""))
        rows.append([
            tables.escape(r.size), tables.escape(r.variant), tables.sci(r.n_params, 2),
            tables.pm(r.loss_mean, r.loss_ci_low, r.loss_ci_high, 3),
            tables.pm(r.ppl_mean, r.ppl_ci_low, r.ppl_ci_high, 2),
            tables.pm(r.bpb_mean, r.bpb_ci_low, r.bpb_ci_high, 3),
            dppl, str(int(r.n_seeds)), tables.escape(r.verdict),
        ])
    return tables.booktabs(header, rows, "llrrrrlrl", tables.group_breaks(list(ab["size"])))


def loss_curves(runs: pd.DataFrame, cfg: dict, stem) -> None:
    """Training cross-entropy vs tokens, one panel per size: mean over seeds, band = min–max."""
    plots.setup()
    import matplotlib.pyplot as plt

    sizes = [s for s in sizes_by_scale(cfg) if (runs["size"] == s).any()]
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(4.2 * max(1, len(sizes)), 3.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for variant in cfg["variants"]:
            sub = runs[(runs["variant"] == variant) & (runs["size"] == size)]
            if sub.empty:
                continue
            logs = []
            for run_dir, seed in zip(sub["run_dir"], sub["seed"]):
                log = read_train_log(run_dir)[["tokens", "ce"]].dropna()
                logs.append(log.assign(seed=int(seed)))
            curve = pd.concat(logs).groupby("tokens")["ce"].agg(["mean", "min", "max", "count"]).reset_index()
            color = plots.variant_colour(variant)
            ax.plot(curve["tokens"], curve["mean"], color=color, lw=1.2,
                    label=f"{plots.variant_label(variant)} (n={len(sub)})")
            if len(sub) > 1:
                ax.fill_between(curve["tokens"], curve["min"], curve["max"], color=color, alpha=0.2, lw=0)
        ax.set_title(f"size {size}")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("training cross-entropy (nats/token)")
    if sizes:
        axes[0][0].legend(fontsize=7, frameon=False)
    fig.suptitle("Loss curves: mean over seeds, band = min–max across seeds", fontsize=9)
    plots.save(fig, stem)


def run(runs: pd.DataFrame, cfg: dict, tables_dir, figures_dir) -> pd.DataFrame:
    ab = ab_table(runs, cfg)
    tables.write_csv(ab, f"{tables_dir}/ab.csv")
    tables.write_tex(f"{tables_dir}/ab.tex", ab_tex(ab, cfg["analysis"]["confidence"]))
    loss_curves(runs, cfg, f"{figures_dir}/loss_curves")
    return ab

