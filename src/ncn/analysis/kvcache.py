"""β-guided KV-cache compression: held-out Δloss of fake-quantised caches, per bit allocation.

For every run given (each variant at the largest size, every seed), the keys and values of
every layer are fake-quantised (ncn.kvquant: integers with a per-head, per-token fp16 scale,
or an fp16 cast) in a teacher-forced pass over the held-out split (analysis.heldout), capped at
analysis.kv_max_tokens tokens. Rows (column `policy`):

  fp32     the uncompressed reference (Δloss 0 by definition)
  uniform  every layer at analysis.kv_uniform_bits (and at every budget)
  beta     per budget B of analysis.kv_budgets: B ± analysis.kv_spread bits, the more bits to
           the half of the layers with the highest mean β on the scored tokens (kvquant.allocate)
  oracle   the same levels, the more bits to the layers whose measured Δloss is largest: layer
           l's Δloss is the loss with l at B − spread and every other layer at B + spread, minus
           the loss with all at B + spread (greedy on measured sensitivities)
  random   the same levels by analysis.kv_random_draws random rankings (seeded by the run's
           seed and B); the row is their mean
The baseline has no β: uniform rows only. bytes_per_token counts keys and values of every
layer and head with the scales (kvquant.bytes_per_token); at one budget every policy has the
same bytes.

The claim (origin "original, future work"): "at equal cache memory, β-guided allocation loses
less than uniform". Per seed of "the NCN" at the largest size: d = mean over budgets of
Δloss(beta) − Δloss(uniform); supported if the t-CI of d over seeds lies below 0. The oracle
and random differences to uniform are reported beside it as the bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ncn.analysis import options, tables
from ncn.analysis.stats import INCONCLUSIVE, ci_verdict, paired_differences, t_interval

POLICIES = ("uniform", "beta", "oracle", "random")
CLAIM_KEY = "kvcache_beta_guided"
CLAIM_TEXT = "At equal cache memory, beta-guided KV-cache bit allocation loses less than uniform"
CLAIM_ORIGIN = "original, future work"


def _row(model, payload, policy, budget, bits, loss, ref, tokens, draws=(), scores=()) -> dict:
    """One table row; `draws`: the random policy's allocations (bits then shows them all)."""
    from ncn.kvquant import bytes_per_token

    c = model.cfg
    hd = c.d_model // c.n_head
    bpt = bytes_per_token(bits, c.n_head, hd)
    shown = "|".join(" ".join(map(str, b)) for b in draws) if draws else " ".join(map(str, bits))
    return {"variant": c.ncn, "size": payload.get("size", ""), "seed": payload.get("seed", -1), "policy": policy,
            "budget_bits": budget, "bits": shown, "bytes_per_token": bpt,
            "bytes_ratio": bpt / bytes_per_token([32] * c.n_layer, c.n_head, hd),
            "loss": loss, "delta_loss": loss - ref, "tokens": tokens, "draws": max(1, len(draws)),
            "scores": " ".join(f"{s:.6g}" for s in scores)}


def _policy_rows(model, payload, a: dict, ref, loss_of) -> list[dict]:
    """beta, oracle and random rows at every budget (NCN variants only)."""
    from ncn.kvquant import allocate, levels

    n, spread, rows = model.cfg.n_layer, a["kv_spread"], []
    for budget in a["kv_budgets"]:
        lo, hi = levels(budget, spread)
        all_hi = loss_of([hi] * n)
        sens = [loss_of([lo if j == l else hi for j in range(n)]) - all_hi for l in range(n)]
        for policy, scores in (("beta", ref.beta_means), ("oracle", sens)):
            bits = allocate(scores, budget, spread)
            rows.append(_row(model, payload, policy, budget, bits, loss_of(bits), ref.loss, ref.tokens, scores=scores))
        rng = np.random.default_rng([int(payload.get("seed", 0)), int(budget)])
        draws = [allocate(list(rng.permutation(n)), budget, spread) for _ in range(a["kv_random_draws"])]
        loss = float(np.mean([loss_of(b) for b in draws]))
        rows.append(_row(model, payload, "random", budget, [budget] * n, loss, ref.loss, ref.tokens, draws=draws))
    return rows


