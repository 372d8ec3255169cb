"""One measured verdict per claim: results/claims.json, the claims table and one paragraph per claim.

The claims are one registry, CLAIMS, of `Claim` objects: key, text, origin ("original": a claim
of the original write-up; "original, promise": a capability it promises; "original, future work":
what it proposed without testing; "replication": a finding of this replication), the statistic, the null hypothesis, the control,
the decision rule (`threshold`) and the verdict function (`compute`). claims.json, the paper's
claims table and its paragraphs (test, null, control, result) are all generated from it, and the
paper tallies the verdicts by origin. A new claim is one entry in CLAIMS.

Verdicts (ncn.analysis.stats): "supported" when the interval lies on the claim's side of its
threshold; "not supported" when it lies on the other side, or below a stated smallest effect of
interest (an equivalence decision); "inconclusive" when it straddles, or cannot be computed (thin
data: fewer than MIN_SEEDS seeds); "not applicable" when the claim's premise does not hold in the
profile, with the reason. A claim of several legs needs every leg (stats.all_of: one refuted leg
refutes it). Every claim about trained models reads every seed; `reason` says what decided.

 1 ab_beats_baseline     paired dPPL = PPL(NCN) - PPL(none) over seeds; CI < 0.
 2 baseline_ppl          not applicable unless the GPT-2 tokenizer and a budget within 2x of 520M
                         tokens; then the baseline's PPL CI above 5.5.
 3 layer_specialisation  per-(seed, layer) mean beta on held-out sentences; two-way ANOVA layer x
                         seed (seeds as blocks; Friedman beside it); the largest-minus-smallest
                         layer contrast per seed, t-CI: supported iff p < alpha and CI above
                         analysis.layer_effect_floor; not supported iff CI below it.
 4 phasic_but            three legs, all > 0: the twist's change at 'but' vs position-matched
                         controls (seed-averaged; a prediction interval for one sentence); twist
                         minus minimal pair at the first differing token (t-CI over seeds);
                         partial Spearman of change with surprisal | position, log frequency
                         (Fisher-z CI over seeds). Constant signals (static): not supported; a
                         prediction interval narrower than TRACE_RESOLUTION: inconclusive.
 5 homeostasis           three legs: the signal variance over the reg-only control's, log10 CI
                         above log10(analysis.activity_min_ratio) (and above static's 0); L_reg /
                         reg_lambda over the second half of training, CI below analysis.reg_bound;
                         the fraction of gains in analysis.gain_band, CI above gain_min_fraction.
 6 gamma_gates           two legs: the fraction of (layer, token) with gamma < max(gate_eps) AND a
                         branch ratio ||g gamma FFN|| / ||x|| < analysis.gate_branch_ratio, CI above
                         gate_min_fraction; skipping at that eps minus random skipping of as many,
                         loss CI < 0 over seeds (nothing gated: not supported; all: inconclusive).
 7 asrun_leak            structural max |dlogit| at positions <= t (a measurement: exactly 0 means
                         nothing can leak, not supported); benefit = loss(true future) - loss(another
                         window's future), CI < 0; the prefix-pool mismatch reported apart.
 8 block_skipping        at the eps skipping the most (at least analysis.skip_min_fraction, at most
                         1 - it: skipping all is no choice of the gate's) whose loss
                         change CI stays <= analysis.skip_tolerance_nats: gated minus random skip
                         loss, CI < 0. Every skipping eps costing more than the tolerance: not
                         supported.
 9 control_steers       (ncn.analysis.control) the control variant at its largest size: stories
                         with the label under label=1 minus label=0, and held-out loss with the
                         flipped minus the true label, paired over seeds; both CIs > 0.
10 kvcache_beta_guided   (tables/kvcache.csv, ncn.analysis.kvcache) held-out dloss of beta-guided
                         minus uniform KV-cache bits at the same average bits (equal bytes per
                         token, checked), mean over budgets, paired over seeds: CI < 0; the oracle
                         and random allocations minus uniform reported as the bounds.
11 knob_temperature      (tables/knobs.csv, ncn.analysis.knobs) two legs: entropy falls strictly
                         monotonically in the beta scale in every seed; the knob strength
                         -dH/dlog2(s) minus the same knob's on the baseline (its query scale),
                         paired over seeds, CI > 0.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ncn.analysis import control, knobs, kvcache, options, tables
from ncn.analysis.macros import finite, fmt_sig, macro_name
from ncn.analysis.runs import SIGNALS, largest_size, load_runs_table, per_seed, primary_ncn, read_train_log
from ncn.analysis.stats import (INCONCLUSIVE, NOT_APPLICABLE, NOT_SUPPORTED, SUPPORTED, VERDICTS, Interval, all_of,
                                blocked_anova, ci_verdict, fisher_interval, friedman, nan_to_none,
                                paired_differences, partial_spearman, prediction_interval, t_interval)
from ncn.errors import NCNError
from ncn.fileio import write_json
from ncn.variants import baseline, control_names, future_names, spec

NAN = math.nan
# The variants the claims name, from the registry (ncn.variants), never spelled out here: the
# baseline, the one whose pool sees the future (the leak), the one that takes external control.
BASELINE = baseline()
LEAKY = future_names()[0]
CONTROLLED = control_names()[0]
ORIGINS = ("original", control.CLAIM_ORIGIN, "original, future work", "replication")
# The original's budget: one epoch of TinyStories, about 520M GPT-2 tokens (its README). Claim 2
# speaks of that budget: it applies within a factor BUDGET_FACTOR of it.
ORIGINAL_TOKENS = 520e6
BUDGET_FACTOR = 2.0
# Claims about trained models need an interval over seeds: fewer seeds are thin data.
MIN_SEEDS = 2
# The traces hold signals of order 1 with 7 significant digits: a signal change below this is
# rounding, and a prediction interval narrower than it cannot place the twist.
TRACE_RESOLUTION = 1e-6
# The measurement tables (ncn analyze leakprobe, skip, regonly): name (the claims rule's input and,
# dashed, the option) -> the file under results/ the reasons quote, and the columns read.
MEASURES = {"leak_measure": "tables/leak_measure.csv", "skip_measure": "tables/skip_measure.csv",
            "regonly": "tables/regonly.csv", "kvcache": "tables/kvcache.csv", "knobs": "tables/knobs.csv"}
MEASURE_COLUMNS = {
    "leak_measure": ("variant", "size", "seed", "max_abs_dlogit_past", "loss_true_future", "loss_replaced_future"),
    "skip_measure": ("variant", "size", "seed", "eps", "loss_dense", "loss_skip", "loss_random", "skip_frac"),
    "regonly": ("variant", "size", "seed", "var_trained", "var_regonly"),
    "kvcache": ("variant", "size", "seed", "policy", "budget_bits", "delta_loss", "bytes_per_token"),
    "knobs": ("variant", "size", "seed", "target", "scale", "entropy"),
}


def _result(value=NAN, low=NAN, high=NAN, verdict=INCONCLUSIVE, reason="", **details):
    return {"value": value, "ci_low": low, "ci_high": high, "verdict": verdict, "reason": reason, "details": details}


def _f(x, sig: int = 3) -> str:
    """A number in a reason: 3 significant digits, 'n/a' when missing."""
    return f"{float(x):.{sig}g}" if finite(x) else "n/a"


def _ci(iv: Interval) -> str:
    return f"[{_f(iv.low)}, {_f(iv.high)}]"


def _legs_reason(legs: dict) -> str:
    """'name: verdict (why); ...' of a claim's legs {name: (verdict, why)}."""
    return "; ".join(f"{name}: {v} ({why})" for name, (v, why) in legs.items())


def _side_why(v: str, iv: Interval, thr: float, side: str, what: str = "CI") -> str:
    """Why ci_verdict gave v for interval iv against thr on `side`."""
    if not iv.defined:
        return f"no interval with {iv.n} seed(s)"
    rel = {SUPPORTED: side, NOT_SUPPORTED: "not " + side, INCONCLUSIVE: "straddling"}[v]
    return f"{what} {_ci(iv)} {rel} {_f(thr)}"


