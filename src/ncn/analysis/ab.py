"""The iso-parameter A/B, per size, paired by seed, on the held-out tail.

Every variant, the baseline included, is matched to one reference parameter count
(config.model_config), so each contrast compares models of one size. The A/B reads AB_SET, the
held-out tail of the train excerpt (eval.json heldout_*: in the train format, never trained on).

Rows of ab.csv, per size (`contrasts`, from the registry's flags):
  * the baseline: its held-out loss, PPL and bpb, mean and t-CI over seeds;
  * every NCN variant: the same, and its paired difference to the baseline (kind "vs baseline");
  * the primary NCN minus the context-free variant (static, kind "context": does context matter?)
    and minus the order-blind one (tonic, kind "order": does order matter?);
  * the future-seeing variant (asrun) scored with its pool restricted to the prefix, minus the
    baseline (kind "without the future": what the original's model does without the future).
The primary statistic is Δloss = loss(a) − loss(b) in nats per token, per seed (negative: a is
better); ΔPPL and Δbpb are derived per seed. Each contrast has a two-sided paired t-test; Holm's
step-down correction runs over the family of every contrast at every size, and the verdict
("better", "worse", "no significant difference"; "inconclusive" with fewer than 2 pairs) reads
the Holm-adjusted p at α = 1 − confidence. With it: the half-width of the t-CI of Δloss and the
minimum detectable effect (MDE): the |Δloss| the paired t-test at α detects with 80% power at
the measured SD of the differences (`mde_loss`; `mde_loss_family` at α/m, Holm's first step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ncn.analysis import options, plots, tables
from ncn.analysis.macros import (Macros, fmt_fixed, fmt_int, fmt_list, fmt_sig, half_width, macro_name, row,
                                 tex_escape)
from ncn.analysis.runs import largest_size, load_runs_table, per_seed, read_train_log, sizes_by_scale
from ncn.analysis.stats import holm, holm_verdict, mde_paired, paired_differences, paired_t_p, t_interval
from ncn.variants import baseline, names, ncn_names, primary, spec

AB_SET = "heldout"  # the eval.json prefix the A/B reads: the held-out tail, in the train format
AB_SET_WORDS = "held-out tail of the training excerpt"
POWER = 0.8
SHORTS = ("loss", "ppl", "bpb")
_CI = ("mean", "ci_low", "ci_high")
COLUMNS = ["size", "variant", "contrast", "kind", "versus", "n_seeds", "n_params", "n_params_non_embedding",
           *(f"{m}_{c}" for m in SHORTS for c in _CI), *(f"d{m}_{c}" for m in SHORTS for c in _CI),
           "dloss_half", "dloss_sd", "n_pairs", "p", "p_holm", "family_size", "mde_loss", "mde_loss_family",
           "verdict", "dloss_per_seed"]


@dataclass(frozen=True)
class Contrast:
    """a − b, paired by seed; prefix_pool: a is scored with its pool restricted to the prefix."""

    a: str
    b: str
    kind: str
    prefix_pool: bool = False

    @property
    def label(self) -> str:
        return f"{self.a}{' (prefix pool)' if self.prefix_pool else ''} - {self.b}"

    @property
    def key(self) -> tuple:
        """Macro name parts: DeltaLoss<A>[Prefix]Vs<B>Largest."""
        return (self.a, "prefix" if self.prefix_pool else "", "vs", self.b)


def contrasts(variants) -> list[Contrast]:
    """The A/B family of one size, from the variants' flags: every NCN variant vs the baseline;
    the primary NCN vs the context-free (static) and the order-blind (a prefix pool without
    positions) variants; a future-seeing variant with a prefix pool vs the baseline."""
    base, first = baseline(), primary(variants)
    ncn = ncn_names(variants)
    out = [Contrast(v, base, "vs baseline") for v in ncn] if base in variants else []
    for v in ncn if first else ():
        sp = spec(v)
        if v != first and sp.static:
            out.append(Contrast(first, v, "context"))
        elif v != first and sp.pool == "prefix" and not sp.positions:
            out.append(Contrast(first, v, "order"))
    out += [Contrast(v, base, "without the future", True) for v in ncn if spec(v).sees_future and base in variants]
    return out


def metric_per_seed(runs: pd.DataFrame, variant: str, size: str, short: str, prefix_pool: bool = False) -> dict:
    """{seed: held-out loss | PPL | bpb} of one (variant, size); with prefix_pool the loss of the
    prefix-restricted pool, its PPL exp(loss) and bpb loss · (bpb / loss of the same run)."""
    if not prefix_pool:
        return per_seed(runs, variant, size, f"{AB_SET}_{short}")
    loss = per_seed(runs, variant, size, f"{AB_SET}_loss_prefix_pool")
    if short == "loss":
        return loss
    if short == "ppl":
        return {s: math.exp(x) for s, x in loss.items()}
    plain, bpb = per_seed(runs, variant, size, f"{AB_SET}_loss"), per_seed(runs, variant, size, f"{AB_SET}_bpb")
    return {s: x * bpb[s] / plain[s] for s, x in loss.items() if s in bpb and plain.get(s)}


def _absolute(runs, variant, size, conf, prefix_pool=False) -> dict:
    out = {}
    for short in SHORTS:
        iv = t_interval(metric_per_seed(runs, variant, size, short, prefix_pool).values(), conf)
        out |= {f"{short}_mean": iv.mean, f"{short}_ci_low": iv.low, f"{short}_ci_high": iv.high}
    return out


def _paired(runs, c: Contrast, size, conf) -> dict:
    """The paired differences a − b of one contrast: Δ mean/CI per metric, p, n, SD, MDE."""
    out = {}
    for short in SHORTS:
        seeds, d = paired_differences(metric_per_seed(runs, c.a, size, short, c.prefix_pool),
                                      metric_per_seed(runs, c.b, size, short))
        iv = t_interval(d, conf)
        out |= {f"d{short}_mean": iv.mean, f"d{short}_ci_low": iv.low, f"d{short}_ci_high": iv.high}
        if short == "loss":
            alpha = 1 - conf
            out |= {"n_pairs": len(seeds), "dloss_sd": iv.sd, "dloss_half": iv.half, "p": paired_t_p(d),
                    "mde_loss": mde_paired(iv.sd, len(seeds), alpha, POWER),
                    "dloss_per_seed": " ".join(f"{x:.6g}" for x in d)}
    return out


def _variant_row(runs, size, variant, cfg) -> dict | None:
    sub = runs[(runs["variant"] == variant) & (runs["size"] == size)]
    if sub.empty:
        return None
    r = {"size": size, "variant": variant, "contrast": variant, "kind": "baseline", "versus": "",
         "n_seeds": len(sub)}
    for col in ("n_params", "n_params_non_embedding"):
        r[col] = float(sub[col].iloc[0]) if col in sub else math.nan
    return r | _absolute(runs, variant, size, cfg["analysis"]["confidence"])


def ab_table(runs: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One row per variant and per contrast of every size (module docstring), Holm over them all."""
    conf, rows = cfg["analysis"]["confidence"], []
    family = contrasts(cfg["variants"])
    for size in sizes_by_scale(cfg):
        base_row = _variant_row(runs, size, baseline(), cfg)
        rows += [base_row] if base_row else []
        for c in family:
            r = _variant_row(runs, size, c.a, cfg) if c.kind == "vs baseline" else None
            if c.kind == "vs baseline" and r is None:
                continue
            if r is None:
                sub = runs[(runs["variant"] == c.a) & (runs["size"] == size)]
                r = {"size": size, "variant": c.a, "n_seeds": len(sub)}
                if c.prefix_pool:
                    r |= _absolute(runs, c.a, size, conf, prefix_pool=True)
            rows.append(r | {"contrast": c.label, "kind": c.kind, "versus": c.b} | _paired(runs, c, size, conf))
    return _with_holm(rows, 1 - conf)