def kvcache_table(run_dir, cfg: dict, data_dir, threads: int = 1) -> pd.DataFrame:
    from ncn.analysis.heldout import heldout_windows, score
    from ncn.analysis.trace import load_ncn_run
    from ncn.kvquant import set_fake_quant, uniform

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads, None)
    a, bs, n = cfg["analysis"], cfg["eval"]["batch_size"], model.cfg.n_layer
    x, y = heldout_windows(data_dir, meta, model.cfg.block_size, a["kv_max_tokens"])
    ref = score(model, x, y, bs)
    memo: dict[tuple, float] = {}

    def loss_of(bits) -> float:
        key = tuple(bits)
        if key not in memo:
            set_fake_quant(model, list(bits))
            try:
                memo[key] = score(model, x, y, bs).loss
            finally:
                set_fake_quant(model, None)
        return memo[key]

    rows = [_row(model, payload, "fp32", 32, [32] * n, ref.loss, ref.loss, ref.tokens)]
    for b in sorted(set(a["kv_uniform_bits"]) | set(a["kv_budgets"])):
        rows.append(_row(model, payload, "uniform", b, uniform(n, b), loss_of(uniform(n, b)), ref.loss, ref.tokens))
    if not model.cfg.spec.is_baseline:
        rows += _policy_rows(model, payload, cfg["analysis"], ref, loss_of)
    return pd.DataFrame(rows)


# -- summary, claim, outputs -------------------------------------------------------------------------
def summary(df: pd.DataFrame, conf: float) -> pd.DataFrame:
    """Mean Δloss over seeds (t-CI) per (variant, size, policy, budget), with bytes per token."""
    rows = []
    keys = ["variant", "size", "policy", "budget_bits"]
    for key, g in df[df["policy"] != "fp32"].groupby(keys, sort=False):
        iv = t_interval(g["delta_loss"], conf)
        rows.append({**dict(zip(keys, key)), "bytes_per_token": float(g["bytes_per_token"].iloc[0]),
                     "n_seeds": iv.n, "dloss_mean": iv.mean, "dloss_ci_low": iv.low, "dloss_ci_high": iv.high})
    return pd.DataFrame(rows)


def _per_seed(sub: pd.DataFrame, policy: str, budgets) -> dict:
    """{seed: mean Δloss over `budgets`} of one policy, for the seeds that have every budget."""
    g = sub[(sub["policy"] == policy) & sub["budget_bits"].isin(budgets)]
    counts = g.groupby("seed")["delta_loss"].count()
    means = g.groupby("seed")["delta_loss"].mean()
    return {int(s): float(means[s]) for s in counts.index if counts[s] == len(budgets)}


def claim(df: pd.DataFrame, variant: str | None, size: str, conf: float) -> dict:
    """claims.json's value/CI/verdict/details of CLAIM_TEXT for `variant` at `size` (see module doc)."""
    nan = math.nan
    res = {"value": nan, "ci_low": nan, "ci_high": nan, "verdict": INCONCLUSIVE, "details": {}}
    sub = df[(df["variant"] == variant) & (df["size"] == size)] if len(df) else df
    budgets = sorted(set(sub.loc[sub["policy"] == "beta", "budget_bits"])) if len(sub) else []
    if not budgets:
        res["details"] = {"reason": f"no beta-guided rows of {variant} at size {size}"}
        return res
    uni = _per_seed(sub, "uniform", budgets)
    d = {}
    for policy in ("beta", "oracle", "random"):
        seeds, diff = paired_differences(_per_seed(sub, policy, budgets), uni)
        iv = t_interval(diff, conf)
        d[policy] = {"seeds": seeds, "per_seed": list(diff), "mean": iv.mean, "ci_low": iv.low, "ci_high": iv.high}
    b, o = d["beta"], d["oracle"]
    captured = b["mean"] / o["mean"] if o["mean"] and math.isfinite(o["mean"]) and o["mean"] < 0 else nan
    res.update(value=b["mean"], ci_low=b["ci_low"], ci_high=b["ci_high"],
               verdict=ci_verdict(b["ci_low"], b["ci_high"], 0.0, "below"))
    res["details"] = {"variant": variant, "size": size, "budgets": budgets, "n_pairs": len(b["seeds"]),
                      "beta_minus_uniform": b, "oracle_minus_uniform": o, "random_minus_uniform": d["random"],
                      "fraction_of_oracle_gain": captured}
    return res