def _seed_interval(by_seed: dict, conf: float) -> Interval:
    return t_interval([by_seed[k] for k in sorted(by_seed) if finite(by_seed[k])], conf)


def _rows(df: pd.DataFrame | None, variant: str, size: str) -> pd.DataFrame:
    """The rows of a measurement table for one (variant, size), sorted by seed (empty if none)."""
    if df is None or df.empty:
        return pd.DataFrame()
    return df[(df["variant"].astype(str) == variant) & (df["size"].astype(str) == size)].sort_values("seed")


# -- claim 1: the A/B -------------------------------------------------------------------------------
def ab_claim(runs, variant, size, conf):
    seeds, d = paired_differences(per_seed(runs, variant, size, "val_ppl"), per_seed(runs, BASELINE, size, "val_ppl"))
    if not seeds:
        return _result(reason=f"no paired runs of {variant} and {BASELINE} at size {size}")
    iv = t_interval(d, conf)
    _, dl = paired_differences(per_seed(runs, variant, size, "val_loss"), per_seed(runs, BASELINE, size, "val_loss"))
    ld = t_interval(dl, conf)
    v = ci_verdict(iv.low, iv.high, 0.0, "below")
    return _result(iv.mean, iv.low, iv.high, v, _side_why(v, iv, 0.0, "below"),
                   variant=variant, size=size, seeds=seeds, dppl_per_seed=list(d), n_pairs=len(seeds),
                   dloss_mean=ld.mean, dloss_ci_low=ld.low, dloss_ci_high=ld.high,
                   ppl_variant=t_interval(per_seed(runs, variant, size, "val_ppl").values(), conf).mean,
                   ppl_baseline=t_interval(per_seed(runs, BASELINE, size, "val_ppl").values(), conf).mean)


# -- claim 2: the baseline's perplexity at the original's budget ---------------------------------------
def baseline_applies(kind: str, tokens: float) -> str:
    """'' when claim 2's premise holds (GPT-2 tokenizer, budget within BUDGET_FACTOR of the
    original's), else why it does not."""
    lo, hi = ORIGINAL_TOKENS / BUDGET_FACTOR, ORIGINAL_TOKENS * BUDGET_FACTOR
    if kind != "gpt2":
        return (f"5.5 is a perplexity per GPT-2 token; this profile's tokenizer is {kind}, whose per-token "
                "perplexity is not comparable")
    if not finite(tokens):
        return "the baseline's training budget (runs table column tokens) is unknown"
    if not lo <= tokens <= hi:
        return (f"the claim speaks of the original's budget ({_f(ORIGINAL_TOKENS)} tokens); this baseline trained on "
                f"{_f(tokens)}, outside [{_f(lo)}, {_f(hi)}]")
    return ""


def baseline_ppl_claim(runs, size, cfg, meta):
    a = cfg["analysis"]
    conf, thr = a["confidence"], a["ppl_threshold"]
    ppl = t_interval(per_seed(runs, BASELINE, size, "val_ppl").values(), conf)
    budget = per_seed(runs, BASELINE, size, "tokens")
    tokens = float(np.median(list(budget.values()))) if budget else NAN
    kind = meta.get("tokenizer_kind", "unknown")
    details = dict(size=size, tokenizer_kind=kind, tokens_trained=tokens, original_tokens=ORIGINAL_TOKENS,
                   budget_factor=BUDGET_FACTOR, ppl_mean=ppl.mean, ppl_ci_low=ppl.low, ppl_ci_high=ppl.high,
                   ppl_threshold=thr, n_seeds=ppl.n)
    if ppl.n == 0:
        return _result(reason=f"no baseline runs at size {size}", **details)
    why_not = baseline_applies(kind, tokens)
    if why_not:
        return _result(verdict=NOT_APPLICABLE, reason=why_not, **details)
    v = ci_verdict(ppl.low, ppl.high, thr, "above")
    return _result(ppl.mean, ppl.low, ppl.high, v, _side_why(v, ppl, thr, "above"), **details)


# -- claim 3: layer specialisation -------------------------------------------------------------------------
def layer_means(trace: pd.DataFrame, signal: str = "beta", kind: str = "valid") -> pd.DataFrame:
    """Mean of `signal` over the real tokens (pos >= 1) of the `kind` sentences: seeds x layers."""
    t = trace[(trace["kind"] == kind) & (trace["pos"] >= 1)]
    m = t.pivot_table(index="seed", columns="layer", values=signal, aggfunc="mean")
    return m.sort_index().sort_index(axis=1).dropna()


def layer_claim(trace, cfg):
    a = cfg["analysis"]
    conf, floor = a["confidence"], a["layer_effect_floor"]
    alpha = 1 - conf
    if trace is None:
        return _result(reason="no trace")
    mat = layer_means(trace)
    n_seeds, n_layers = mat.shape
    details = dict(n_seeds=n_seeds, n_layers=n_layers, alpha=alpha, effect_floor=floor)
    if n_seeds < MIN_SEEDS or n_layers < 2:
        return _result(reason=f"held-out beta of {n_seeds} seed(s) x {n_layers} layer(s): a seed-blocked test "
                       f"needs {MIN_SEEDS} x 2", **details)
    means = mat.mean(axis=0)
    hi, lo = means.idxmax(), means.idxmin()
    iv = t_interval((mat[hi] - mat[lo]).to_numpy(), conf)
    F, p = blocked_anova(mat.to_numpy())
    q, p_friedman = friedman(mat.to_numpy())
    size_v = ci_verdict(iv.low, iv.high, floor, "above")
    test_v = SUPPORTED if finite(p) and p < alpha else INCONCLUSIVE
    verdict = NOT_SUPPORTED if size_v == NOT_SUPPORTED else all_of(size_v, test_v)
    reason = _legs_reason({"blocked ANOVA": (test_v, f"F = {_f(F)}, p = {_f(p)} vs alpha {_f(alpha)}"),
                           "effect size": (size_v, _side_why(size_v, iv, floor, "above", "contrast CI"))})
    return _result(iv.mean, iv.low, iv.high, verdict, reason, **details, F=F, p_value=p,
                   friedman_chi2=q, friedman_p=p_friedman, layer_means=[float(x) for x in means],
                   contrast_layers=[int(hi), int(lo)], contrast_per_seed=[float(x) for x in mat[hi] - mat[lo]])


# -- claim 4: the phasic response at 'but' -------------------------------------------------------------------
def token_changes(trace: pd.DataFrame, signals=SIGNALS) -> pd.DataFrame:
    """Per (seed, sentence, pos >= 2): change = mean over layers and `signals` of
    |s(l,t) - s(l,t-1)|, with the token's surprisal, probe flag and log frequency (when traced)."""
    keys = ["seed", "sentence_id"] if "seed" in trace else ["sentence_id"]
    t = trace.sort_values([*keys, "layer", "pos"])
    diffs = t.groupby([*keys, "layer"], sort=False)[list(signals)].diff().abs()
    t = t.assign(change=diffs.mean(axis=1, skipna=False))
    t = t[t["pos"] >= 2]
    agg = dict(kind=("kind", "first"), change=("change", "mean"), surprisal=("surprisal", "first"),
               probe=("probe", "max"))
    if "log_freq" in t:
        agg["log_freq"] = ("log_freq", "first")
    return t.groupby([*keys, "pos"], sort=True).agg(**agg).reset_index()


def twist_and_controls(changes: pd.DataFrame) -> tuple[float, int, pd.Series, int]:
    """One seed's (change at the probe of the twist sentence, its position, the changes at the
    probe of the control sentences with the probe at that same position by sentence_id, the number
    of controls left out because their probe sits elsewhere)."""
    probes = changes[changes["probe"] == 1]
    twist = probes[probes["kind"] == "trace"].sort_values("sentence_id")
    controls = probes[probes["kind"] == "control"]
    if twist.empty:
        return NAN, -1, pd.Series(dtype=float), len(controls)
    pos = int(twist["pos"].iloc[0])
    matched = controls[controls["pos"] == pos]
    return float(twist["change"].iloc[0]), pos, matched.set_index("sentence_id")["change"], len(controls) - len(matched)