def _with_holm(rows: list[dict], alpha: float) -> pd.DataFrame:
    """The table, with Holm's adjusted p over every tested row, the family-level MDE and verdicts."""
    ab = pd.DataFrame(rows, columns=COLUMNS)
    tested = (ab["kind"] != "baseline").to_numpy()
    ab.loc[tested, "p_holm"] = holm(ab.loc[tested, "p"])
    m = int(np.isfinite(ab.loc[tested, "p"].astype(float)).sum())
    ab["family_size"] = m
    ab["mde_loss_family"] = [mde_paired(sd, int(n), alpha / m, POWER) if t and m else math.nan
                             for t, sd, n in zip(tested, ab["dloss_sd"], ab["n_pairs"].fillna(0))]
    ab["verdict"] = ["baseline" if not t else "no pairs" if not n else holm_verdict(d, p, alpha)
                     for t, n, d, p in zip(tested, ab["n_pairs"].fillna(0), ab["dloss_mean"], ab["p_holm"])]
    return ab


def ab_tex(ab: pd.DataFrame, confidence: float) -> str:
    pct = f"{round(confidence * 100)}\\%"
    header = ["Size", "Variant / contrast", "Params", "Loss", "PPL", f"$\\Delta$loss $\\pm$ {pct} CI",
              "$\\Delta$PPL", "MDE", "$p_\\mathrm{Holm}$", "$n$", "Verdict"]
    rows = []
    for r in ab.itertuples(index=False):
        tested = r.kind != "baseline"
        absolute = r.kind in ("baseline", "vs baseline", "without the future")  # the a side's own metrics
        rows.append([
            tables.escape(r.size), tables.escape(r.contrast if tested else f"{r.variant} (baseline)"),
            tables.sci(r.n_params, 2) if r.kind in ("baseline", "vs baseline") else "",
            tables.pm(r.loss_mean, r.loss_ci_low, r.loss_ci_high, 3) if absolute else "",
            tables.pm(r.ppl_mean, r.ppl_ci_low, r.ppl_ci_high, 2) if absolute else "",
            tables.pm(r.dloss_mean, r.dloss_ci_low, r.dloss_ci_high, 4) if tested else "--",
            tables.num(r.dppl_mean, 2) if tested else "--",
            tables.num(r.mde_loss, 4) if tested else "--",
            tables.num(r.p_holm, 3) if tested else "--",
            str(int(r.n_pairs)) if tested else str(int(r.n_seeds)),
            tables.escape(r.verdict),
        ])
    return tables.booktabs(header, rows, "llrrrrrrrrl", tables.group_breaks(list(ab["size"])))


