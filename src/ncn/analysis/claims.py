"""One measured verdict per claim of the original NCN write-up: results/claims.json + a table.

All claims are judged at the largest size, for "the NCN" = the `causal` variant (else the first
NCN variant trained); `asrun` (the original as it ran) is reported beside it in
`details.also`. Verdicts: "supported" | "not supported" | "inconclusive". A CI-based verdict
is "supported" only when the whole CI lies on the claim's side of the threshold; with fewer
than two seeds the CI is undefined and the verdict is "inconclusive" (stats.ci_verdict).

Each claim is one `Claim` object in CLAIMS (its id is its position): key, text, the statistic and
the threshold in words, and the compute function (ab_claim, baseline_ppl_claim, ...). A new
claim is one entry there (and its sentence in paper/sections/results.tex).

 1 ab_beats_baseline   ΔPPL = PPL(NCN) − PPL(none), paired by seed; supported if CI < 0.
 2 baseline_ppl        the baseline's PPL vs analysis.ppl_threshold (5.5, the original's GPT-2
                       number). Only comparable under the GPT-2 tokenizer: otherwise the verdict
                       uses bits-per-byte against the threshold converted with GPT-2's tokens per
                       byte on our validation text (bpb = log2(PPL) · tokens/byte); supported if
                       the CI lies above ("struggles to break").
 3 layer_specialisation  one-way ANOVA of the final per-layer mean β (train_log.csv, last logged
                       signal step) with seeds as replicates: is the layer effect larger than
                       seed-to-seed variation? supported if p < 1 − confidence.
 4 phasic_but          per-token change c_t = mean over layers and the three signals of
                       |s(l,t) − s(l,t−1)|, for t ≥ 2 (token and its predecessor are real tokens).
                       Lexical control: c at probe_word in the twist sentence (trace_sentences[0])
                       vs c at probe_word in control_sentences: rank p = (1 + #controls ≥ twist) /
                       (1 + n). And Spearman(c_t, surprisal_t) over every traced token t ≥ 2.
                       supported if rank p ≤ α and ρ > 0 with p < α.
 5 homeostasis         fraction of traced (layer, token ≥ 1) gains in analysis.gain_band;
                       supported if ≥ gain_min_fraction AND L_reg moved: |last − first| of the
                       train_log `reg` column > reg_move_rel · |first| in every seed.
 6 gamma_gates         fraction of traced (layer, token ≥ 1) with γ < ε for ε in gate_eps;
                       supported if the fraction at max(gate_eps) ≥ gate_min_fraction.
 7 asrun_leak          val_loss − val_loss_prefix_pool of asrun per seed (eval.json); supported
                       (it leaks) if the CI < 0: seeing the future lowers its loss.
 8 control_steers      (origin "original, promise") the control variant at its largest size:
                       frac. of sampled stories with dialogue under dialogue=1 − dialogue=0, and
                       held-out loss flipped − true label, paired over seeds; supported if both CIs
                       > 0 (ncn.analysis.control).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ncn.analysis import control, options, tables
from ncn.analysis.macros import finite, fmt_sig, macro_name, tex_escape
from ncn.analysis.runs import (SIGNALS, final_layer_means, largest_size, load_runs_table, per_seed, primary_ncn,
                               read_train_log)
from ncn.analysis.stats import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ci_verdict, empirical_p_greater,
                                nan_to_none, one_way_anova, paired_differences, spearman, t_interval)
from ncn.errors import NCNError
from ncn.fileio import write_json
from ncn.variants import control_names

NAN = math.nan

def _result(value=NAN, low=NAN, high=NAN, verdict=INCONCLUSIVE, **details):
    return {"value": value, "ci_low": low, "ci_high": high, "verdict": verdict, "details": details}


# -- claim 1 ---------------------------------------------------------------------------------------
def ab_claim(runs, variant, size, conf):
    seeds, d = paired_differences(per_seed(runs, variant, size, "val_ppl"), per_seed(runs, "none", size, "val_ppl"))
    if not seeds:
        return _result(reason=f"no paired runs of {variant} and none at size {size}")
    iv = t_interval(d, conf)
    _, dl = paired_differences(per_seed(runs, variant, size, "val_loss"), per_seed(runs, "none", size, "val_loss"))
    ld = t_interval(dl, conf)
    return _result(iv.mean, iv.low, iv.high, ci_verdict(iv.low, iv.high, 0.0, "below"),
                   variant=variant, size=size, seeds=seeds, dppl_per_seed=list(d), n_pairs=len(seeds),
                   dloss_mean=ld.mean, dloss_ci_low=ld.low, dloss_ci_high=ld.high,
                   ppl_variant=t_interval(per_seed(runs, variant, size, "val_ppl").values(), conf).mean,
                   ppl_baseline=t_interval(per_seed(runs, "none", size, "val_ppl").values(), conf).mean)


# -- claim 2 ---------------------------------------------------------------------------------------
def gpt2_tokens_per_byte(cfg: dict, data_dir, meta: dict, max_tokens: int = 200_000) -> tuple[float, str]:
    """GPT-2 tokens per UTF-8 byte on (the start of) our validation text, and how it was measured."""
    if meta.get("tokenizer_kind") == "gpt2":
        v = meta.get("valid", {})
        if v.get("tokens") and v.get("bytes"):
            return v["tokens"] / v["bytes"], "meta.json valid tokens/bytes (GPT-2 tokenizer)"
    gdir = cfg["tokenizer"].get("gpt2_dir")
    names = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
    if not gdir or not any((Path(gdir) / a).is_file() and (Path(gdir) / b).is_file() for a, b in names):
        return NAN, f"GPT-2 vocab not found in tokenizer.gpt2_dir={gdir}"
    from ncn.analysis.trace import load_tokenizer
    from ncn.data import open_split
    from ncn.data.tokenizer import gpt2 as gpt2_tokenizer

    gpt2 = gpt2_tokenizer(gdir)
    ours = load_tokenizer(data_dir)
    from ncn.analysis.trace import decode_chunks

    ids = np.asarray(open_split(data_dir, "valid", meta)[:max_tokens], dtype=np.int64)
    texts = decode_chunks(ids, meta["eot_id"], ours)
    n_tok = sum(len(e.ids) for e in gpt2.encode_batch(texts, add_special_tokens=False))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if n_bytes == 0:
        return NAN, "no validation text"
    return n_tok / n_bytes, f"GPT-2 tokens / UTF-8 bytes of the text of the first {len(ids)} validation tokens"


def baseline_ppl_claim(runs, size, cfg, meta, tpb, tpb_how):
    a = cfg["analysis"]
    conf, thr = a["confidence"], a["ppl_threshold"]
    ppl = t_interval(per_seed(runs, "none", size, "val_ppl").values(), conf)
    bpb = t_interval(per_seed(runs, "none", size, "val_bpb").values(), conf)
    kind = meta.get("tokenizer_kind", "unknown")
    thr_bpb = math.log2(thr) * tpb if math.isfinite(tpb) else NAN
    details = dict(size=size, tokenizer_kind=kind, ppl_mean=ppl.mean, ppl_ci_low=ppl.low, ppl_ci_high=ppl.high,
                   bpb_mean=bpb.mean, bpb_ci_low=bpb.low, bpb_ci_high=bpb.high, ppl_threshold=thr,
                   gpt2_tokens_per_byte=tpb, gpt2_tokens_per_byte_source=tpb_how, bpb_threshold=thr_bpb, n_seeds=ppl.n)
    if ppl.n == 0:
        return _result(reason=f"no baseline runs at size {size}", **details)
    if kind == "gpt2":
        details["compared"] = "PPL (GPT-2 tokenizer, as the original)"
        return _result(ppl.mean, ppl.low, ppl.high, ci_verdict(ppl.low, ppl.high, thr, "above"), **details)
    details["compared"] = f"bits-per-byte: our {kind} tokenizer's PPL is not comparable to GPT-2's"
    if not math.isfinite(thr_bpb):
        return _result(bpb.mean, bpb.low, bpb.high, INCONCLUSIVE, reason=tpb_how, **details)
    return _result(bpb.mean, bpb.low, bpb.high, ci_verdict(bpb.low, bpb.high, thr_bpb, "above"), **details)


# -- claim 3 ---------------------------------------------------------------------------------------
def layer_claim(runs, variant, size, conf):
    sub = runs[(runs["variant"] == variant) & (runs["size"] == size)]
    per = {}
    for run_dir, seed in zip(sub["run_dir"], sub["seed"]):
        m = final_layer_means(read_train_log(run_dir), "beta")
        if len(m):
            per[int(seed)] = m
    if not per:
        return _result(reason=f"no per-layer beta statistics in the train logs of {variant}/{size}")
    mat = np.vstack([per[s] for s in sorted(per)])  # (seeds, layers)
    F, p = one_way_anova(list(mat.T))
    layer_means = mat.mean(axis=0)
    pooled_sd = float(np.sqrt(mat.var(axis=0, ddof=1).mean())) if mat.shape[0] > 1 else NAN
    rng = float(layer_means.max() - layer_means.min())
    alpha = 1 - conf
    verdict = INCONCLUSIVE if not math.isfinite(p) else (SUPPORTED if p < alpha else NOT_SUPPORTED)
    return _result(F, NAN, NAN, verdict, variant=variant, size=size, p_value=p, alpha=alpha,
                   n_seeds=mat.shape[0], n_layers=mat.shape[1], layer_means=list(layer_means),
                   range_of_layer_means=rng, pooled_seed_sd=pooled_sd,
                   range_over_seed_sd=rng / pooled_sd if pooled_sd and math.isfinite(pooled_sd) else NAN)


# -- claim 4 ---------------------------------------------------------------------------------------
def token_changes(trace: pd.DataFrame, signals=SIGNALS) -> pd.DataFrame:
    """Per (sentence, pos ≥ 2): change = mean over layers and `signals` of |s(l,t) − s(l,t−1)|,
    with the token's surprisal and probe flag."""
    t = trace.sort_values(["sentence_id", "layer", "pos"])
    diffs = t.groupby(["sentence_id", "layer"], sort=False)[list(signals)].diff().abs()
    t = t.assign(change=diffs.mean(axis=1, skipna=False))
    t = t[t["pos"] >= 2]
    out = t.groupby(["sentence_id", "pos"], sort=True).agg(
        kind=("kind", "first"), change=("change", "mean"), surprisal=("surprisal", "first"), probe=("probe", "max"))
    return out.reset_index()