def pair_difference(trace: pd.DataFrame, changes: pd.DataFrame) -> tuple[float, int]:
    """One seed's change(twist) - change(pair) at the first token where each minimal pair
    differs from the twist sentence (where a causal model can first react), mean over pairs."""
    first = trace[trace["layer"] == trace["layer"].min()].sort_values(["sentence_id", "pos"])
    seqs = {sid: g["token_id"].to_numpy() for sid, g in first.groupby("sentence_id")}
    kinds = first.groupby("sentence_id")["kind"].first()
    twists, pairs = sorted(kinds.index[kinds == "trace"]), sorted(kinds.index[kinds == "pair"])
    if not twists:
        return NAN, 0
    c = changes.set_index(["sentence_id", "pos"])["change"]
    tw, diffs = twists[0], []
    for sid in pairs:
        a, b = seqs[tw], seqs[sid]
        differ = np.flatnonzero(a[: min(len(a), len(b))] != b[: min(len(a), len(b))])
        if len(differ) and (tw, int(differ[0])) in c.index and (sid, int(differ[0])) in c.index:
            diffs.append(float(c[(tw, int(differ[0]))] - c[(sid, int(differ[0]))]))
    return (float(np.mean(diffs)) if diffs else NAN), len(diffs)


def phasic_seed(trace: pd.DataFrame) -> dict:
    """The phasic statistics of one seed's trace."""
    ch = token_changes(trace)
    twist, pos, controls, unmatched = twist_and_controls(ch)
    pair, n_pairs = pair_difference(trace, ch)
    covs = [ch["pos"]] + ([pd.to_numeric(ch["log_freq"], errors="coerce")] if "log_freq" in ch else [])
    rho, p, n = partial_spearman(ch["change"], ch["surprisal"], covs)
    return dict(twist_change=twist, probe_pos=pos, controls=controls, n_unmatched=unmatched, pair_diff=pair,
                n_pairs=n_pairs, rho=rho, rho_p=p, rho_n=n, has_log_freq="log_freq" in ch,
                constant=bool((ch["change"].fillna(0.0) == 0.0).all()))


def _phasic_legs(per: dict, conf: float) -> tuple[dict, Interval, float]:
    """{leg: (verdict, why)}, the twist's excess interval and the controls' n."""
    twist = float(np.mean([d["twist_change"] for d in per.values()]))
    controls = pd.concat({s: d["controls"] for s, d in per.items()}, axis=1).dropna().mean(axis=1)
    pi = prediction_interval(controls, conf)
    excess = Interval(twist - pi.mean, twist - pi.high, twist - pi.low, pi.n, pi.sd)
    legs = {}
    v = ci_verdict(excess.low, excess.high, 0.0, "above") if pi.half >= TRACE_RESOLUTION else INCONCLUSIVE
    unmatched = max(d["n_unmatched"] for d in per.values())
    legs["controls"] = (v, (f"twist {_f(twist)} vs the {round(conf * 100)}% prediction interval {_ci(pi)} of {pi.n} "
                            f"position-matched controls ({unmatched} at another position left out"
                            + ("; narrower than the trace's resolution" if pi.half < TRACE_RESOLUTION else "") + ")")
                        if finite(twist) else "no probe in the twist sentence")
    pair = _seed_interval({s: d["pair_diff"] for s, d in per.items()}, conf)
    v = ci_verdict(pair.low, pair.high, 0.0, "above")
    legs["minimal pairs"] = (v, _side_why(v, pair, 0.0, "above", "twist - pair CI") if pair.n
                             else "no minimal pair traced")
    rho = fisher_interval([d["rho"] for d in per.values() if finite(d["rho"])], conf)
    v = ci_verdict(rho.low, rho.high, 0.0, "above")
    if not all(d["has_log_freq"] for d in per.values()):
        legs["surprisal"] = (INCONCLUSIVE, "the trace has no log_freq column to partial out")
    else:
        legs["surprisal"] = (v, _side_why(v, rho, 0.0, "above", "partial rho CI"))
    return legs, excess, rho.mean


def phasic_claim(trace, conf):
    if trace is None:
        return _result(reason="no trace")
    per = {int(s): phasic_seed(g) for s, g in trace.groupby("seed", sort=True)}
    details = dict(n_seeds=len(per), per_seed={s: {k: (list(map(float, v)) if k == "controls" else v)
                                                   for k, v in d.items()} for s, d in per.items()})
    if all(d["constant"] for d in per.values()):
        return _result(0.0, NAN, NAN, NOT_SUPPORTED, "the signals are constant: no token changes them", **details)
    legs, excess, rho = _phasic_legs(per, conf)
    details.update(legs={k: v for k, (v, _) in legs.items()}, partial_rho=rho, n_controls=excess.n)
    if len(per) < MIN_SEEDS:
        return _result(excess.mean, excess.low, excess.high, INCONCLUSIVE,
                       f"{len(per)} seed(s): the legs need an interval over {MIN_SEEDS}", **details)
    return _result(excess.mean, excess.low, excess.high, all_of(*(v for v, _ in legs.values())),
                   _legs_reason(legs), **details)


# -- claim 5: homeostasis ------------------------------------------------------------------------------------
def signal_variance(trace: pd.DataFrame) -> dict:
    """{seed: mean over layers and signals of the variance over real tokens (pos >= 1)}."""
    t = trace[trace["pos"] >= 1]
    v = t.groupby(["seed", "layer"])[list(SIGNALS)].var(ddof=0).mean(axis=1)
    return {int(s): float(x) for s, x in v.groupby(level="seed").mean().items()}


def gain_fractions(trace: pd.DataFrame, band) -> dict:
    """{seed: fraction of the traced (layer, token >= 1) gains within band (inclusive)}."""
    t = trace[trace["pos"] >= 1]
    inside = t["g"].between(band[0], band[1])
    return {int(s): float(x) for s, x in inside.groupby(t["seed"]).mean().items()}


def reg_levels(runs, variant, size, reg_lambda) -> dict:
    """{seed: L_reg / reg_lambda averaged over the logged steps of the second half of training}."""
    sub = runs[(runs["variant"] == variant) & (runs["size"] == size)]
    out = {}
    for run_dir, seed in zip(sub["run_dir"], sub["seed"]):
        log = read_train_log(run_dir)[["step", "reg"]].dropna()
        late = log[log["step"] >= log["step"].max() / 2]
        if len(late) and reg_lambda > 0:
            out[int(seed)] = float(late["reg"].mean()) / reg_lambda
    return out


def _activity_leg(regonly, trace, static_trace, variant, size, a, conf) -> tuple[str, str, dict]:
    own = signal_variance(trace)
    if own and all(v == 0.0 for v in own.values()):
        return NOT_SUPPORTED, "the signals are constant: they do not vary per token", {"constant": True}
    rows = _rows(regonly, variant, size)
    if "signal" in rows:  # one row per signal and "all", their mean (ncn.analysis.regonly)
        rows = rows[rows["signal"] == "all"]
    if rows.empty:
        return INCONCLUSIVE, f"no regulariser-only control of {variant}/{size} ({MEASURES['regonly']})", {}
    trained = dict(zip(rows["seed"].astype(int), rows["var_trained"].astype(float)))
    ratio = {s: math.log10(max(trained[s], 1e-300) / max(float(r), 1e-300))
             for s, r in zip(rows["seed"].astype(int), rows["var_regonly"])}
    static = max(signal_variance(static_trace).values(), default=NAN) if static_trace is not None else NAN
    iv, thr = _seed_interval(ratio, conf), math.log10(a["activity_min_ratio"])
    info = dict(log10_variance_ratio=ratio, log10_ratio_mean=iv.mean, log10_ratio_ci=[iv.low, iv.high],
                variance_trained=trained, static_variance=static)
    if all(v == 0.0 for v in trained.values()) or (finite(static) and min(trained.values()) <= static):
        return NOT_SUPPORTED, f"the signals vary no more than static's ({_f(static)})", info
    v = ci_verdict(iv.low, iv.high, thr, "above")
    return v, _side_why(v, iv, thr, "above", "log10 variance ratio CI"), info