def loss_curves(runs: pd.DataFrame, cfg: dict, pdf, png) -> None:
    """Training cross-entropy vs tokens, one panel per size: mean over seeds, band = min–max."""
    plots.setup()
    import matplotlib.pyplot as plt

    sizes = [s for s in sizes_by_scale(cfg) if (runs["size"] == s).any()]
    fig, axes = plt.subplots(1, max(1, len(sizes)), figsize=(plots.TEXT_WIDTH_IN, 2.6), squeeze=False, sharey=True)
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
        plots.count_axis(ax.xaxis)
    axes[0][0].set_ylabel("training cross-entropy (nats/token)")
    if sizes:
        axes[0][0].legend(frameon=False)
    fig.suptitle("Loss curves: mean over seeds, band = min–max across seeds")
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
    """The prose's macros of the A/B table: each variant's held-out metrics per size, and at the
    largest size with their ± half-widths; every contrast at the largest size; the power per size."""
    conf, largest = float(cfg["analysis"]["confidence"]), largest_size(cfg)
    metrics = (("loss", "ValLoss", 3), ("ppl", "ValPPL", 2), ("bpb", "ValBPB", 3))
    values = Macros()
    for size in cfg["sizes"]:
        for variant in names():
            r = _variant_metrics(ab, size, variant)
            for short, stem, dec in metrics:
                values[macro_name("size", size, stem, variant)] = fmt_fixed(r.get(f"{short}_mean"), dec)
    for variant in names():
        r = _variant_metrics(ab, largest, variant)
        for short, stem, dec in metrics:
            values[macro_name(stem, variant, "largest")] = fmt_fixed(r.get(f"{short}_mean"), dec)
            values[macro_name(stem, variant, "largest", "PM")] = fmt_fixed(half_width(r, f"{short}_"), dec)
    return {f"held-out metrics, mean over seeds (PM = half-width of the {fmt_sig(100 * conf)}% t-interval)": values,
            "A/B contrasts a - b, paired by seed, largest size (negative: a is better); Holm over the family":
                _contrast_macros(ab, largest),
            "power per size: the primary NCN - baseline's CI half-width and MDE (80% power)": _power_macros(ab, cfg)}