def lexical_control(changes: pd.DataFrame) -> tuple[float, np.ndarray]:
    """(change at the probe in the twist sentence, changes at the probe in the controls)."""
    probes = changes[changes["probe"] == 1]
    twist = probes[probes["kind"] == "trace"].sort_values("sentence_id")
    twist_c = float(twist["change"].iloc[0]) if len(twist) else NAN
    return twist_c, probes[probes["kind"] == "control"]["change"].to_numpy(dtype=float)


def phasic_claim(trace, conf):
    alpha = 1 - conf
    if trace is None:
        return _result(reason="no trace")
    changes = token_changes(trace)
    twist, controls = lexical_control(changes)
    ci = t_interval(controls, conf)
    p_lex = empirical_p_greater(twist, controls)
    rho, p_rho, n_rho = spearman(changes["change"], changes["surprisal"])
    per_signal = {}
    for s in SIGNALS:
        ch = token_changes(trace, (s,))
        tw, co = lexical_control(ch)
        r, pr, _ = spearman(ch["change"], ch["surprisal"])
        per_signal[s] = {"twist_change": tw, "control_mean": float(np.mean(co)) if len(co) else NAN,
                         "rank_p": empirical_p_greater(tw, co), "spearman_rho": r, "spearman_p": pr}
    min_controls = math.ceil(1 / alpha) - 1  # fewer cannot reach p ≤ alpha
    value = twist - ci.mean if math.isfinite(twist) else NAN
    details = dict(twist_change=twist, control_mean=ci.mean, control_sd=ci.sd, n_controls=len(controls),
                   min_controls_for_alpha=min_controls, rank_p=p_lex, alpha=alpha, spearman_rho=rho,
                   spearman_p=p_rho, spearman_n=n_rho, per_signal=per_signal,
                   z_vs_controls=(twist - ci.mean) / ci.sd if ci.sd and math.isfinite(ci.sd) and ci.sd > 0 else NAN)
    if not math.isfinite(twist) or len(controls) < min_controls or not math.isfinite(rho):
        reason = ("probe word not found in the twist sentence" if not math.isfinite(twist) else
                  f"{len(controls)} control sentences < {min_controls} needed" if len(controls) < min_controls
                  else "Spearman undefined (constant signals or too few tokens)")
        return _result(value, twist - ci.high, twist - ci.low, INCONCLUSIVE, reason=reason, **details)
    ok = p_lex <= alpha and rho > 0 and p_rho < alpha
    return _result(value, twist - ci.high, twist - ci.low, SUPPORTED if ok else NOT_SUPPORTED, **details)