def homeostasis_claim(trace, regonly, runs, variant, size, cfg, static_trace=None):
    a = cfg["analysis"]
    conf, band = a["confidence"], a["gain_band"]
    if trace is None:
        return _result(reason="no trace")
    act_v, act_why, info = _activity_leg(regonly, trace, static_trace, variant, size, a, conf)
    levels = reg_levels(runs, variant, size, cfg["model"]["reg_lambda"]) if "run_dir" in runs else {}
    reg = _seed_interval(levels, conf)
    reg_v = ci_verdict(reg.low, reg.high, a["reg_bound"], "below") if levels else INCONCLUSIVE
    frac = _seed_interval(gain_fractions(trace, band), conf)
    band_v = ci_verdict(frac.low, frac.high, a["gain_min_fraction"], "above")
    legs = {"active": (act_v, act_why),
            "L_reg bounded": (reg_v, _side_why(reg_v, reg, a["reg_bound"], "below", "L_reg/lambda CI")
                              if levels else "no reg in the train logs"),
            "gain band": (band_v, _side_why(band_v, frac, a["gain_min_fraction"], "above", "fraction CI"))}
    details = dict(variant=variant, size=size, gain_band=list(band), n_seeds=frac.n, activity=info,
                   reg_level_per_seed=levels, reg_bound=a["reg_bound"], legs={k: v for k, (v, _) in legs.items()})
    if frac.n < MIN_SEEDS and not info.get("constant"):  # constant signals are never active, on any seeds
        return _result(frac.mean, frac.low, frac.high, INCONCLUSIVE, f"{frac.n} seed(s): no interval over seeds; "
                       + _legs_reason(legs), **details)
    return _result(frac.mean, frac.low, frac.high, all_of(act_v, reg_v, band_v), _legs_reason(legs), **details)


# -- claim 6: the gate closes -------------------------------------------------------------------------------
def closed_fractions(trace: pd.DataFrame, eps: float, max_ratio: float) -> dict:
    """{seed: fraction of (layer, token >= 1) with gamma < eps whose FFN branch adds less than
    max_ratio of the residual stream's norm}."""
    t = trace[trace["pos"] >= 1]
    closed = (t["gamma"] < eps) & (pd.to_numeric(t["branch_ratio"], errors="coerce") < max_ratio)
    return {int(s): float(x) for s, x in closed.groupby(t["seed"]).mean().items()}


def _skip_rows(skip, variant, size, eps) -> pd.DataFrame:
    rows = _rows(skip, variant, size)
    return rows[np.isclose(rows["eps"].astype(float), eps)] if not rows.empty else rows


def _gated_vs_random(rows: pd.DataFrame, conf: float) -> tuple[Interval, float]:
    """(t-CI over seeds of loss(gated skip) - loss(random skip of as many), mean skipped fraction)."""
    d = dict(zip(rows["seed"].astype(int), rows["loss_skip"].astype(float) - rows["loss_random"].astype(float)))
    return _seed_interval(d, conf), float(rows["skip_frac"].astype(float).mean())


def gate_claim(trace, skip, variant, size, cfg):
    a = cfg["analysis"]
    conf, eps = a["confidence"], max(a["gate_eps"])
    if trace is None:
        return _result(reason="no trace")
    if "branch_ratio" in trace:
        frac = _seed_interval(closed_fractions(trace, eps, a["gate_branch_ratio"]), conf)
        c_v = ci_verdict(frac.low, frac.high, a["gate_min_fraction"], "above")
        c_why = _side_why(c_v, frac, a["gate_min_fraction"], "above", "closed-fraction CI")
    else:
        frac, c_v, c_why = t_interval([]), INCONCLUSIVE, "the trace has no branch_ratio column"
    rows = _skip_rows(skip, variant, size, eps)
    if rows.empty:
        f_v, d, skipped = INCONCLUSIVE, None, NAN
        f_why = (f"no skip measurement at eps = {eps:g} ({MEASURES['skip_measure']}, whose grid must hold "
                 "max(analysis.gate_eps))")
    else:
        d, skipped = _gated_vs_random(rows, conf)
        f_v = (NOT_SUPPORTED if skipped == 0 else INCONCLUSIVE if skipped == 1
               else ci_verdict(d.low, d.high, 0.0, "below"))
        f_why = ("no gamma below eps: nothing is gated" if skipped == 0
                 else "every evaluation is gated: random skipping of as many is the same" if skipped == 1
                 else _side_why(f_v, d, 0.0, "below", "gated - random loss CI"))
    legs = {"scale-aware closed fraction": (c_v, c_why), "function": (f_v, f_why)}
    details = dict(variant=variant, size=size, eps=eps, n_seeds=frac.n, skip_frac=skipped,
                   gated_minus_random=d.mean if d else NAN, gated_minus_random_ci=[d.low, d.high] if d else [NAN, NAN],
                   legs={k: v for k, (v, _) in legs.items()})
    n = max(frac.n, d.n if d else 0)
    if n < MIN_SEEDS:
        return _result(frac.mean, frac.low, frac.high, INCONCLUSIVE, f"{n} seed(s): no interval over seeds; "
                       + _legs_reason(legs), **details)
    return _result(frac.mean, frac.low, frac.high, all_of(c_v, f_v), _legs_reason(legs), **details)


# -- claim 7: the as-run leak -------------------------------------------------------------------------------
def leak_structure(leak, size) -> dict:
    """{variant: max over seeds of max |dlogit| at positions <= t when the tokens after t change}."""
    if leak is None or leak.empty:
        return {}
    sub = leak[leak["size"].astype(str) == size]
    return {str(v): float(x) for v, x in sub.groupby("variant", sort=True)["max_abs_dlogit_past"].max().items()}


def prefix_pool_mismatch(rows: pd.DataFrame, runs, size, variant: str = LEAKY) -> dict:
    """{seed: loss with prefix-only pooling - loss with the whole-window pooling `variant` (the
    one whose pool sees the future) trained with}: what evaluating it off its training regime
    costs (no measure of leak); from the leak
    measurement's eval.json columns, else from the runs table."""
    if {"loss_prefix_pool", "loss_full_pool"} <= set(rows.columns):
        return {int(s): float(p) - float(f) for s, p, f in zip(rows["seed"], rows["loss_prefix_pool"],
                                                                rows["loss_full_pool"]) if finite(p) and finite(f)}
    seeds, mm = paired_differences(per_seed(runs, variant, size, "val_loss_prefix_pool"),
                                   per_seed(runs, variant, size, "val_loss"))
    return dict(zip(seeds, map(float, mm)))


def leak_claim(leak, runs, size, conf, variant: str = LEAKY):
    rows = _rows(leak, variant, size)
    mm = prefix_pool_mismatch(rows, runs, size, variant)
    mismatch = _seed_interval(mm, conf)
    structure = leak_structure(leak, size)
    benefit = {int(s): float(t) - float(r) for s, t, r in
               zip(rows.get("seed", []), rows.get("loss_true_future", []), rows.get("loss_replaced_future", []))}
    iv = _seed_interval(benefit, conf)
    details = dict(size=size, structural_max_abs_dlogit=structure, benefit_per_seed=benefit, n_seeds=iv.n,
                   prefix_pool_mismatch=mismatch.mean, prefix_pool_mismatch_ci=[mismatch.low, mismatch.high],
                   prefix_pool_mismatch_per_seed=mm)
    if rows.empty:
        return _result(reason=f"no leak measurement of {variant} at size {size} ({MEASURES['leak_measure']})",
                       **details)
    if structure.get(variant, NAN) == 0.0:  # exactly: a causal pool gives 0, not a small number
        return _result(iv.mean, iv.low, iv.high, NOT_SUPPORTED, "structural: changing the tokens after t changes "
                       f"no logit at positions <= t (max |dlogit| {_f(structure.get(variant))}): nothing can leak",
                       **details)
    v = ci_verdict(iv.low, iv.high, 0.0, "below")
    return _result(iv.mean, iv.low, iv.high, v, f"structural max |dlogit| {_f(structure[variant])} > 0; benefit: "
                   + _side_why(v, iv, 0.0, "below", "true - replaced future loss CI"), **details)