def _variant_metrics(ab: pd.DataFrame, size: str, variant: str) -> dict:
    """A variant's own row: the baseline row, or its contrast with the baseline."""
    if ab.empty:
        return {}
    r = row(ab, size=size, variant=variant, kind="baseline")
    return r or row(ab, size=size, variant=variant, kind="vs baseline")


def _contrast_macros(ab: pd.DataFrame, size: str) -> Macros:
    """Per contrast of the whole registry (so the prose always compiles): Δloss, ΔPPL, Δbpb with CIs
    and N; Δloss's ± half-width, Holm p, MDE and verdict. The vs-baseline ones keep their short
    names, DeltaLoss<Variant>Largest; the others read DeltaLoss<A>[Prefix]Vs<B>Largest."""
    m = Macros()
    for c in contrasts(names()):
        r = row(ab, size=size, contrast=c.label) if not ab.empty else {}
        key = (c.a,) if c.kind == "vs baseline" else c.key
        for short, stem, dec in (("ppl", "DeltaPPL", 2), ("loss", "DeltaLoss", 3), ("bpb", "DeltaBPB", 3)):
            m[macro_name(stem, *key, "largest")] = fmt_fixed(r.get(f"d{short}_mean"), dec)
            m[macro_name(stem, *key, "largest", "CILow")] = fmt_fixed(r.get(f"d{short}_ci_low"), dec)
            m[macro_name(stem, *key, "largest", "CIHigh")] = fmt_fixed(r.get(f"d{short}_ci_high"), dec)
            m[macro_name(stem, *key, "largest", "N")] = fmt_int(r.get("n_pairs", 0))
        m[macro_name("DeltaLoss", *key, "largest", "PM")] = fmt_fixed(r.get("dloss_half"), 3)
        m[macro_name("DeltaLoss", *key, "largest", "MDE")] = fmt_fixed(r.get("mde_loss"), 3)
        m[macro_name("DeltaLoss", *key, "largest", "PHolm")] = fmt_sig(r.get("p_holm"), 2)
        m[macro_name("Verdict", *key, "largest")] = tex_escape(r.get("verdict", "n/a"))
    return m


def _power_macros(ab: pd.DataFrame, cfg: dict) -> Macros:
    """Per size (in order of scale) for the primary NCN − baseline: the half-width of Δloss's CI,
    the MDE at α and at Holm's first-step α/m, the pairs; as lists the prose can quote whole."""
    first, m = primary(cfg["variants"]), Macros()
    lines = {"HalfWidth": [], "MDE": [], "MDEFamily": []}
    for size in sizes_by_scale(cfg):
        r = row(ab, size=size, contrast=Contrast(first, baseline(), "").label) if first and not ab.empty else {}
        name = rf"\texttt{{{tex_escape(size)}}}"
        pairs = f" ({fmt_int(r.get('n_pairs', 0))} pairs)"
        lines["HalfWidth"].append(f"{name} $\\pm${fmt_fixed(r.get('dloss_half'), 3)}{pairs}")
        lines["MDE"].append(f"{name} {fmt_fixed(r.get('mde_loss'), 3)}")
        lines["MDEFamily"].append(f"{name} {fmt_fixed(r.get('mde_loss_family'), 3)}")
    m["DeltaLossHalfWidthBySize"] = fmt_list(lines["HalfWidth"])
    m["MDELossBySize"] = fmt_list(lines["MDE"])
    m["MDELossFamilyBySize"] = fmt_list(lines["MDEFamily"])
    m["MDEPowerPct"] = fmt_int(100 * POWER) + r"\%"
    m["HolmFamilySize"] = fmt_int(ab["family_size"].iloc[0]) if not ab.empty else "0"
    m["NumContrastsPerSize"] = fmt_int(len(contrasts(cfg["variants"])))
    m["ABSet"] = AB_SET_WORDS
    return m