# -- claim 5 ---------------------------------------------------------------------------------------
def reg_moves(runs, variant, size, rel):
    sub = runs[(runs["variant"] == variant) & (runs["size"] == size)]
    per = {}
    for run_dir, seed in zip(sub["run_dir"], sub["seed"]):
        reg = read_train_log(run_dir)["reg"].dropna().to_numpy(dtype=float)
        if len(reg) >= 2:
            first, last = float(reg[0]), float(reg[-1])
            change = abs(last - first) / abs(first) if first != 0 else (math.inf if last != first else 0.0)
            per[int(seed)] = {"first": first, "last": last, "rel_change": change, "moved": change > rel}
    return per


def homeostasis_claim(trace, runs, variant, size, cfg):
    a = cfg["analysis"]
    lo, hi = a["gain_band"]
    if trace is None:
        return _result(reason="no trace")
    g = trace.loc[trace["pos"] >= 1, "g"].to_numpy(dtype=float)
    frac = float(np.mean((g >= lo) & (g <= hi))) if len(g) else NAN
    regs = reg_moves(runs, variant, size, a["reg_move_rel"])
    moved = bool(regs) and all(r["moved"] for r in regs.values())
    details = dict(variant=variant, size=size, gain_band=[lo, hi], fraction_in_band=frac,
                   min_fraction=a["gain_min_fraction"], g_min=float(g.min()) if len(g) else NAN,
                   g_max=float(g.max()) if len(g) else NAN, g_mean=float(g.mean()) if len(g) else NAN,
                   n_values=len(g), reg_move_rel=a["reg_move_rel"], reg_per_seed=regs, reg_moved=moved)
    if not len(g) or not regs:
        return _result(frac, NAN, NAN, INCONCLUSIVE, reason="no traced gains or no reg in the train logs", **details)
    ok = frac >= a["gain_min_fraction"] and moved
    return _result(frac, NAN, NAN, SUPPORTED if ok else NOT_SUPPORTED, **details)