# -- claim 8: block skipping --------------------------------------------------------------------------------
def skip_summary(skip, variant, size, conf) -> list[dict]:
    """Per eps > 0 of (variant, size): mean skipped fraction, the CI over seeds of the loss change
    (gated - dense) and of gated - random skipping."""
    rows = _rows(skip, variant, size)
    out = []
    for eps, g in (rows.groupby("eps", sort=True) if not rows.empty else []):
        if float(eps) <= 0:
            continue
        delta = dict(zip(g["seed"].astype(int), g["loss_skip"].astype(float) - g["loss_dense"].astype(float)))
        vs, frac = _gated_vs_random(g, conf)
        out.append(dict(eps=float(eps), skip_frac=frac, delta=_seed_interval(delta, conf), vs_random=vs))
    return out


def skipping_claim(skip, variant, size, cfg):
    a = cfg["analysis"]
    conf, tol, min_frac = a["confidence"], a["skip_tolerance_nats"], a["skip_min_fraction"]
    grid = skip_summary(skip, variant, size, conf)
    table = [dict(eps=r["eps"], skip_frac=r["skip_frac"], dloss=r["delta"].mean,
                  dloss_ci=[r["delta"].low, r["delta"].high], gated_minus_random=r["vs_random"].mean,
                  gated_minus_random_ci=[r["vs_random"].low, r["vs_random"].high]) for r in grid]
    details = dict(variant=variant, size=size, tolerance_nats=tol, min_fraction=min_frac, by_eps=table)
    if not grid:
        return _result(reason=f"no skip measurement of {variant}/{size} at eps > 0 ({MEASURES['skip_measure']})",
                       **details)
    if max(r["delta"].n for r in grid) < MIN_SEEDS:
        return _result(reason=f"{max(r['delta'].n for r in grid)} seed(s): no interval over seeds", **details)
    # an eps that skips everything is no choice of the gate's: random skipping of as many is the same
    skipping = [r for r in grid if min_frac <= r["skip_frac"] <= 1 - min_frac]
    if not skipping:  # the gate never closes on this grid: refuted; it closes all or nothing: undecided
        v = INCONCLUSIVE if any(r["skip_frac"] > 1 - min_frac for r in grid) else NOT_SUPPORTED
        return _result(verdict=v, reason=f"no eps skips between {_f(min_frac)} and {_f(1 - min_frac)} of the FFN "
                       "evaluations", **details)
    within = [r for r in skipping if finite(r["delta"].high) and r["delta"].high <= tol]
    if not within:
        v = NOT_SUPPORTED if all(r["delta"].low > tol for r in skipping) else INCONCLUSIVE
        return _result(verdict=v, reason=f"no eps that skips keeps the loss change CI within {_f(tol)} nats", **details)
    best = max(within, key=lambda r: (r["skip_frac"], r["eps"]))
    iv = best["vs_random"]
    v = ci_verdict(iv.low, iv.high, 0.0, "below")
    details.update(eps=best["eps"], skip_frac=best["skip_frac"], dloss=best["delta"].mean)
    return _result(iv.mean, iv.low, iv.high, v, f"at eps = {best['eps']:g} ({_f(best['skip_frac'])} of the FFN "
                   f"evaluations skipped, loss change CI {_ci(best['delta'])} within {_f(tol)} nats): "
                   + _side_why(v, iv, 0.0, "below", "gated - random CI"), **details)


# -- claims 10 and 11: beyond the original (ncn.analysis.kvcache, ncn.analysis.knobs) -----------------------------
def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """A per-run measurement table with size as text and seed as an integer, as the analyses wrote them."""
    return df.assign(size=df["size"].astype(str), seed=df["seed"].astype(int))


def _unequal_memory(sub: pd.DataFrame, budgets) -> list:
    """The budgets at which a beta-guided cache and the uniform one differ in bytes per token."""
    by = sub.groupby(["policy", "budget_bits"])["bytes_per_token"].max()
    return [b for b in budgets if ("uniform", b) not in by or not np.isclose(by[("beta", b)], by[("uniform", b)])]


def kvcache_claim(table, variant, size, conf):
    """Claim 10: beta-guided minus uniform KV-cache bits at equal average bits (ncn.analysis.kvcache.claim),
    paired by seed; the oracle and random allocations minus uniform as the bounds."""
    if table is None or table.empty:
        return _result(reason=f"no KV-cache measurement ({MEASURES['kvcache']})")
    df = _typed(table)
    res = kvcache.claim(df, variant, size, conf)
    d = res["details"]
    if "reason" in d:
        return _result(reason=d.pop("reason"), **d)
    b = d["beta_minus_uniform"]
    iv = Interval(b["mean"], b["ci_low"], b["ci_high"], len(b["seeds"]), NAN)
    bounds = ", ".join(f"{p} - uniform {_f(d[f'{p}_minus_uniform']['mean'])} {_ci(_bound(d, p))}"
                       for p in ("oracle", "random"))
    unequal = _unequal_memory(df[(df["variant"] == variant) & (df["size"] == size)], d["budgets"])
    if unequal:
        return _result(b["mean"], b["ci_low"], b["ci_high"], INCONCLUSIVE, "the beta-guided and uniform caches "
                       f"differ in bytes per token at budget(s) {', '.join(map(str, unequal))}", **d)
    if iv.n < MIN_SEEDS:
        return _result(b["mean"], b["ci_low"], b["ci_high"], INCONCLUSIVE,
                       f"{iv.n} paired seed(s): no interval over seeds; bounds: {bounds}", **d)
    v = res["verdict"]
    return _result(b["mean"], b["ci_low"], b["ci_high"], v,
                   _side_why(v, iv, 0.0, "below", "beta - uniform CI") + f"; bounds: {bounds}", **d)


def _bound(d: dict, policy: str) -> Interval:
    x = d[f"{policy}_minus_uniform"]
    return Interval(x["mean"], x["ci_low"], x["ci_high"], len(x["seeds"]), NAN)


def knob_claim(table, variant, size, conf):
    """Claim 11: the precision knob's strength (-dH/dlog2 s) minus the same knob's on the baseline,
    paired by seed, and entropy falling monotonically in every seed (ncn.analysis.knobs.claim)."""
    if table is None or table.empty:
        return _result(reason=f"no knob measurement ({MEASURES['knobs']})")
    res = knobs.claim(_typed(table), variant, BASELINE, size, conf)
    d = res["details"]
    if "reason" in d:
        return _result(res["value"], res["ci_low"], res["ci_high"], INCONCLUSIVE, d.pop("reason"), **d)
    seeds, mono = d["seeds"], d["monotone_seeds"]
    iv = Interval(res["value"], res["ci_low"], res["ci_high"], len(seeds), NAN)
    mono_v = SUPPORTED if len(mono) == len(seeds) else NOT_SUPPORTED
    strength_v = ci_verdict(iv.low, iv.high, 0.0, "above")
    legs = {"monotone": (mono_v, f"entropy falls monotonically in {len(mono)} of {len(seeds)} seeds"),
            f"stronger than on {BASELINE}": (strength_v,
                                             _side_why(strength_v, iv, 0.0, "above", "strength difference CI"))}
    d["legs"] = {k: v for k, (v, _) in legs.items()}
    return _result(iv.mean, iv.low, iv.high, all_of(mono_v, strength_v), _legs_reason(legs), **d)


