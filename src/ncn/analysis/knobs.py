"""Modulation knobs: is the precision β a monotone temperature knob, and a better one than the
same knob on the baseline?

For every run given (each variant, the baseline included, at the largest size, every seed) and
every scale factor s of analysis.knob_scales, β is multiplied by s (ncn.knobs: `beta=s` for
every layer, target "all", and `beta@lL=s` for each layer L alone; on the baseline the same
knob scales the queries). Per setting, on the held-out split (analysis.heldout, capped at
analysis.knob_max_tokens): the mean cross-entropy `loss` and the mean next-token `entropy`
(nats) of the teacher-forced predictive distribution. For target "all" also sampled
continuations (temperature 1, no top-k, knob_samples per prompt of analysis.knob_prompts,
knob_new_tokens tokens, the same seeds at every setting): `distinct2`/`distinct3` = distinct
token n-grams / all n-grams over the setting's continuations, and `repetition` = the mean over
continuations of the fraction of their token 4-grams that repeat an earlier one (seq-rep-4).

The claim (origin "original, future work"): "the NCN controls the effective temperature".
Per seed of "the NCN" and of the baseline at the largest size, the slope of entropy against
log2(s) over the "all" grid (least squares); the knob's strength is −slope (entropy falls as
the precision rises). Supported if the NCN's entropy falls strictly monotonically along the
grid in every seed AND its strength exceeds the baseline's, paired over seeds, with the t-CI
of the difference above 0. Not supported if some seed is not monotone or the CI lies at or
below 0; inconclusive with fewer than two paired seeds, fewer than three scales, or a CI
straddling 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ncn.analysis import options, tables
from ncn.analysis.stats import INCONCLUSIVE, NOT_SUPPORTED, ci_verdict, paired_differences, t_interval

CLAIM_KEY = "knob_temperature"
CLAIM_TEXT = "The NCN controls the effective temperature: its precision beta is a monotone temperature knob"
CLAIM_ORIGIN = "original, future work"
REP_N = 4


# -- text statistics -----------------------------------------------------------------------------
def ngrams(ids, n: int) -> list[tuple]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def distinct(continuations, n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over the continuations (nan without any n-gram)."""
    grams = [g for c in continuations for g in ngrams(c, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition(continuations, n: int = REP_N) -> float:
    """Mean over continuations of the fraction of their n-grams that repeat an earlier one."""
    fr = [1 - len(set(g)) / len(g) for g in (ngrams(c, n) for c in continuations) if g]
    return float(np.mean(fr)) if fr else math.nan


# -- measurement ---------------------------------------------------------------------------------
def _continuations(model, prompts: list[list[int]], a: dict, seed: int) -> list[list[int]]:
    import torch

    out = []
    dev = model.tok_emb.weight.device
    for i, ids in enumerate(prompts):
        idx = torch.tensor([ids], dtype=torch.long, device=dev).repeat(a["knob_samples"], 1)
        gen = torch.Generator(device=dev).manual_seed(seed + i)
        new = model.generate(idx, a["knob_new_tokens"], temperature=1.0, top_k=None, generator=gen)[:, len(ids):]
        out += new.tolist()
    return out


def _prompts(cfg: dict, data_dir, meta: dict) -> list[list[int]]:
    from ncn.analysis.trace import load_tokenizer

    tok = load_tokenizer(data_dir)
    return [[meta["eot_id"], *tok.encode(p, add_special_tokens=False).ids] for p in cfg["analysis"]["knob_prompts"]]


def knobs_table(run_dir, cfg: dict, data_dir, threads: int = 1) -> pd.DataFrame:
    from ncn import knobs
    from ncn.analysis.heldout import heldout_windows, score
    from ncn.analysis.trace import load_ncn_run

    model, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads, None)
    a, bs = cfg["analysis"], cfg["eval"]["batch_size"]
    x, y = heldout_windows(data_dir, meta, model.cfg.block_size, a["knob_max_tokens"])
    prompts = _prompts(cfg, data_dir, meta)
    rows = []
    targets = ["all"] + [f"l{l}" for l in range(model.cfg.n_layer)]
    for target in targets:
        for s in sorted(float(v) for v in a["knob_scales"]):
            spec = f"beta={s!r}" if target == "all" else f"beta@{target}={s!r}"
            knobs.attach(model, knobs.parse(spec))
            try:
                sc = score(model, x, y, bs)
                conts = _continuations(model, prompts, a, cfg["generate"]["seed"]) if target == "all" else []
            finally:
                knobs.attach(model, [])
            rows.append({"variant": model.cfg.ncn, "size": payload.get("size", ""), "seed": payload.get("seed", -1),
                         "target": target, "scale": s, "loss": sc.loss, "entropy": sc.entropy, "tokens": sc.tokens,
                         "distinct2": distinct(conts, 2), "distinct3": distinct(conts, 3),
                         "repetition": repetition(conts), "samples": len(conts)})
    return pd.DataFrame(rows)


# -- slopes, claim -------------------------------------------------------------------------------
def slope(g: pd.DataFrame, column: str = "entropy") -> float:
    """Least-squares slope of `column` against log2(scale); nan with fewer than two scales."""
    if len(g) < 2:
        return math.nan
    return float(np.polyfit(np.log2(g["scale"].to_numpy(dtype=float)), g[column].to_numpy(dtype=float), 1)[0])


def strengths(df: pd.DataFrame, variant: str, size: str, target: str = "all") -> dict:
    """{seed: (−slope of entropy vs log2 scale, entropy strictly falling along the grid)}."""
    sub = df[(df["variant"] == variant) & (df["size"] == size) & (df["target"] == target)] if len(df) else df
    out = {}
    for seed, g in sub.groupby("seed"):
        g = g.sort_values("scale")
        out[int(seed)] = (-slope(g), bool(np.all(np.diff(g["entropy"].to_numpy(dtype=float)) < 0)))
    return out


def claim(df: pd.DataFrame, variant: str | None, baseline: str, size: str, conf: float) -> dict:
    """claims.json's value/CI/verdict/details of CLAIM_TEXT (see module doc)."""
    nan = math.nan
    res = {"value": nan, "ci_low": nan, "ci_high": nan, "verdict": INCONCLUSIVE, "details": {}}
    ncn, base = strengths(df, variant, size), strengths(df, baseline, size)
    seeds, d = paired_differences({s: v[0] for s, v in ncn.items()}, {s: v[0] for s, v in base.items()})
    n_scales = int(df["scale"].nunique()) if len(df) else 0
    iv = t_interval(d, conf)
    monotone = [s for s in seeds if ncn[s][1]]
    res["details"] = {"variant": variant, "baseline": baseline, "size": size, "seeds": seeds, "n_scales": n_scales,
                      "strength_ncn": [ncn[s][0] for s in seeds], "strength_baseline": [base[s][0] for s in seeds],
                      "monotone_seeds": monotone, "baseline_monotone_seeds": [s for s in seeds if base[s][1]],
                      "difference_per_seed": list(d)}
    if len(seeds) < 2 or n_scales < 3:
        res["details"]["reason"] = f"{len(seeds)} paired seeds and {n_scales} scales (need 2 and 3)"
        return res
    res.update(value=iv.mean, ci_low=iv.low, ci_high=iv.high)
    if len(monotone) < len(seeds):
        res["verdict"] = NOT_SUPPORTED
    else:
        res["verdict"] = ci_verdict(iv.low, iv.high, 0.0, "above")
    return res


def claim_entry(df: pd.DataFrame, cfg: dict) -> dict:
    """The claim's entry (claims.json format, with origin) for "the NCN" vs the baseline at the largest size."""
    from ncn.analysis.heldout import claim_entry as entry
    from ncn.analysis.runs import largest_size, primary_ncn
    from ncn.variants import baseline

    a, size, variant, base = cfg["analysis"], largest_size(cfg), primary_ncn(cfg), baseline()
    res = claim(df, variant, base, size, a["confidence"])
    d = res["details"]
    stat = (f"paired difference of the knob strength -dH/dlog2(s) of entropy H vs the beta scale s, {variant} - {base} "
            f"(its query scale), size {size}, {round(a['confidence'] * 100)}% t-CI over seeds; entropy falls "
            f"monotonically in {len(d.get('monotone_seeds', []))} of {len(d.get('seeds', []))} seeds")
    return entry(CLAIM_KEY, CLAIM_TEXT, CLAIM_ORIGIN, variant, size, stat,
                 "entropy falls monotonically in every seed and CI entirely above 0", res)


def summary(df: pd.DataFrame, conf: float) -> pd.DataFrame:
    """Per (variant, size, target): the knob strength (−slope of entropy vs log2 scale) over seeds,
    the seeds in which entropy falls monotonically, and the loss slope."""
    rows = []
    for (variant, size, target), g in df.groupby(["variant", "size", "target"], sort=False):
        st = strengths(df, variant, size, target)
        iv = t_interval([v[0] for v in st.values()], conf)
        loss = t_interval([-slope(s.sort_values("scale"), "loss") for _, s in g.groupby("seed")], conf)
        rows.append({"variant": variant, "size": size, "target": target, "n_seeds": iv.n, "strength_mean": iv.mean,
                     "strength_ci_low": iv.low, "strength_ci_high": iv.high,
                     "monotone_seeds": sum(v[1] for v in st.values()), "loss_strength_mean": loss.mean})
    return pd.DataFrame(rows)


# -- outputs -------------------------------------------------------------------------------------
def knobs_tex(df: pd.DataFrame, sm: pd.DataFrame) -> str:
    """Per variant: the knob strength on every layer and per layer, monotone seeds, and the loss,
    entropy, distinct-2 and repetition at the smallest and largest scale (means over seeds)."""
    layers = sorted((t for t in sm["target"].unique() if t != "all"), key=lambda t: int(t[1:]))
    lo_s, hi_s = df["scale"].min(), df["scale"].max()
    header = ["Variant", r"$-\mathrm{d}H/\mathrm{d}\log_2 s$", "Monotone", *[f"layer {t[1:]}" for t in layers],
              f"$H$ at $s={lo_s:g}$ / ${hi_s:g}$", f"distinct-2 at $s={lo_s:g}$ / ${hi_s:g}$"]
    rows = []
    for variant, g in sm.groupby("variant", sort=False):
        al = g[g["target"] == "all"].iloc[0]
        per = {r.target: r for r in g.itertuples(index=False)}
        d = df[(df["variant"] == variant) & (df["target"] == "all")].groupby("scale")[["entropy", "distinct2"]].mean()
        rows.append([tables.escape(variant), tables.pm_sig(al.strength_mean, al.strength_ci_low, al.strength_ci_high),
                     f"${al.monotone_seeds}/{al.n_seeds}$",
                     *[tables.pm_sig(per[t].strength_mean, None, None) if t in per else "--" for t in layers],
                     f"{tables.num(d.loc[lo_s, 'entropy'])} / {tables.num(d.loc[hi_s, 'entropy'])}",
                     f"{tables.num(d.loc[lo_s, 'distinct2'], 2)} / {tables.num(d.loc[hi_s, 'distinct2'], 2)}"])
    return tables.booktabs(header, rows, "lrr" + "r" * len(layers) + "rr")


def knobs_figure(df: pd.DataFrame, pdf, png) -> None:
    """Entropy, loss, distinct-2 and repetition against the global β scale, one line per variant
    (mean over seeds)."""
    import matplotlib.pyplot as plt

    from ncn.analysis import plots

    plots.setup()
    panels = (("entropy", "next-token entropy (nats)"), ("loss", "held-out loss (nats)"),
              ("distinct2", "distinct-2 of samples"), ("repetition", f"repetition (seq-rep-{REP_N})"))
    fig, axes = plt.subplots(1, len(panels), figsize=(plots.TEXT_WIDTH_IN * 1.25, 2.6))
    al = df[df["target"] == "all"]
    for variant, g in al.groupby("variant", sort=False):
        m = g.groupby("scale")[[p for p, _ in panels]].mean()
        for ax, (col, _) in zip(axes, panels):
            ax.plot(m.index, m[col], "o-", ms=3, color=plots.variant_colour(variant), label=plots.variant_label(variant))
    for ax, (_, label) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("β scale factor s")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6, frameon=False)
    options.save_figure(fig, pdf, png)


def add_arguments(p) -> None:
    from ncn.analysis.heldout import add_arguments as common

    common(p, summary="knob strength per variant and target over seeds",
           figure="entropy, loss, distinct-2 and repetition against the beta scale")


def main(args, cfg: dict) -> None:
    from ncn.analysis.heldout import measure, write_claim

    df = measure(knobs_table, args, cfg, "knobs")
    sm = summary(df, cfg["analysis"]["confidence"])
    tables.write_csv(sm, args.summary)
    tables.write_tex(args.tex, knobs_tex(df, sm))
    knobs_figure(df, args.pdf, args.png)
    write_claim(claim_entry(df, cfg), args.claim_json, args.claim_tex)