# -- claim 6 ---------------------------------------------------------------------------------------
def gate_claim(trace, cfg):
    a = cfg["analysis"]
    if trace is None:
        return _result(reason="no trace")
    gam = trace.loc[trace["pos"] >= 1, "gamma"].to_numpy(dtype=float)
    eps = sorted(a["gate_eps"])
    fr = {f"{e:g}": float(np.mean(gam < e)) for e in eps}
    value = fr[f"{eps[-1]:g}"]
    verdict = SUPPORTED if value >= a["gate_min_fraction"] else NOT_SUPPORTED
    return _result(value, NAN, NAN, verdict, fraction_below=fr, eps=eps, min_fraction=a["gate_min_fraction"],
                   gamma_min=float(gam.min()), gamma_mean=float(gam.mean()),
                   gamma_q05=float(np.quantile(gam, 0.05)), n_values=len(gam))


# -- claim 7 ---------------------------------------------------------------------------------------
def leak_claim(runs, size, conf):
    seeds, d = paired_differences(per_seed(runs, "asrun", size, "val_loss"),
                                  per_seed(runs, "asrun", size, "val_loss_prefix_pool"))
    if not seeds:
        return _result(reason=f"no asrun runs with val_loss_prefix_pool at size {size}")
    iv = t_interval(d, conf)
    return _result(iv.mean, iv.low, iv.high, ci_verdict(iv.low, iv.high, 0.0, "below"),
                   size=size, seeds=seeds, leak_per_seed=list(d), n_seeds=len(seeds))