# -- the registry ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """What every claim is judged on: the largest size, the runs table, the traces by variant
    (every seed), the measurement tables by name (MEASURES; None when not given)."""

    runs: pd.DataFrame
    traces: dict
    cfg: dict
    meta: dict
    size: str
    measures: dict = field(default_factory=dict)
    control: pd.DataFrame | None = None  # the control runs' measurements (ncn.analysis.control)

    @property
    def a(self) -> dict:
        return self.cfg["analysis"]

    @property
    def conf(self) -> float:
        return self.a["confidence"]

    @property
    def pct(self) -> str:
        return f"{round(self.conf * 100)}%"

    @property
    def alpha(self) -> float:
        return 1 - self.conf

    def measure(self, name: str) -> pd.DataFrame | None:
        return self.measures.get(name)

    def static_trace(self) -> pd.DataFrame | None:
        """The traces of the context-free (static) variants: their signals cannot vary per token."""
        t = [df for v, df in sorted(self.traces.items()) if spec(v).static]
        return pd.concat(t, ignore_index=True) if t else None


@dataclass(frozen=True)
class Claim:
    """One claim. Words, each a function of the setting (and, for the statistic and the decision
    rule, of the variant and result): `statistic`, `null` (the null hypothesis), `control`,
    `threshold` (the decision rule); `value_label` names the value in the table. `compute(setting,
    variant) -> result` is the verdict function. subject=None: judged for "the NCN", with the
    asrun and static variants beside it in details.also; else for that variant only."""

    key: str
    text: str
    origin: str
    value_label: str
    statistic: Callable[[Setting, str | None], str]
    null: Callable[[Setting], str]
    control: Callable[[Setting], str]
    threshold: Callable[[Setting], str]
    compute: Callable[[Setting, str], dict]
    subject: str | None = None


def _reason_up(res: dict) -> dict:
    """A result whose reason sits in its details (ncn.analysis.control's) with the reason on top,
    as every claim's: the verdict's legs when it gives none."""
    d = res["details"]
    why = d.pop("reason", "") or "; ".join(f"{k[len('verdict_'):]}: {v}" for k, v in d.items()
                                           if k.startswith("verdict_"))
    return {**res, "reason": why}


def _skip_eps_note(s: Setting) -> str:
    return f"max(gate_eps) = {max(s.a['gate_eps']):g}"


CLAIMS = [
    Claim(key="ab_beats_baseline", text="The NCN beats an iso-parameter baseline", origin="original",
          value_label="dPPL",
          statistic=lambda s, v: (f"mean paired dPPL = PPL({v}) - PPL({BASELINE}) over seeds at size {s.size}, "
                                  f"{s.pct} t-CI"),
          null=lambda s: "the NCN's perplexity equals the baseline's (mean paired dPPL = 0)",
          control=lambda s: (f"the iso-parameter baseline ({BASELINE}): the same Transformer with d_ff widened to "
                             "the NCN's parameter count, trained on the same batches in the same order, paired by seed"),
          threshold=lambda s: "supported if the CI lies below 0; not supported if it lies at or above 0",
          compute=lambda s, v: ab_claim(s.runs, v, s.size, s.conf)),
    Claim(key="baseline_ppl", text="A standard Transformer struggles to break 5.5 PPL at the original's budget",
          origin="original", value_label="PPL",
          statistic=lambda s, v: (f"validation PPL of the baseline ({BASELINE}) at size {s.size}, {s.pct} t-CI over "
                                  "seeds"),
          null=lambda s: f"the baseline's PPL is at most {s.a['ppl_threshold']:g}",
          control=lambda s: (f"the premise: the GPT-2 tokenizer and a budget within {BUDGET_FACTOR:g}x of the "
                             f"original's {ORIGINAL_TOKENS / 1e6:g}M tokens; otherwise the claim is not applicable"),
          threshold=lambda s: f"supported if the CI lies above {s.a['ppl_threshold']:g}; not supported if at or below",
          compute=lambda s, v: baseline_ppl_claim(s.runs, s.size, s.cfg, s.meta), subject=BASELINE),
    Claim(key="layer_specialisation", text="Layers specialise: the mean precision beta differs across layers",
          origin="original", value_label="beta contrast",
          statistic=lambda s, v: (f"per-(seed, layer) mean beta of {v} on held-out sentences at size {s.size}: the "
                                  "largest-minus-smallest layer contrast per seed, " + s.pct + " t-CI; two-way ANOVA "
                                  "layer x seed with seeds as blocks (Friedman test beside it)"),
          null=lambda s: "every layer has the same mean beta: no layer effect beyond the seed-to-seed variation",
          control=lambda s: (f"seed blocking, and the smallest effect of interest {s.a['layer_effect_floor']:g} "
                             "(analysis.layer_effect_floor; the original contrasted about 0.74 with 0.68)"),
          threshold=lambda s: (f"supported if ANOVA p < {s.alpha:g} and the contrast's CI lies above "
                               f"{s.a['layer_effect_floor']:g}; not supported if the CI lies below it"),
          compute=lambda s, v: layer_claim(s.traces.get(v), s.cfg)),
    Claim(key="phasic_but", text="The signals react phasically to the narrative twist at 'but'", origin="original",
          value_label="excess change at 'but'",
          statistic=lambda s, v: (f"signal change at '{s.a['probe_word']}' (mean over layers of |s(t) - s(t-1)| for "
                                  f"g, beta, gamma) of {v} at size {s.size}, averaged over seeds: the twist minus the "
                                  f"mean of position-matched controls, with the {s.pct} prediction interval for one "
                                  "sentence; the twist minus its minimal pairs at the first differing token, t-CI over "
                                  "seeds; the partial Spearman correlation of change with surprisal, Fisher-z CI over "
                                  "seeds"),
          null=lambda s: (f"'{s.a['probe_word']}' in the twist changes the signals no more than in a neutral sentence "
                          "at the same position or than a non-twist continuation of the same prefix, and the change "
                          "is unrelated to surprisal"),
          control=lambda s: (f"{len(s.a['control_sentences'])} neutral sentences with '{s.a['probe_word']}' at the "
                             "twist's position, minimal pairs (the twist's prefix with a non-twist continuation), and "
                             "token position and log unigram frequency partialled out of the correlation"),
          threshold=lambda s: ("supported if all three lie above 0 (the twist above the prediction interval, both CIs "
                               "above 0); not supported if any lies at or below 0, or the signals are constant"),
          compute=lambda s, v: phasic_claim(s.traces.get(v), s.conf)),
    Claim(key="homeostasis", text="Homeostasis: an active controller keeps the gain in its band, L_reg bounded",
          origin="original", value_label="fraction of gains in band",
          statistic=lambda s, v: (f"fraction of traced (layer, token) gains of {v} in [{s.a['gain_band'][0]:g}, "
                                  f"{s.a['gain_band'][1]:g}] at size {s.size}, {s.pct} t-CI over seeds; with the "
                                  "per-token signal variance relative to a regulariser-only controller (log10 ratio) "
                                  "and L_reg / reg_lambda over the second half of training"),
          null=lambda s: (f"the controller varies its signals no more than {s.a['activity_min_ratio']:g}x a "
                          "controller trained on the regulariser alone, or L_reg is not held bounded, or the gains "
                          "leave the band"),
          control=lambda s: ("the same controller trained from the same initialisation on the regulariser alone "
                             "(it never sees the language-modelling loss), and the static variant's zero variance"),
          threshold=lambda s: (f"supported if the variance-ratio CI lies above {s.a['activity_min_ratio']:g}x, the "
                               f"L_reg / reg_lambda CI below {s.a['reg_bound']:g} and the band-fraction CI above "
                               f"{s.a['gain_min_fraction']:g}; not supported if any lies on the other side"),
          compute=lambda s, v: homeostasis_claim(s.traces.get(v), s.measure("regonly"), s.runs, v, s.size, s.cfg,
                                                 s.static_trace())),
    Claim(key="gamma_gates", text="The FFN gate closes (gamma near 0) for some layers and tokens", origin="original",
          value_label="fraction closed",
          statistic=lambda s, v: (f"fraction of traced (layer, token) of {v} at size {s.size} with gamma < "
                                  f"{_skip_eps_note(s)} whose FFN branch adds less than {s.a['gate_branch_ratio']:g} "
                                  f"of the residual stream's norm (||g gamma FFN(x)|| / ||x||), {s.pct} t-CI over "
                                  "seeds; "
                                  "and the loss of skipping those FFN evaluations minus skipping as many at random, "
                                  "paired by seed"),
          null=lambda s: (f"the gate closes for at most {s.a['gate_min_fraction']:g} of (layer, token), or the "
                          "evaluations it closes are no less useful than random ones"),
          control=lambda s: ("random skipping of the same number of FFN evaluations (seeded draws, averaged), and the "
                             "branch's contribution, which a rescaled W_down cannot fake as gamma alone can"),
          threshold=lambda s: (f"supported if the closed-fraction CI lies above {s.a['gate_min_fraction']:g} and the "
                               "gated-minus-random loss CI below 0; not supported if either lies on the other side, "
                               "or nothing is gated"),
          compute=lambda s, v: gate_claim(s.traces.get(v), s.measure("skip_measure"), v, s.size, s.cfg)),
    Claim(key="asrun_leak", text="The as-run NCN uses future tokens through its pooling", origin="replication",
          value_label="dloss, true - replaced future",
          statistic=lambda s, v: (f"loss of {v} at size {s.size} with the true future minus with the tokens after "
                                  "t replaced by another window's (whole-window pooling both, scored at positions <= "
                                  f"t), paired by seed, {s.pct} t-CI; the structural max |dlogit| at positions <= t "
                                  "and the prefix-pool mismatch reported apart"),
          null=lambda s: "the future carries nothing the model uses: the true future lowers the loss by nothing",
          control=lambda s: ("the same model and windows with the future replaced by another window's tokens; the "
                             "causal variants, whose structural max |dlogit| must be 0"),
          threshold=lambda s: ("supported if the CI lies below 0; not supported if it lies at or above 0, or the "
                               "structural max |dlogit| is 0"),
          compute=lambda s, v: leak_claim(s.measure("leak_measure"), s.runs, s.size, s.conf, v), subject=LEAKY),
    Claim(key="block_skipping", text="Skipping the FFN where the gate is low saves computation within a loss tolerance",
          origin="original, future work", value_label="dloss, gated - random skip",
          statistic=lambda s, v: (f"for {v} at size {s.size}, at the eps skipping the largest fraction (at least "
                                  f"{s.a['skip_min_fraction']:g}) whose loss change CI stays within "
                                  f"{s.a['skip_tolerance_nats']:g} nats: loss of gated skipping minus random skipping "
                                  f"of as many FFN evaluations, paired by seed, {s.pct} t-CI"),
          null=lambda s: "skipping by the gate costs as much loss as skipping at random",
          control=lambda s: "random skipping of the same fraction of FFN evaluations, on every seed",
          threshold=lambda s: ("supported if an eps stays within the tolerance and its CI lies below 0; not supported "
                               "if the CI lies at or above 0, or every eps that skips costs more than the tolerance"),
          compute=lambda s, v: skipping_claim(s.measure("skip_measure"), v, s.size, s.cfg)),
    Claim(key="control_steers", text=control.CLAIM_TEXT, origin=control.CLAIM_ORIGIN,
          value_label=f"steer ({control.LABEL}=1 - {control.LABEL}=0)",
          statistic=lambda s, v: control.claim_statistic(s.cfg),
          null=lambda s: (f"the {control.LABEL} signal changes neither the generated stories nor the held-out loss "
                          "(both differences 0)"),
          control=lambda s: (f"the same model with {control.LABEL}=0 (generation) and with the flipped label "
                             "(held-out loss), paired by seed"),
          threshold=lambda s: "supported if both CIs lie above 0; not supported if either lies at or below 0",
          compute=lambda s, v: _reason_up(control.control_claim(s.control, s.cfg, v)),
          subject=CONTROLLED),
    Claim(key=kvcache.CLAIM_KEY, text=kvcache.CLAIM_TEXT, origin=kvcache.CLAIM_ORIGIN,
          value_label="dloss, beta - uniform bits",
          statistic=lambda s, v: (f"held-out loss change of {v} at size {s.size} with its KV cache quantised by "
                                  "beta-guided bits per layer (more bits to the layers of high mean beta) minus "
                                  "uniform bits at the same average (budgets "
                                  f"{', '.join(map(str, s.a['kv_budgets']))} bits, levels +/- {s.a['kv_spread']}), "
                                  f"mean over budgets, paired by seed, {s.pct} t-CI; the oracle (bits by measured "
                                  "per-layer sensitivity) and random allocations minus uniform reported as the bounds"),
          null=lambda s: "beta-guided allocation loses at least as much as uniform allocation at equal cache memory",
          control=lambda s: ("uniform allocation at the same average bits per cached element (equal bytes per token) "
                             "on the same held-out tokens and seed; the oracle and random allocations as the best and "
                             "the chance bound"),
          threshold=lambda s: ("supported if the CI lies below 0; not supported if it lies at or above 0; "
                               "inconclusive if the two caches differ in memory"),
          compute=lambda s, v: kvcache_claim(s.measure("kvcache"), v, s.size, s.conf)),
    Claim(key=knobs.CLAIM_KEY, text=knobs.CLAIM_TEXT, origin=knobs.CLAIM_ORIGIN,
          value_label=f"knob strength, NCN - {BASELINE}",
          statistic=lambda s, v: (f"knob strength -dH/dlog2(s), the least-squares slope of held-out next-token "
                                  f"entropy H against log2 of the factor s scaling beta in every layer (s in "
                                  f"{', '.join(f'{x:g}' for x in s.a['knob_scales'])}), of {v} minus that of the "
                                  f"same knob on {BASELINE} (its queries scaled) at size {s.size}, paired by seed, "
                                  f"{s.pct} t-CI; and the seeds in which H falls strictly monotonically in s"),
          null=lambda s: (f"scaling beta moves the entropy no more than scaling the queries of {BASELINE}, or not "
                          "monotonically"),
          control=lambda s: (f"the same knob on the baseline ({BASELINE}), whose queries it scales, on the same "
                             "held-out tokens, paired by seed"),
          threshold=lambda s: ("supported if the entropy falls monotonically in every seed and the CI lies above 0; "
                               "not supported if a seed is not monotone or the CI lies at or below 0"),
          compute=lambda s, v: knob_claim(s.measure("knobs"), v, s.size, s.conf)),
]


def _judge_variant(claim: Claim, s: Setting, variant: str | None) -> dict:
    if variant is None:
        return _result(reason="no NCN variant trained")
    return claim.compute(s, variant)


def judge(i: int, claim: Claim, s: Setting, ncn: str | None, also: list[str]) -> dict:
    """claims.json's entry of claim number i."""
    variant = claim.subject or ncn
    res = _judge_variant(claim, s, variant)
    if claim.subject is None and also:
        res["details"]["also"] = {v: _judge_variant(claim, s, v) for v in also}
    return {"id": i, "key": claim.key, "claim": claim.text, "origin": claim.origin, "variant": variant,
            "size": s.size, "value_label": claim.value_label, "statistic": claim.statistic(s, variant),
            "null": claim.null(s), "control": claim.control(s), "threshold": claim.threshold(s), **res}


def compute(runs: pd.DataFrame, traces: dict, cfg: dict, meta: dict, measures: dict | None = None,
            control_runs: pd.DataFrame | None = None) -> dict:
    s = Setting(runs, traces, cfg, meta, largest_size(cfg), dict(measures or {}), control_runs)
    ncn = primary_ncn(cfg)
    also = [v for v in cfg["variants"] if v != ncn and (spec(v).sees_future or spec(v).static)]
    claims = [judge(i, claim, s, ncn, also) for i, claim in enumerate(CLAIMS, start=1)]
    return {"profile": cfg["profile"], "size": s.size, "ncn_variant": ncn, "confidence": s.conf,
            "tokenizer_kind": meta.get("tokenizer_kind"), "claims": claims}


# -- the paper's table and paragraphs ------------------------------------------------------------------------
def _g(x) -> str:
    """Claims-table numbers: 3 significant digits, math mode; missing → en dash."""
    if tables.is_missing(x):
        return "--"
    x = float(x)
    if math.isinf(x):
        return r"$\infty$" if x > 0 else r"$-\infty$"
    s = f"{x:.3g}"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m} \\times 10^{{{int(e)}}}"
    return f"${s}$"


