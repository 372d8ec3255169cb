"""The iso-parameter A/B: every variant against the baseline ("none"), per size, paired by seed.

For each (size, variant): validation loss, PPL and bits-per-byte as mean ± t-CI over seeds;
for each NCN variant the paired difference to the baseline on the same seed (same data, same
order): Δloss, ΔPPL, Δbpb with their t-CIs, and a direction read off the ΔPPL CI
(better / worse / no significant difference; inconclusive with fewer than 2 paired seeds).
"""

from __future__ import annotations

import math

import pandas as pd

from ncn.analysis import options, plots, tables
from ncn.analysis.macros import Macros, fmt_fixed, fmt_int, fmt_sig, half_width, macro_name, row
from ncn.analysis.runs import largest_size, load_runs_table, per_seed, read_train_log, sizes_by_scale
from ncn.analysis.stats import ab_verdict, paired_differences, t_interval
from ncn.variants import baseline, names, ncn_names

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


def loss_curves(runs: pd.DataFrame, cfg: dict, pdf, png) -> None:
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
    options.save_figure(fig, pdf, png)


def add_arguments(p) -> None:
    options.add_runs_table(p)
    options.add_config(p)
    options.add_table(p)
    options.add_figure(p, what="the loss curves")


def main(args, cfg: dict) -> None:
    runs = load_runs_table(args.runs_table)
    ab = ab_table(runs, cfg)
    tables.write_csv(ab, args.csv)
    tables.write_tex(args.tex, ab_tex(ab, cfg["analysis"]["confidence"]))
    loss_curves(runs, cfg, args.pdf, args.png)


def numbers(ab: pd.DataFrame, cfg: dict) -> dict:
    """The prose's macros of the A/B table: each variant's validation metrics per size, and at the
    largest size with their ± half-widths and the paired differences to the baseline."""
    conf, largest = float(cfg["analysis"]["confidence"]), largest_size(cfg)
    metrics = (("loss", "ValLoss", 3), ("ppl", "ValPPL", 2), ("bpb", "ValBPB", 3))
    values = Macros()
    for size in cfg["sizes"]:
        for variant in names():
            r = row(ab, size=size, variant=variant)
            for short, stem, dec in metrics:
                values[macro_name("size", size, stem, variant)] = fmt_fixed(r.get(f"{short}_mean"), dec)
    for variant in names():
        r = row(ab, size=largest, variant=variant)
        for short, stem, dec in metrics:
            values[macro_name(stem, variant, "largest")] = fmt_fixed(r.get(f"{short}_mean"), dec)
            values[macro_name(stem, variant, "largest", "PM")] = fmt_fixed(half_width(r, f"{short}_"), dec)
    deltas = Macros()
    for variant in ncn_names():
        r = row(ab, size=largest, variant=variant)
        for short, stem, dec in (("ppl", "DeltaPPL", 2), ("loss", "DeltaLoss", 3), ("bpb", "DeltaBPB", 3)):
            deltas[macro_name(stem, variant, "largest")] = fmt_fixed(r.get(f"d{short}_mean"), dec)
            deltas[macro_name(stem, variant, "largest", "CILow")] = fmt_fixed(r.get(f"d{short}_ci_low"), dec)
            deltas[macro_name(stem, variant, "largest", "CIHigh")] = fmt_fixed(r.get(f"d{short}_ci_high"), dec)
            deltas[macro_name(stem, variant, "largest", "N")] = fmt_int(r.get("n_pairs", 0))
    return {f"validation metrics, mean over seeds (PM = half-width of the {fmt_sig(100 * conf)}% t-interval)": values,
            "variant - baseline, paired by seed, largest size (negative: the variant is better)": deltas}