def claim_entry(df: pd.DataFrame, cfg: dict) -> dict:
    """The claim's entry (claims.json format, with origin) for "the NCN" at the largest size."""
    from ncn.analysis.heldout import claim_entry as entry
    from ncn.analysis.runs import largest_size, primary_ncn

    a, size, variant = cfg["analysis"], largest_size(cfg), primary_ncn(cfg)
    pct = f"{round(a['confidence'] * 100)}%"
    res = claim(df, variant, size, a["confidence"])
    d = res["details"]
    bounds = "; ".join(f"{p} - uniform {d[f'{p}_minus_uniform']['mean']:.3g}" for p in ("oracle", "random")
                       if f"{p}_minus_uniform" in d)
    stat = (f"mean paired dloss(beta) - dloss(uniform) over budgets {', '.join(map(str, a['kv_budgets']))} bits "
            f"({variant}, size {size}), {pct} t-CI over seeds" + (f"; bounds: {bounds}" if bounds else ""))
    return entry(CLAIM_KEY, CLAIM_TEXT, CLAIM_ORIGIN, variant, size, stat, "CI entirely below 0", res)


def kvcache_tex(sm: pd.DataFrame) -> str:
    """Per variant and budget: bytes/token and Δloss (mean ± CI half-width over seeds) per policy."""
    header = ["Variant", "Bits", "Bytes/token", *[rf"$\Delta$loss {p}" for p in POLICIES]]
    rows, keys = [], []
    for (variant, _, budget), g in sm.groupby(["variant", "size", "budget_bits"], sort=False):
        by = {r.policy: r for r in g.itertuples(index=False)}
        cells = [tables.pm_sig(by[p].dloss_mean, by[p].dloss_ci_low, by[p].dloss_ci_high) if p in by else "--"
                 for p in POLICIES]
        rows.append([tables.escape(variant), f"${budget:g}$", f"${g['bytes_per_token'].iloc[0]:.0f}$", *cells])
        keys.append(variant)
    return tables.booktabs(header, rows, "lrr" + "r" * len(POLICIES), tables.group_breaks(keys))


def curve_figure(sm: pd.DataFrame, pdf, png) -> None:
    """Δloss against cache bytes per token: one panel per variant, one line per policy."""
    import matplotlib.pyplot as plt

    from ncn.analysis import plots

    plots.setup()
    variants = list(dict.fromkeys(sm["variant"]))
    fig, axes = plt.subplots(1, len(variants), figsize=(max(plots.TEXT_WIDTH_IN, 1.6 * len(variants)), 2.4),
                             sharey=True, squeeze=False)
    styles = {"uniform": ("0.3", "o-"), "beta": ("#1b9e77", "s-"), "oracle": ("#7570b3", "^--"),
              "random": ("#d95f02", "x:")}
    for ax, variant in zip(axes[0], variants):
        for policy, (colour, style) in styles.items():
            g = sm[(sm["variant"] == variant) & (sm["policy"] == policy)].sort_values("bytes_per_token")
            if len(g):
                ax.errorbar(g["bytes_per_token"], g["dloss_mean"], yerr=(g["dloss_ci_high"] - g["dloss_ci_low"]) / 2,
                            fmt=style, color=colour, label=policy, ms=3, capsize=2)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xscale("log", base=2)
        ax.set_title(plots.variant_label(variant), fontsize=8)
        ax.set_xlabel("cache bytes / token")
    axes[0][0].set_ylabel("held-out Δloss (nats)")
    richest = max(axes[0], key=lambda ax: len(ax.get_legend_handles_labels()[1]))  # the baseline has uniform only
    richest.legend(fontsize=6, frameon=False)
    options.save_figure(fig, pdf, png)