def _value_ci(c: dict) -> str:
    val = _g(c["value"])
    if not tables.is_missing(c["ci_low"]):
        val += f" [{_g(c['ci_low'])}, {_g(c['ci_high'])}]"
    return val


# The claims table's columns: the claim's words take what the fixed columns leave of the line.
CLAIMS_TABLE_ALIGN = ("@{}r" + tables.ragged("X") + tables.ragged("0.11") + tables.ragged("0.14")
                      + tables.ragged("0.19") + "l@{}")


def claims_tex(doc: dict) -> str:
    """The claims table: a tabularx as wide as the line, every column of words ragged right."""
    header = [r"\#", "Claim", "Origin", "Value", "Value [interval]", "Verdict"]
    rows = [[str(c["id"]), tables.prose(c["claim"]), tables.prose(c["origin"]), tables.prose(c["value_label"]),
             _value_ci(c), tables.escape(c["verdict"])] for c in doc["claims"]]
    return tables.booktabs(header, rows, CLAIMS_TABLE_ALIGN, full_width=True)


def claims_paragraphs(doc: dict) -> str:
    """One paragraph per claim: its test, null hypothesis, control, decision rule and result."""
    out = []
    for c in doc["claims"]:
        e = tables.prose
        out.append(f"\\paragraph{{Claim {c['id']} ({e(c['origin'])}): {e(c['claim'])}.}}\n"
                   f"\\emph{{Test:}} {e(c['statistic'])}. \\emph{{Null hypothesis:}} {e(c['null'])}. "
                   f"\\emph{{Control:}} {e(c['control'])}. \\emph{{Decision:}} {e(c['threshold'])}. "
                   f"\\emph{{Result:}} {e(c['value_label'])} {_value_ci(c)}, \\textbf{{{e(c['verdict'])}}}"
                   + (f": {e(c['reason'])}." if c.get("reason") else "."))
    return "\n\n".join(out) + "\n"