# -- all: one Claim object per claim, in the order of the write-up ---------------------------------
@dataclass(frozen=True)
class Setting:
    """What every claim is judged on: the largest size, the runs table, the traces by variant."""

    runs: pd.DataFrame
    traces: dict
    cfg: dict
    meta: dict
    size: str
    tpb: float  # GPT-2 tokens per byte of our validation text (claim 2), and how it was measured
    tpb_how: str
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


@dataclass(frozen=True)
class Claim:
    """One claim: what it says, the statistic that tests it and when that counts as support,
    both in words (`statistic(setting, variant, result)`, `threshold(setting, result)`), and
    `compute(setting, variant) -> result` (a `_result` dict). subject=None: judged for "the NCN",
    with asrun beside it in details.also; else judged for that variant only."""

    key: str
    text: str
    statistic: Callable[[Setting, str | None, dict], str]
    threshold: Callable[[Setting, dict], str]
    compute: Callable[[Setting, str], dict]
    subject: str | None = None


def _baseline_statistic(s: Setting, variant, res) -> str:
    kind = res["details"].get("tokenizer_kind")
    return (f"baseline (none) {'PPL' if kind == 'gpt2' else 'bits-per-byte'} at size {s.size}, {s.pct} t-CI "
            f"({kind} tokenizer)")


def _baseline_threshold(s: Setting, res) -> str:
    d, thr = res["details"], s.a["ppl_threshold"]
    if d.get("tokenizer_kind") == "gpt2":
        return f"CI entirely above {thr:g} PPL"
    if math.isfinite(d.get("bpb_threshold", NAN)):
        return f"CI entirely above {d['bpb_threshold']:.4g} bpb (= {thr:g} GPT-2 PPL)"
    return (f"CI entirely above the bpb of {thr:g} GPT-2 PPL (not computable: "
            f"{d.get('gpt2_tokens_per_byte_source')})")


def _alpha(s: Setting) -> float:
    return 1 - s.conf