# -- the real compressed cache in generation ---------------------------------------------------------
GEN_SETTINGS = (None, "16", "8", "4")  # plus beta:B at each budget


def generation_table(run_dir, cfg: dict, data_dir, threads: int = 1) -> pd.DataFrame:
    """`ncn generate` of one NCN run with each --kv-bits setting (the config's generate prompts and
    settings, the same seeds): cache bytes, tokens/s, and the fraction of samples whose text
    equals the uncompressed cache's."""
    import io

    from ncn.generate import generate

    settings = [*GEN_SETTINGS, *(f"beta:{b}" for b in cfg["analysis"]["kv_budgets"])]
    rows, ref = [], None
    for kv in settings:
        rec = generate(run_dir, cfg, str(data_dir), threads, config_source="the config", stdout=io.StringIO(),
                       kv_bits=kv)
        texts = [x["completion"] for x in rec["samples"]]
        ref = texts if kv is None else ref
        rows.append({"variant": rec["variant"], "size": rec["size"], "seed": rec["seed"], "kv_bits": kv or "none",
                     "bits": " ".join(map(str, rec["kv_bits"])) if rec["kv_bits"] else "fp32",
                     "cache_bytes": rec["kv_cache_bytes"], "cache_ratio": rec["kv_cache_bytes"] / rec[
                         "kv_cache_bytes_uncompressed"], "tokens_per_s": rec["tokens_per_s"],
                     "same_text": float(np.mean([a == b for a, b in zip(texts, ref)]))})
    return pd.DataFrame(rows)


def generation_tex(df: pd.DataFrame) -> str:
    header = [r"\texttt{-{}-kv-bits}", "Bits per layer", "Cache bytes", "of fp32", "Tokens/s", "Same text"]
    rows = [[tables.escape(r.kv_bits), tables.escape(r.bits), f"${r.cache_bytes:d}$", f"${100 * r.cache_ratio:.1f}\\%$",
             f"${r.tokens_per_s:.0f}$", f"${100 * r.same_text:.0f}\\%$"] for r in df.itertuples(index=False)]
    return tables.booktabs(header, rows, "llrrrr")


def add_arguments(p) -> None:
    from ncn.analysis.heldout import add_arguments as common

    common(p, summary="mean Δloss over seeds per variant, policy and budget",
           figure="the curve of cache bytes per token vs held-out Δloss")
    p.add_argument("--gen-run", help="an NCN run to generate from with each --kv-bits setting (memory, tokens/s)")
    p.add_argument("--gen-csv", required=True,
                   help="output CSV of that generation (results/timing/: it holds wall-time rates; no rows without --gen-run)")
    p.add_argument("--gen-tex", required=True, help="output booktabs tabular of that generation")


def main(args, cfg: dict) -> None:
    from ncn.analysis.heldout import measure, write_claim

    df = measure(kvcache_table, args, cfg, "kvcache")
    sm = summary(df, cfg["analysis"]["confidence"])
    tables.write_csv(sm, args.summary)
    tables.write_tex(args.tex, kvcache_tex(sm))
    curve_figure(sm, args.pdf, args.png)
    write_claim(claim_entry(df, cfg), args.claim_json, args.claim_tex)
    # without an NCN run to generate from: the table without rows
    gen = generation_table(args.gen_run, cfg, args.data, args.threads) if args.gen_run else pd.DataFrame(
        columns=["variant", "size", "seed", "kv_bits", "bits", "cache_bytes", "cache_ratio", "tokens_per_s",
                 "same_text"])
    tables.write_csv(gen, args.gen_csv)
    tables.write_tex(args.gen_tex, generation_tex(gen))