# -- the command ----------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    options.add_runs_table(p)
    p.add_argument("--traces", nargs="*", default=[], metavar="CSV",
                   help="traces at the largest size, every seed (results/traces/V_S_seedN.csv); a missing one "
                        "makes the trace-based claims inconclusive")
    for name, path in MEASURES.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="CSV",
                       help=f"results/{path} (without it, the claims that read it are inconclusive)")
    options.add_config(p)
    options.add_data(p)
    p.add_argument("--control", help="the control runs' table ('ncn analyze control --runs-csv'); missing: "
                   "the control claim is inconclusive")
    p.add_argument("--json", required=True, help="output claims JSON (results/claims.json)")
    options.add_table(p, csv=False)
    p.add_argument("--paragraphs", required=True,
                   help="output LaTeX: one paragraph per claim (test, null, control, result) that the paper \\input's")


def read_traces(paths) -> dict:
    """{variant: the traces of every seed, concatenated} of the given trace CSVs."""
    from ncn.analysis.trace import read_trace

    by, seen = {}, set()
    for path in paths:
        df = read_trace(path)
        key = (str(df["variant"].iloc[0]), int(df["seed"].iloc[0]))
        if key in seen:
            raise NCNError(f"two traces of variant {key[0]}, seed {key[1]} given ({path}); pass one per seed")
        seen.add(key)
        by.setdefault(key[0], []).append(df)
    return {v: pd.concat(dfs, ignore_index=True).sort_values(["seed", "sentence_id", "pos", "layer"], kind="stable")
            for v, dfs in by.items()}


def read_measure(path, name: str) -> pd.DataFrame | None:
    """A measurement table (MEASURES) or None when not given; its columns checked."""
    if path is None:
        return None
    df = tables.read_table(path)
    missing = [c for c in MEASURE_COLUMNS[name] if c not in df]
    if missing and not (df.empty and len(df.columns) == 0):
        raise NCNError(f"{path}: columns missing: {', '.join(missing)} (the {name} measurement, "
                       f"{MEASURES[name]}; rebuild it)")
    return df


def main(args, cfg: dict) -> None:
    from ncn.data import load_meta

    runs, traces = load_runs_table(args.runs_table), read_traces(args.traces)
    measures = {name: read_measure(getattr(args, name), name) for name in MEASURES}
    ctl = control.read_runs(args.control) if getattr(args, "control", None) else None
    doc = nan_to_none(compute(runs, traces, cfg, load_meta(args.data), measures, ctl))
    write_json(args.json, doc)
    tables.write_tex(args.tex, claims_tex(doc))
    tables.write_tex(args.paragraphs, claims_paragraphs(doc))
    for c in doc["claims"]:
        print(f"  claim {c['id']} {c['key']:<22} {c['verdict']}", file=sys.stderr)


# -- the prose's macros ---------------------------------------------------------------------------------------
ORIGIN_STEMS = {"original": "Original", control.CLAIM_ORIGIN: "Promise", "original, future work": "FutureWork",
                "replication": "Replication"}
VERDICT_STEMS = {"supported": "Supported", "not supported": "NotSupported", "inconclusive": "Inconclusive",
                 "not applicable": "NotApplicable"}


def _tally(claims: list, prefix: str) -> dict:
    verdicts = [c["verdict"] for c in claims]
    return {f"{prefix}Total": str(len(claims)), **{f"{prefix}{VERDICT_STEMS[v]}": str(verdicts.count(v))
                                                  for v in VERDICTS}}


def numbers(doc: dict, cfg: dict) -> dict:
    """The prose's macros of claims.json: the verdict counts, overall and by origin
    (\\ClaimsOriginalSupported, ...), per claim its verdict, value, interval, statistic, threshold,
    text, origin and reason (\\ClaimOneVerdict, ...)."""
    claims = doc["claims"]
    m = _tally(claims, "Claims")
    for origin, stem in ORIGIN_STEMS.items():
        m.update(_tally([c for c in claims if c.get("origin") == origin], f"Claims{stem}"))
    for c in claims:
        stem = macro_name("claim", c["id"])
        m[stem + "Verdict"] = c["verdict"]
        m[stem + "Value"] = fmt_sig(c["value"])
        m[stem + "CILow"] = fmt_sig(c["ci_low"])
        m[stem + "CIHigh"] = fmt_sig(c["ci_high"])
        # Claims judged by a constant or a measurement have no interval (null bounds).
        m[stem + "CI"] = (rf"\ConfidencePct{{}} interval [{fmt_sig(c['ci_low'])}, {fmt_sig(c['ci_high'])}]"
                          if finite(c["ci_low"]) and finite(c["ci_high"]) else "no interval")
        m[stem + "Statistic"] = tables.prose(c["statistic"])
        m[stem + "Threshold"] = tables.prose(c["threshold"])
        m[stem + "Text"] = tables.prose(c["claim"])
        m[stem + "Origin"] = tables.prose(c.get("origin", ""))
        m[stem + "Reason"] = tables.prose(c.get("reason") or "")
    return {"claims (results/claims.json)": m}