CLAIMS = [
    Claim(key="ab_beats_baseline", text="The NCN beats an iso-parameter baseline",
          statistic=lambda s, v, r: (f"mean paired dPPL = PPL({v}) - PPL(none) over seeds, size {s.size}, "
                                     f"{s.pct} t-CI"),
          threshold=lambda s, r: "CI entirely below 0",
          compute=lambda s, v: ab_claim(s.runs, v, s.size, s.conf)),
    Claim(key="baseline_ppl", text="A standard Transformer struggles to break 5.5 PPL at this budget",
          statistic=_baseline_statistic,
          threshold=_baseline_threshold,
          compute=lambda s, v: baseline_ppl_claim(s.runs, s.size, s.cfg, s.meta, s.tpb, s.tpb_how),
          subject="none"),
    Claim(key="layer_specialisation", text="Layers specialise: per-layer mean precision differs across layers",
          statistic=lambda s, v, r: (f"one-way ANOVA F of final per-layer mean beta ({v}, size {s.size}; "
                                     "seeds = replicates)"),
          threshold=lambda s, r: f"p < {_alpha(s):g}",
          compute=lambda s, v: layer_claim(s.runs, v, s.size, s.conf)),
    Claim(key="phasic_but", text="Signals react phasically to the twist at 'but'",
          statistic=lambda s, v, r: (f"signal change at '{s.a['probe_word']}' in the twist sentence minus its "
                                     f"mean in {len(s.a['control_sentences'])} neutral contexts ({v}, size "
                                     f"{s.size}); CI from the controls"),
          threshold=lambda s, r: (f"rank p <= {_alpha(s):g} vs controls and Spearman(change, surprisal) "
                                  f"rho > 0 with p < {_alpha(s):g}"),
          compute=lambda s, v: phasic_claim(s.traces.get(v), s.conf)),
    Claim(key="homeostasis", text="Homeostasis: the gain stays within the band and the regulariser is active",
          statistic=lambda s, v, r: (f"fraction of traced (layer, token) gains in [{s.a['gain_band'][0]:g}, "
                                     f"{s.a['gain_band'][1]:g}] ({v}, size {s.size})"),
          threshold=lambda s, r: (f">= {s.a['gain_min_fraction']:g} in band and L_reg moved > "
                                  f"{s.a['reg_move_rel']:g} x its start in every seed"),
          compute=lambda s, v: homeostasis_claim(s.traces.get(v), s.runs, v, s.size, s.cfg)),
    Claim(key="gamma_gates", text="The FFN gate closes (gamma near 0) for some layers and tokens",
          statistic=lambda s, v, r: (f"fraction of traced (layer, token) with gamma < {max(s.a['gate_eps']):g} "
                                     f"({v}, size {s.size})"),
          threshold=lambda s, r: f">= {s.a['gate_min_fraction']:g}",
          compute=lambda s, v: gate_claim(s.traces.get(v), s.cfg)),
    Claim(key="asrun_leak", text="The as-run NCN leaks future tokens through its pooling",
          statistic=lambda s, v, r: f"asrun val_loss - val_loss_prefix_pool (nats/token), size {s.size}, {s.pct} t-CI",
          threshold=lambda s, r: "CI entirely below 0",
          compute=lambda s, v: leak_claim(s.runs, s.size, s.conf),
          subject="asrun"),
    # origin "original, promise" (not a claim of the original's results): ncn.analysis.control
    Claim(key="control_steers", text=control.CLAIM_TEXT,
          statistic=lambda s, v, r: control.claim_statistic(s.cfg),
          threshold=lambda s, r: control.CLAIM_THRESHOLD,
          compute=lambda s, v: control.control_claim(s.control, s.cfg),
          subject=(control_names() or ["control"])[0]),
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
    return {"id": i, "key": claim.key, "claim": claim.text, "variant": variant, "size": s.size,
            "statistic": claim.statistic(s, variant, res), "threshold": claim.threshold(s, res), **res}


def compute(runs: pd.DataFrame, traces: dict, cfg: dict, meta: dict, data_dir, control_runs=None) -> dict:
    tpb, tpb_how = gpt2_tokens_per_byte(cfg, data_dir, meta)
    s = Setting(runs, traces, cfg, meta, largest_size(cfg), tpb, tpb_how, control_runs)
    ncn = primary_ncn(cfg)
    also = [v for v in ("asrun",) if v in cfg["variants"] and v != ncn]
    claims = [judge(i, claim, s, ncn, also) for i, claim in enumerate(CLAIMS, start=1)]
    return {"profile": cfg["profile"], "size": s.size, "ncn_variant": ncn, "confidence": s.conf,
            "tokenizer_kind": meta.get("tokenizer_kind"), "claims": claims}


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


def claims_tex(doc: dict) -> str:
    header = [r"\#", "Claim", "Statistic", "Value [CI]", "Threshold", "Verdict"]
    rows = []
    for c in doc["claims"]:
        val = _g(c["value"])
        if not tables.is_missing(c["ci_low"]):
            val += f" [{_g(c['ci_low'])}, {_g(c['ci_high'])}]"
        rows.append([str(c["id"]), tables.escape(c["claim"]), tables.escape(c["statistic"]), val,
                     tables.escape(c["threshold"]), tables.escape(c["verdict"])])
    return tables.booktabs(header, rows, r"@{}r p{0.2\linewidth} p{0.26\linewidth} l p{0.17\linewidth} l@{}")


def add_arguments(p) -> None:
    options.add_runs_table(p)
    p.add_argument("--traces", nargs="*", default=[], metavar="CSV",
                   help="traces at the largest size (the NCN's and asrun's); a missing one makes the "
                        "trace-based claims inconclusive")
    options.add_config(p)
    options.add_data(p)
    p.add_argument("--control", help="the control runs' table ('ncn analyze control --runs-csv'); missing: "
                   "the control claim is inconclusive")
    p.add_argument("--json", required=True, help="output claims JSON (results/claims.json)")
    options.add_table(p, csv=False)


def read_traces(paths) -> dict:
    """{variant: trace} of the given trace CSVs, one per variant."""
    from ncn.analysis.trace import read_trace

    traces = {}
    for path in paths:
        df = read_trace(path)
        v = str(df["variant"].iloc[0])
        if v in traces:
            raise NCNError(f"two traces of variant {v} given ({path}); pass one per variant (the largest size)")
        traces[v] = df
    return traces


def main(args, cfg: dict) -> None:
    from ncn.data import load_meta

    runs, traces = load_runs_table(args.runs_table), read_traces(args.traces)
    ctl = control.read_runs(args.control) if getattr(args, "control", None) else None
    doc = nan_to_none(compute(runs, traces, cfg, load_meta(args.data), args.data, ctl))
    write_json(args.json, doc)
    tables.write_tex(args.tex, claims_tex(doc))
    for c in doc["claims"]:
        print(f"  claim {c['id']} {c['key']:<22} {c['verdict']}", file=sys.stderr)


def numbers(doc: dict, cfg: dict) -> dict:
    """The prose's macros of claims.json: the verdict counts, and per claim its verdict, value,
    interval, statistic, threshold and text (\\ClaimOneVerdict, ...)."""
    claims = doc["claims"]
    verdicts = [c["verdict"] for c in claims]
    m = {"ClaimsTotal": str(len(claims)), "ClaimsSupported": str(verdicts.count(SUPPORTED)),
         "ClaimsNotSupported": str(verdicts.count(NOT_SUPPORTED)),
         "ClaimsInconclusive": str(verdicts.count(INCONCLUSIVE))}
    for c in claims:
        stem = macro_name("claim", c["id"])
        m[stem + "Verdict"] = c["verdict"]
        m[stem + "Value"] = fmt_sig(c["value"])
        m[stem + "CILow"] = fmt_sig(c["ci_low"])
        m[stem + "CIHigh"] = fmt_sig(c["ci_high"])
        # Claims judged by a fraction or a test statistic have no interval (null bounds).
        m[stem + "CI"] = (rf"\ConfidencePct{{}} interval [{fmt_sig(c['ci_low'])}, {fmt_sig(c['ci_high'])}]"
                          if finite(c["ci_low"]) and finite(c["ci_high"]) else "no interval")
        m[stem + "Statistic"] = tex_escape(c["statistic"])
        m[stem + "Threshold"] = tex_escape(c["threshold"])
        m[stem + "Text"] = tex_escape(c["claim"])
    return {"claims (results/claims.json)": m}
