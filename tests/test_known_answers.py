"""Known answers, computed by hand or independently of the code under test, for the numbers the
claims and the paper rest on: every claim function both ways (planted effect -> "supported",
none -> not "supported") and on thin data ("inconclusive"), on synthetic trace and measurement
tables whose truth is known; the iso-parameter match refusing an impossible tolerance; the
block-skipping loss change at a positive eps.

KNOWN registers, for every claim of the registry, a planted, a null and a thin input; a claim
without them, or one whose verdict is the same on both arms, fails
test_every_claim_has_known_answers_both_ways.

Constants used below: t_{0.975, 2} = 4.302653, t_{0.975, 18} = 2.100922 (two-sided 95% t with 2
and 18 degrees of freedom), log2(5.5) = 2.4594316.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch

from ncn.analysis import claims
from ncn.errors import NCNError

torch.set_num_threads(1)

T975_2 = 4.302653  # t_{0.975, 2}
T975_18 = 2.100922  # t_{0.975, 18}
LOG2_55 = 2.4594316
SEEDS = (0, 1, 2)


def verdict(res) -> str:
    return res["verdict"]


def value(res) -> float:
    return res["value"]


def ci(res) -> tuple[float, float]:
    return res["ci_low"], res["ci_high"]


def details(res) -> dict:
    return res["details"]


def runs_table(rows) -> pd.DataFrame:
    """runs.csv rows: (variant, size, seed, {column: value})."""
    return pd.DataFrame([{"variant": v, "size": s, "seed": seed, **cols} for v, s, seed, cols in rows])


def analysis_cfg(**over) -> dict:
    """The analysis settings the claims read, at their schema defaults unless overridden."""
    a = {"confidence": 0.95, "ppl_threshold": 5.5, "layer_effect_floor": 0.03, "gain_band": [0.9, 1.1],
         "gain_min_fraction": 0.75, "activity_min_ratio": 2.0, "reg_bound": 0.1, "gate_eps": [0.05, 0.1, 0.2],
         "gate_branch_ratio": 0.05, "gate_min_fraction": 0.01, "skip_tolerance_nats": 0.01,
         "skip_min_fraction": 0.01, "probe_word": "but", "control_sentences": ["c"] * 19, "kv_budgets": [4, 6],
         "kv_spread": 2, "knob_scales": [0.5, 0.7, 1.0, 1.4, 2.0]}
    a.update(over)
    return {"analysis": a, "model": {"reg_lambda": 0.01}}


# -- claim 1: the A/B -------------------------------------------------------------------------------
def _ab_runs(ncn_ppl, base_ppl):
    rows = []
    for seed, (a, b) in enumerate(zip(ncn_ppl, base_ppl)):
        rows.append(("causal", "s", seed, {"val_ppl": a, "val_loss": math.log(a)}))
        rows.append(("none", "s", seed, {"val_ppl": b, "val_loss": math.log(b)}))
    return runs_table(rows)


def test_ab_claim_planted_improvement_is_supported():
    res = claims.ab_claim(_ab_runs([10.0, 10.5, 9.8], [11.0, 11.6, 10.9]), "causal", "s", 0.95)
    # d = [-1.0, -1.1, -1.1]: mean -1.066667, sd 0.057735, half 4.302653 * 0.057735 / sqrt(3) = 0.143422
    assert value(res) == pytest.approx(-1.066667, abs=1e-6)
    assert ci(res) == pytest.approx((-1.066667 - 0.143422, -1.066667 + 0.143422), abs=1e-5)
    assert verdict(res) == "supported"
    assert res["reason"] == "CI [-1.21, -0.923] below 0"  # the interval, where it lies, the threshold
    d = details(res)
    assert d["n_pairs"] == 3 and d["dppl_per_seed"] == pytest.approx([-1.0, -1.1, -1.1])
    dl = [math.log(a) - math.log(b) for a, b in zip([10.0, 10.5, 9.8], [11.0, 11.6, 10.9])]
    assert d["dloss_mean"] == pytest.approx(np.mean(dl))


def test_ab_claim_no_improvement_is_not_supported():
    # the NCN worse on every seed: the CI lies above 0
    res = claims.ab_claim(_ab_runs([11.0, 11.6, 10.9], [10.0, 10.5, 9.8]), "causal", "s", 0.95)
    assert verdict(res) == "not supported" and res["reason"].endswith("] not below 0")
    # equal on average, noisy: the CI straddles 0
    assert verdict(claims.ab_claim(_ab_runs([10.0, 11.0, 10.5], [10.5, 10.5, 10.5]), "causal", "s", 0.95)) == \
        "inconclusive"


def test_ab_claim_thin_data_is_inconclusive():
    assert verdict(claims.ab_claim(_ab_runs([10.0], [11.0]), "causal", "s", 0.95)) == "inconclusive"
    runs = runs_table([("causal", "s", 0, {"val_ppl": 10.0, "val_loss": 2.3}),
                       ("none", "s", 1, {"val_ppl": 11.0, "val_loss": 2.4})])  # no common seed
    assert verdict(claims.ab_claim(runs, "causal", "s", 0.95)) == "inconclusive"


# -- claim 2: the baseline's PPL vs 5.5, only under the GPT-2 tokenizer at the original's budget ---
GPT2 = {"tokenizer_kind": "gpt2"}


def _baseline_runs(ppl, tokens=520e6):
    return runs_table([("none", "s", seed, {"val_ppl": p, "tokens": tokens}) for seed, p in enumerate(ppl)])


def test_baseline_ppl_claim_at_the_original_budget_compares_ppl():
    above = _baseline_runs([6.0, 6.2, 6.1])  # CI 6.1 ± 0.248: above 5.5
    res = claims.baseline_ppl_claim(above, "s", analysis_cfg(), GPT2)
    assert verdict(res) == "supported" and value(res) == pytest.approx(6.1)
    assert ci(res) == pytest.approx((6.1 - T975_2 * 0.1 / math.sqrt(3), 6.1 + T975_2 * 0.1 / math.sqrt(3)), abs=1e-5)
    assert details(res)["budget_factor"] == claims.BUDGET_FACTOR  # the budget rule is reported with the verdict
    below = _baseline_runs([5.0, 5.1, 5.2])  # CI 5.1 ± 0.248: below 5.5
    assert verdict(claims.baseline_ppl_claim(below, "s", analysis_cfg(), GPT2)) == "not supported"
    straddle = _baseline_runs([5.3, 5.5, 5.7])
    assert verdict(claims.baseline_ppl_claim(straddle, "s", analysis_cfg(), GPT2)) == "inconclusive"


@pytest.mark.parametrize("kind,tokens,applies", [
    ("gpt2", 520e6, True), ("gpt2", 260e6, True), ("gpt2", 1040e6, True),  # within 2x, both ends inclusive
    ("gpt2", 259e6, False), ("gpt2", 1041e6, False), ("gpt2", 327_680, False),  # the default profile's budget
    ("bpe", 520e6, False), ("gpt2", math.nan, False),
])
def test_baseline_ppl_claim_is_not_applicable_off_its_premise(kind, tokens, applies):
    runs = _baseline_runs([6.0, 6.2, 6.1], tokens)
    res = claims.baseline_ppl_claim(runs, "s", analysis_cfg(), {"tokenizer_kind": kind})
    if applies:
        assert verdict(res) == "supported" and not res["reason"].startswith("5.5 is")
    else:
        assert verdict(res) == "not applicable" and res["reason"] and math.isnan(value(res))
        assert details(res)["ppl_mean"] == pytest.approx(6.1)  # measured, reported, not judged


def test_baseline_ppl_claim_thin_data_is_inconclusive():
    assert verdict(claims.baseline_ppl_claim(_baseline_runs([6.0]), "s", analysis_cfg(), GPT2)) == "inconclusive"
    assert verdict(claims.baseline_ppl_claim(_baseline_runs([6.0, 6.2]), "m", analysis_cfg(), GPT2)) == \
        "inconclusive"  # no runs at m


# -- synthetic traces -------------------------------------------------------------------------------------
def _grid(values, n, layers) -> np.ndarray:
    """A scalar, a per-position or a per-(position, layer) value as an (n, layers) array."""
    a = np.asarray(values, dtype=float)
    return np.broadcast_to(a.reshape(-1, 1) if a.ndim == 1 else a, (n, layers))


def trace_frame(sentences, layers=2, variant="causal") -> pd.DataFrame:
    """Trace rows of sentences given as dicts: seed, sentence_id, kind, token_ids, and per position
    either `change` (|s(t) - s(t-1)| of every signal of every layer: the signals zigzag around 1
    by exactly that much) or explicit `g`/`beta`/`gamma` (per position, or per (position, layer));
    optional surprisal, log_freq, branch_ratio (per position or per (position, layer)), probe_pos."""
    rows = []
    for s in sentences:
        n = len(s["token_ids"])
        if "change" in s:
            level = 1.0 + np.cumsum([0.0] + [(-1) ** t * s["change"][t] for t in range(1, n)])
            sig = {k: np.repeat(level[:, None], layers, axis=1) for k in ("g", "beta", "gamma")}
        else:
            sig = {k: _grid(s.get(k, 1.0), n, layers) for k in ("g", "beta", "gamma")}
        extra = {k: _grid(s[k], n, layers) for k in ("branch_ratio",) if k in s}
        for pos in range(n):
            for layer in range(layers):
                rows.append({"variant": variant, "size": "s", "seed": s["seed"], "sentence_id": s["sentence_id"],
                             "kind": s["kind"], "pos": pos, "token_id": s["token_ids"][pos], "token": f"t{pos}",
                             "layer": layer, **{k: float(v[pos, layer]) for k, v in sig.items()},
                             "surprisal": np.nan if pos == 0 else float(s.get("surprisal", [1.0] * n)[pos]),
                             "probe": int(pos == s.get("probe_pos", -1)),
                             "log_freq": float(s.get("log_freq", [0.0] * n)[pos]),
                             **{k: float(v[pos, layer]) for k, v in extra.items()}})
    return pd.DataFrame(rows)


# -- claim 3: layer specialisation (seed-blocked, on held-out beta, with an effect floor) -------------
# Rows and columns of E sum to 0: a pure seed x layer interaction, the ANOVA's residual exactly.
E = np.array([[0.001, -0.001, 0.0], [-0.001, 0.0, 0.001], [0.0, 0.001, -0.001]])
SEED_OFFSET = np.array([0.0, 0.01, -0.01])


def _layer_trace(base, e=E, seeds=SEEDS):
    """beta of seed s, layer l on every held-out (valid) token = base[l] + SEED_OFFSET[s] + e[s, l];
    the BOS (pos 0) and the twist sentence carry far-off betas that must not count."""
    sents = []
    for s in seeds:
        beta = np.asarray(base) + SEED_OFFSET[s] + e[s]
        for k in range(2):
            b = np.vstack([np.full(len(base), 99.0), beta, beta, beta])  # (pos, layer)
            sents.append({"seed": s, "sentence_id": k, "kind": "valid", "token_ids": [0, 1, 2, 3], "beta": b})
        sents.append({"seed": s, "sentence_id": 9, "kind": "trace", "token_ids": [0, 1, 2],
                      "beta": np.full((3, len(base)), 50.0)})
    return trace_frame(sents, layers=len(base))


def test_layer_claim_planted_specialisation_is_supported():
    """Layers 0.68, 0.71, 0.74 (the original's contrast, 0.06). By hand: SS_layer = 3 * (0.03² * 2)
    = 0.0054 on 2 df, SS_resid = sum(E²) = 6e-6 on 4 df, F = 0.0027 / 1.5e-6 = 1800. The contrast
    layer 2 - layer 0 per seed is 0.06 + E[:, 2] - E[:, 0] = [0.059, 0.062, 0.059]: sd sqrt(3e-6),
    CI 0.06 ± 4.302653 * 0.001 = [0.055697, 0.064303], above the floor 0.03."""
    res = claims.layer_claim(_layer_trace([0.68, 0.71, 0.74]), analysis_cfg())
    d = details(res)
    assert d["F"] == pytest.approx(1800.0, rel=1e-6) and d["p_value"] < 1e-5
    assert d["layer_means"] == pytest.approx([0.68, 0.71, 0.74]) and d["contrast_layers"] == [2, 0]
    assert value(res) == pytest.approx(0.06)
    assert ci(res) == pytest.approx((0.06 - T975_2 * 0.001, 0.06 + T975_2 * 0.001), abs=1e-7)
    assert d["contrast_per_seed"] == pytest.approx([0.059, 0.062, 0.059])
    assert (d["n_seeds"], d["n_layers"]) == (3, 3) and verdict(res) == "supported"
    assert d["alpha"] == pytest.approx(1 - 0.95) and d["effect_floor"] == 0.03  # confidence 0.95, the floor


def test_layer_claim_consistent_but_tiny_difference_is_not_supported():
    """The issue's case: a consistent 0.001 difference is significant but far below the floor."""
    res = claims.layer_claim(_layer_trace([0.700, 0.701, 0.702], e=E / 100), analysis_cfg())
    assert details(res)["p_value"] < 0.05  # the blocked test sees it...
    assert ci(res)[1] < 0.03 and verdict(res) == "not supported"  # ...and the floor says it does not matter
    # no layer effect at all, seed noise only
    assert verdict(claims.layer_claim(_layer_trace([0.7, 0.7, 0.7]), analysis_cfg())) == "not supported"


def test_layer_claim_noisy_or_thin_is_inconclusive():
    noisy = claims.layer_claim(_layer_trace([0.68, 0.71, 0.74], e=E * 30), analysis_cfg())
    assert ci(noisy)[0] < 0.03 < ci(noisy)[1] and verdict(noisy) == "inconclusive"
    one = claims.layer_claim(_layer_trace([0.68, 0.71, 0.74], seeds=(0,)), analysis_cfg())
    assert verdict(one) == "inconclusive" and "1 seed" in one["reason"]
    assert verdict(claims.layer_claim(None, analysis_cfg())) == "inconclusive"


def test_layer_claim_is_blocked_by_seed():
    """Seed offsets ten times the layer effect: a one-way ANOVA drowns, the blocked one does not."""
    from ncn.analysis.stats import one_way_anova

    offsets = SEED_OFFSET * 10
    mat = np.array([[0.68, 0.71, 0.74]]) + offsets[:, None] + E
    assert one_way_anova(list(mat.T))[1] > 0.05
    claims_trace = _layer_trace([0.68, 0.71, 0.74])
    shift = claims_trace["seed"].map(dict(enumerate(offsets - SEED_OFFSET)))
    claims_trace["beta"] = claims_trace["beta"] + np.where(claims_trace["kind"] == "valid", shift, 0.0)
    res = claims.layer_claim(claims_trace, analysis_cfg())
    assert details(res)["F"] == pytest.approx(1800.0, rel=1e-6) and verdict(res) == "supported"


# -- claim 4: the phasic response at 'but' -------------------------------------------------------------
TWIST = [0, 10, 11, 12, 13, 14, 15]  # "... box, but it was empty.": 'but' (13) at position 4
PAIR = [0, 10, 11, 12, 20, 14, 16]  # the same prefix, "and it was full."
CONTROL_CHANGES = [0.01 + 0.002 * i for i in range(19)]  # mean 0.028, sd 0.002 * sqrt(19 * 20 / 12)


def _phasic_trace(twist=(0.30, 0.32, 0.28), pair=0.02, surprisal_slope=20.0, seeds=SEEDS, controls=CONTROL_CHANGES,
                  constant=False, unmatched_change=0.9):
    """Per seed: the twist sentence (change `twist[seed]` at 'but'), its minimal pair (change
    pair + 0.001 * seed at the first differing token), 19 position-matched controls (the same
    changes in every seed), one control with 'but' at another position (a large change that must
    be left out), three held-out sentences. Every other position changes by 0.01-0.05 (seeded).
    Surprisal = 5 + slope * change + jitter; log frequency and position unrelated to it."""
    sents = []
    for s in seeds:
        rng = np.random.default_rng(100 + s)

        def sentence(sid, kind, ids, at=None, probe=None):
            c = rng.uniform(0.01, 0.05, len(ids))
            for pos, x in (at or {}).items():
                c[pos] = x
            c = np.zeros(len(ids)) if constant else c
            sur = 5 + surprisal_slope * c + rng.uniform(0, 0.01, len(ids))
            sents.append({"seed": s, "sentence_id": sid, "kind": kind, "token_ids": ids, "change": c,
                          "surprisal": sur, "log_freq": rng.uniform(-12, -3, len(ids)), "probe_pos": probe})

        sentence(0, "trace", TWIST, {4: twist[s]}, probe=4)
        sentence(1, "pair", PAIR, {4: pair + 0.001 * s})
        for k, x in enumerate(controls):
            sentence(2 + k, "control", [0, 30 + k, 31, 32, 13, 33, 34], {4: x}, probe=4)
        sentence(40, "control", [0, 50, 13, 51, 52, 53, 54], {2: unmatched_change}, probe=2)
        for k in range(3):
            sentence(50 + k, "valid", [0] + list(range(60 + 8 * k, 67 + 8 * k)))
    return trace_frame(sents)


def _pi_half():
    sd = 0.002 * math.sqrt(19 * 20 / 12)
    return T975_18 * sd * math.sqrt(1 + 1 / 19)


def test_phasic_claim_planted_twist_is_supported():
    tr = _phasic_trace()
    res = claims.phasic_claim(tr, 0.95)
    d = details(res)
    # the twist (mean 0.30 over seeds) minus the control mean 0.028, and the prediction interval
    # 0.028 ± t_{0.975,18} * sd * sqrt(1 + 1/19) turned into an interval for the excess
    assert d["n_controls"] == 19 and value(res) == pytest.approx(0.30 - 0.028, abs=1e-9)
    assert ci(res) == pytest.approx((0.272 - _pi_half(), 0.272 + _pi_half()), abs=1e-6)
    per = d["per_seed"]
    assert [per[s]["probe_pos"] for s in SEEDS] == [4, 4, 4] and per[0]["n_unmatched"] == 1
    assert [per[s]["pair_diff"] for s in SEEDS] == pytest.approx([0.28, 0.32 - 0.021, 0.28 - 0.022])
    assert all(per[s]["rho"] > 0.5 for s in SEEDS)
    # the surprisal leg correlates over every token change of the seed's trace
    assert [per[s]["rho_n"] for s in SEEDS] == [len(claims.token_changes(tr[tr["seed"] == s])) for s in SEEDS]
    assert d["legs"] == {"controls": "supported", "minimal pairs": "supported", "surprisal": "supported"}
    assert verdict(res) == "supported"


def test_phasic_claim_without_effect_is_not_supported():
    typical = claims.phasic_claim(_phasic_trace(twist=(0.03, 0.025, 0.03), pair=0.03, surprisal_slope=0.0), 0.95)
    assert details(typical)["legs"]["controls"] == "inconclusive" and verdict(typical) != "supported"
    below = claims.phasic_claim(_phasic_trace(twist=(0.0, 0.001, 0.0), pair=0.05), 0.95)
    assert details(below)["legs"]["controls"] == "not supported"  # below the prediction interval
    assert details(below)["legs"]["minimal pairs"] == "not supported" and verdict(below) == "not supported"
    # the twist stands out, but the change falls as surprisal rises: one refuted leg refutes the claim
    negative = claims.phasic_claim(_phasic_trace(surprisal_slope=-20.0), 0.95)
    assert details(negative)["legs"]["surprisal"] == "not supported" and verdict(negative) == "not supported"


def test_static_is_never_phasic():
    """Constant signals (the static variant) cannot react to anything, planted surprisal or not."""
    res = claims.phasic_claim(_phasic_trace(constant=True), 0.95)
    assert verdict(res) == "not supported" and "constant" in res["reason"]
    assert verdict(claims.phasic_claim(_phasic_trace(constant=True, seeds=(0,)), 0.95)) == "not supported"


def test_phasic_claim_uses_only_position_matched_controls():
    """A control with 'but' at another position never enters the interval, however large."""
    a = claims.phasic_claim(_phasic_trace(unmatched_change=0.9), 0.95)
    b = claims.phasic_claim(_phasic_trace(unmatched_change=0.0), 0.95)
    assert ci(a) == ci(b) and verdict(a) == verdict(b) == "supported"
    # every control elsewhere: no interval, inconclusive
    none = claims.phasic_claim(_phasic_trace(controls=[]), 0.95)
    assert details(none)["legs"]["controls"] == "inconclusive" and verdict(none) == "inconclusive"


def test_phasic_claim_controls_below_the_trace_resolution_place_nothing():
    """Controls that all change by the same amount (to 7 digits) give a prediction interval of
    width 0: a twist a rounding step above it is not a phasic response."""
    flat = claims.phasic_claim(_phasic_trace(twist=(0.0300002,) * 3, controls=[0.03] * 19), 0.95)
    assert details(flat)["legs"]["controls"] == "inconclusive" and "resolution" in flat["reason"]


def test_phasic_claim_thin_data_is_inconclusive():
    one = claims.phasic_claim(_phasic_trace(seeds=(0,)), 0.95)
    assert verdict(one) == "inconclusive" and "1 seed" in one["reason"]
    # one seed whose twist lies below the prediction interval: still thin, not a refutation
    below = claims.phasic_claim(_phasic_trace(twist=(0.0,), seeds=(0,)), 0.95)
    assert details(below)["legs"]["controls"] == "not supported" and verdict(below) == "inconclusive"
    assert verdict(claims.phasic_claim(_phasic_trace(controls=CONTROL_CHANGES[:1]), 0.95)) == "inconclusive"
    assert verdict(claims.phasic_claim(None, 0.95)) == "inconclusive"
    no_freq = _phasic_trace().drop(columns="log_freq")
    res = claims.phasic_claim(no_freq, 0.95)
    assert details(res)["legs"]["surprisal"] == "inconclusive" and verdict(res) == "inconclusive"


# -- claim 5: homeostasis (an active controller, L_reg bounded, the gain in its band) ------------------
def _reg_runs(tmp_path, levels, seeds=SEEDS, variant="causal"):
    """Train logs whose reg column is 0.01 * levels[seed] over the second half of training, after a
    first half at 100 times that (which must not count)."""
    rows = []
    for seed in seeds:
        d = tmp_path / variant / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        reg = [100 * levels[seed] * 0.01] * 2 + [levels[seed] * 0.01] * 3
        pd.DataFrame({"step": [0, 2, 5, 7, 10], "tokens": range(5), "loss": 1.0, "ce": 1.0, "reg": reg}
                     ).to_csv(d / "train_log.csv", index=False)
        rows.append((variant, "s", seed, {"run_dir": str(d)}))
    return runs_table(rows)


def _gain_trace(gains, seeds=SEEDS, constant=False):
    """Per seed one sentence: BOS (pos 0, g = 50, never counted) then `gains[seed]` for every layer;
    beta and gamma vary with the position unless constant."""
    sents = []
    for s in seeds:
        g = np.array([50.0] + list(gains[s]))
        n = len(g)
        other = np.ones(n) if constant else 1 + 0.01 * np.arange(n)
        sents.append({"seed": s, "sentence_id": 0, "kind": "trace", "token_ids": list(range(n)),
                      "g": np.full(n, 1.0) if constant else g, "beta": other, "gamma": other})
    return trace_frame(sents)


IN_BAND = {s: [1.0, 0.9, 1.1, 1.0] for s in SEEDS}  # all in [0.9, 1.1], the band's ends included


def _regonly(ratios, seeds=SEEDS, variant="causal"):
    """tables/regonly.csv: the trained model's per-token variance ratios[seed] times the reg-only one's."""
    return pd.DataFrame([{"variant": variant, "size": "s", "seed": s, "var_trained": 1e-4 * ratios[s],
                          "var_regonly": 1e-4} for s in seeds])


def _homeostasis(tmp_path, ratios, levels=(0.001, 0.002, 0.0015), gains=IN_BAND, seeds=SEEDS, **kw):
    trace = _gain_trace(gains, seeds, kw.pop("constant", False))
    regonly = kw.pop("regonly") if "regonly" in kw else _regonly(ratios, seeds)
    return claims.homeostasis_claim(trace, regonly, _reg_runs(tmp_path, levels, seeds), "causal", "s", analysis_cfg(),
                                    **kw)


def test_homeostasis_active_bounded_in_band_is_supported(tmp_path):
    res = _homeostasis(tmp_path, {0: 100.0, 1: 80.0, 2: 120.0})
    d = details(res)
    assert d["legs"] == {"active": "supported", "L_reg bounded": "supported", "gain band": "supported"}
    assert d["reg_level_per_seed"] == pytest.approx({0: 0.001, 1: 0.002, 2: 0.0015})  # second half, / reg_lambda
    assert d["activity"]["log10_variance_ratio"] == pytest.approx({0: 2.0, 1: math.log10(80), 2: math.log10(120)})
    assert value(res) == 1.0 and verdict(res) == "supported"


def test_the_regulariser_only_controller_fails_homeostasis(tmp_path):
    """The issue's probe: a controller trained on the regulariser alone keeps every gain in the
    band and L_reg tiny, but its signals vary no more than the reg-only control's (ratio ~1)."""
    res = _homeostasis(tmp_path, {0: 1.0, 1: 1.1, 2: 0.9})
    d = details(res)
    assert d["legs"]["L_reg bounded"] == "supported" and d["legs"]["gain band"] == "supported"
    assert d["legs"]["active"] == "not supported" and verdict(res) == "not supported"


def test_homeostasis_unbounded_reg_or_gains_out_of_band_is_not_supported(tmp_path):
    high = _homeostasis(tmp_path / "a", {0: 100.0, 1: 80.0, 2: 120.0}, levels=(0.2, 0.22, 0.21))
    assert details(high)["legs"]["L_reg bounded"] == "not supported" and verdict(high) == "not supported"
    out = {s: [1.0, 1.5, 1.5, 0.5] for s in SEEDS}  # a quarter in the band
    res = _homeostasis(tmp_path / "b", {0: 100.0, 1: 80.0, 2: 120.0}, gains=out)
    assert value(res) == pytest.approx(0.25) and verdict(res) == "not supported"


def test_static_signals_are_never_active(tmp_path):
    """Constant signals (static): no per-token variance, whatever the reg-only table says; and a
    controller that varies no more than static's zero is not active either."""
    res = _homeostasis(tmp_path / "a", {0: 100.0, 1: 80.0, 2: 120.0}, constant=True)
    assert details(res)["legs"]["active"] == "not supported" and verdict(res) == "not supported"
    one = _homeostasis(tmp_path / "c", {0: 100.0}, seeds=(0,), constant=True)
    assert verdict(one) == "not supported"  # a structural fact, not an estimate: one seed shows it
    static = _gain_trace(IN_BAND, constant=False)  # a "static" control that varies as much as the model
    res = _homeostasis(tmp_path / "b", {0: 1e-3, 1: 1e-3, 2: 1e-3}, static_trace=static)
    assert details(res)["legs"]["active"] == "not supported"


def test_homeostasis_reads_the_all_signals_row_of_the_regonly_table(tmp_path):
    """ncn analyze regonly writes one row per signal and "all" (their mean): "all" decides."""
    rows = []
    for s in SEEDS:
        for signal, ratio in (("g", 1.0), ("beta", 1.0), ("gamma", 1000.0), ("all", 1.0)):
            rows.append({"variant": "causal", "size": "s", "seed": s, "signal": signal, "var_trained": 1e-4 * ratio,
                         "var_regonly": 1e-4})
    res = _homeostasis(tmp_path, {0: 1.0, 1: 1.0, 2: 1.0}, regonly=pd.DataFrame(rows))
    assert details(res)["activity"]["log10_variance_ratio"] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert verdict(res) == "not supported"


def test_homeostasis_thin_data_is_inconclusive(tmp_path):
    one = _homeostasis(tmp_path / "a", {0: 100.0}, seeds=(0,))
    assert verdict(one) == "inconclusive" and "1 seed" in one["reason"]
    no_control = _homeostasis(tmp_path / "b", {0: 100.0, 1: 80.0, 2: 120.0}, regonly=None)
    assert details(no_control)["legs"]["active"] == "inconclusive" and verdict(no_control) == "inconclusive"
    assert "regonly.csv" in no_control["reason"]
    assert verdict(claims.homeostasis_claim(None, None, _reg_runs(tmp_path / "c", (1, 1, 1)), "causal", "s",
                                            analysis_cfg())) == "inconclusive"


# -- claims 6 and 8: the gate and block skipping, on a simulated model ------------------------------
def _simulated_model(seed, informative, n=400, scale=1.0):
    """(gamma, branch ratio, usefulness) of n (layer, token) FFN evaluations: skipping one raises
    the loss by usefulness / n nats. Informative gates close (gamma small) on the least useful
    evaluations; random gates ignore usefulness. The branch ratio is gamma * the FFN's own ratio
    times `scale` (a rescaled W_down: scale 10 keeps gamma, not the contribution, small)."""
    rng = np.random.default_rng(seed)
    use = rng.exponential(1.0, n)
    gamma = (np.argsort(np.argsort(use)) + 0.5) / n if informative else rng.uniform(0, 1, n)
    return gamma, gamma * 0.2 * scale, use


def _skip_rows(seed, gamma, use, eps_grid, variant="causal", dense=3.0, draws=50):
    """skip_measure rows: gated skipping at each eps vs random skipping of as many (mean of draws)."""
    rng = np.random.default_rng(1000 + seed)
    n, rows = len(use), []
    for eps in eps_grid:
        k = int((gamma < eps).sum())
        rand = np.mean([use[rng.choice(n, k, replace=False)].sum() for _ in range(draws)]) if k else 0.0
        rows.append({"variant": variant, "size": "s", "seed": seed, "eps": eps, "loss_dense": dense,
                     "loss_skip": dense + use[gamma < eps].sum() / n, "loss_random": dense + rand / n,
                     "skip_frac": k / n})
    return rows


def _gate_inputs(informative, seeds=SEEDS, scale=1.0, eps_grid=(0.0, 0.05, 0.1, 0.2, 0.3), n=400, draws=50):
    sents, rows = [], []
    for s in seeds:
        gamma, ratio, use = _simulated_model(s, informative, n=n, scale=scale)
        sents.append({"seed": s, "sentence_id": 0, "kind": "trace", "token_ids": list(range(len(gamma) + 1)),
                      "gamma": np.r_[0.0, gamma], "branch_ratio": np.r_[0.0, ratio]})
        rows += _skip_rows(s, gamma, use, eps_grid, draws=draws)
    return trace_frame(sents, layers=1), pd.DataFrame(rows)


def test_gate_claim_informative_gates_are_supported():
    trace, skip = _gate_inputs(informative=True)
    res = claims.gate_claim(trace, skip, "causal", "s", analysis_cfg())
    # gamma < 0.2 on 80 of 400 evaluations, all with ratio < 0.04 < 0.05: a fifth closed (BOS excluded)
    assert value(res) == pytest.approx(0.2) and details(res)["skip_frac"] == pytest.approx(0.2)
    assert details(res)["legs"] == {"scale-aware closed fraction": "supported", "function": "supported"}
    assert verdict(res) == "supported"
    assert details(res)["variant"] == "causal" and details(res)["size"] == "s"
    assert re.search(r"gated - random loss CI \[\S+, \S+\] below 0\b", res["reason"]), res["reason"]


def test_random_gates_do_not_beat_random_skipping():
    """Over 100 simulated replications of three seeds each, gates unrelated to the FFN's usefulness
    "beat" random skipping about as often as the one-sided 2.5% error rate of a t-interval over three
    seeds allows (at most 10 of 100; a Binomial(100, 0.03) exceeds 10 with probability < 0.001),
    while informative gates always do."""
    cfg = analysis_cfg(skip_tolerance_nats=1.0)
    rates = {}
    for informative in (False, True):
        won = {"gate": 0, "skip": 0}
        for r in range(100):
            trace, skip = _gate_inputs(informative, seeds=(3 * r, 3 * r + 1, 3 * r + 2), n=120, draws=10)
            won["gate"] += claims.gate_claim(trace, skip, "causal", "s", cfg)["verdict"] == "supported"
            won["skip"] += claims.skipping_claim(skip, "causal", "s", cfg)["verdict"] == "supported"
        rates[informative] = won
    assert rates[False]["gate"] <= 10 and rates[False]["skip"] <= 10, rates
    assert rates[True]["gate"] == 100 and rates[True]["skip"] == 100, rates


def test_gate_claim_is_scale_aware():
    """gamma small but W_down ten times larger: the branch still adds more than 5% of the
    residual stream on most of those tokens, so the gate does not close it."""
    trace, skip = _gate_inputs(informative=True, scale=10.0)
    res = claims.gate_claim(trace, skip, "causal", "s", analysis_cfg(gate_min_fraction=0.05))
    # closed: gamma < 0.2 and 2 * gamma < 0.05, i.e. gamma < 0.025: 10 of 400 = 0.025 < 0.05
    assert value(res) == pytest.approx(0.025) and verdict(res) == "not supported"


def test_gate_claim_nothing_gated_or_thin():
    trace, skip = _gate_inputs(informative=True)
    cfg = analysis_cfg(gate_eps=[0.001])  # no gamma below it: nothing closes, nothing is skipped
    skip_none = pd.concat([skip, skip.assign(eps=0.001, loss_skip=skip["loss_dense"], loss_random=skip["loss_dense"],
                                             skip_frac=0.0).drop_duplicates("seed")])
    nothing = claims.gate_claim(trace, skip_none, "causal", "s", cfg)
    assert verdict(nothing) == "not supported" and "nothing is gated" in nothing["reason"]
    one_trace, one_skip = _gate_inputs(informative=True, seeds=(0,))
    one = claims.gate_claim(one_trace, one_skip, "causal", "s", analysis_cfg())
    assert verdict(one) == "inconclusive" and "1 seed" in one["reason"]
    missing = claims.gate_claim(trace.drop(columns="branch_ratio"), None, "causal", "s", analysis_cfg())
    assert verdict(missing) == "inconclusive" and "branch_ratio" in missing["reason"]
    assert verdict(claims.gate_claim(None, skip, "causal", "s", analysis_cfg())) == "inconclusive"


def test_block_skipping_planted_is_supported():
    _, skip = _gate_inputs(informative=True)
    res = claims.skipping_claim(skip, "causal", "s", analysis_cfg())
    d = details(res)
    # by hand: the gated loss change at eps is the mean usefulness of the least useful fraction; the
    # largest eps whose CI stays within 0.01 nats is the one picked, and it beats random skipping
    by = {r["eps"]: r for r in d["by_eps"]}
    ok = [e for e, r in by.items() if r["skip_frac"] >= 0.01 and r["dloss_ci"][1] <= 0.01]
    assert d["eps"] == max(ok) and value(res) == pytest.approx(by[d["eps"]]["gated_minus_random"])
    assert ci(res)[1] < 0 and verdict(res) == "supported"
    assert by[d["eps"]]["gated_minus_random_ci"] == pytest.approx(list(ci(res)))
    assert re.search(r"\): gated - random CI \[\S+, \S+\] below 0$", res["reason"]), res["reason"]


def test_block_skipping_tolerance_is_absolute_nats():
    """A 1% relative change at loss 4.5 (0.045 nats) is not within 0.01 nats."""
    rows = [{"variant": "causal", "size": "s", "seed": s, "eps": 0.5, "loss_dense": 4.5, "loss_skip": 4.545 + 1e-4 * s,
             "loss_random": 4.8, "skip_frac": 0.3} for s in SEEDS]
    res = claims.skipping_claim(pd.DataFrame(rows), "causal", "s", analysis_cfg())
    assert verdict(res) == "not supported" and "0.01 nats" in res["reason"]
    looser = claims.skipping_claim(pd.DataFrame(rows), "causal", "s", analysis_cfg(skip_tolerance_nats=0.05))
    assert verdict(looser) == "supported" and value(looser) == pytest.approx(4.5451 - 4.8)


def test_block_skipping_a_loss_change_straddling_the_tolerance_is_inconclusive():
    """No eps keeps the CI within 0.01 nats, but the CI reaches below it: not refuted either."""
    rows = [{"variant": "causal", "size": "s", "seed": s, "eps": 0.5, "loss_dense": 4.5,
             "loss_skip": 4.5 + (0.0, 0.012, 0.024)[s % 3], "loss_random": 4.8, "skip_frac": 0.3} for s in SEEDS]
    res = claims.skipping_claim(pd.DataFrame(rows), "causal", "s", analysis_cfg())
    lo, hi = details(res)["by_eps"][0]["dloss_ci"]
    assert lo < 0.01 < hi and verdict(res) == "inconclusive" and "0.01 nats" in res["reason"]


def test_block_skipping_thin_or_nothing_skipped():
    _, skip = _gate_inputs(informative=True, seeds=(0,))
    assert verdict(claims.skipping_claim(skip, "causal", "s", analysis_cfg())) == "inconclusive"
    assert verdict(claims.skipping_claim(None, "causal", "s", analysis_cfg())) == "inconclusive"
    _, skip = _gate_inputs(informative=True, eps_grid=(0.0, 0.001))  # below every gamma: nothing closes
    nothing = claims.skipping_claim(skip, "causal", "s", analysis_cfg())
    assert verdict(nothing) == "not supported" and "skips" in nothing["reason"]


def test_skipping_everything_is_no_choice_of_the_gate():
    """At an eps above every gamma, the gate and the random control skip the same (all): that eps
    is no evidence either way, in block skipping and in the gate's function leg."""
    _, skip = _gate_inputs(informative=True, eps_grid=(0.0, 1.01))
    assert set(skip.loc[skip["eps"] == 1.01, "skip_frac"]) == {1.0}
    res = claims.skipping_claim(skip, "causal", "s", analysis_cfg(skip_tolerance_nats=10.0))
    assert verdict(res) == "inconclusive" and "between" in res["reason"]  # no eps on the grid is a real choice
    trace, _ = _gate_inputs(informative=True)
    res = claims.gate_claim(trace, skip, "causal", "s", analysis_cfg(gate_eps=[1.01]))
    assert details(res)["legs"]["function"] == "inconclusive" and "every evaluation" in res["reason"]


# -- claim 7: the as-run leak: structure, benefit, and the mismatch kept apart -------------------------
def _leak_table(benefit, structural=0.5, seeds=SEEDS):
    """leak_measure rows: asrun (benefit[seed] = loss with the true future - with another
    window's) and causal (structurally 0, no benefit)."""
    rows = []
    for s in seeds:
        rows.append({"variant": "asrun", "size": "s", "seed": s, "max_abs_dlogit_past": structural,
                     "loss_true_future": 3.0 + benefit[s], "loss_replaced_future": 3.0, "loss_prefix_pool": 3.2})
        rows.append({"variant": "causal", "size": "s", "seed": s, "max_abs_dlogit_past": 0.0,
                     "loss_true_future": 3.1, "loss_replaced_future": 3.1, "loss_prefix_pool": 3.1})
    return pd.DataFrame(rows)


def _mismatch_runs(full, prefix):
    return runs_table([("asrun", "s", seed, {"val_loss": f, "val_loss_prefix_pool": p})
                       for seed, (f, p) in enumerate(zip(full, prefix))])


MISMATCH = _mismatch_runs([3.0, 3.1, 3.05], [3.2, 3.32, 3.24])  # full - prefix = [-0.2, -0.22, -0.19]


def test_leak_claim_planted_benefit_is_supported():
    # benefit = [-0.2, -0.22, -0.19]: mean -0.203333, sd 0.015275, half 0.037946
    res = claims.leak_claim(_leak_table([-0.2, -0.22, -0.19]), MISMATCH, "s", 0.95)
    assert value(res) == pytest.approx(-0.203333, abs=1e-6)
    assert ci(res) == pytest.approx((-0.203333 - 0.037946, -0.203333 + 0.037946), abs=1e-5)
    d = details(res)
    assert d["structural_max_abs_dlogit"] == {"asrun": 0.5, "causal": 0.0}
    assert d["benefit_per_seed"] == pytest.approx({0: -0.2, 1: -0.22, 2: -0.19}) and d["n_seeds"] == 3
    assert verdict(res) == "supported"


def test_leak_claim_mismatch_is_not_leak():
    """The issue's probe: a large prefix-pool mismatch, but the true future helps no more than
    another window's tokens. The mismatch is reported, named apart; the claim is not supported."""
    res = claims.leak_claim(_leak_table([0.001, 0.002, 0.0015]), MISMATCH, "s", 0.95)
    assert details(res)["prefix_pool_mismatch"] == pytest.approx(0.203333, abs=1e-6)  # prefix - full
    assert verdict(res) == "not supported"
    noisy = claims.leak_claim(_leak_table([-0.01, 0.02, -0.005]), MISMATCH, "s", 0.95)
    assert verdict(noisy) == "inconclusive"


def test_a_position_only_pool_shows_no_structural_leak():
    """A pool that reads positions only: replacing future tokens moves no past logit (0), so
    whatever the noise in the losses, nothing can leak."""
    res = claims.leak_claim(_leak_table([-0.2, -0.22, -0.19], structural=0.0), MISMATCH, "s", 0.95)
    assert verdict(res) == "not supported" and "structural" in res["reason"]
    # a small but nonzero dependence is a path (a causal pool gives exactly 0): the benefit decides
    tiny = claims.leak_claim(_leak_table([-0.2, -0.22, -0.19], structural=5e-7), MISMATCH, "s", 0.95)
    assert verdict(tiny) == "supported"


def test_leak_claim_thin_data_is_inconclusive():
    one = claims.leak_claim(_leak_table([-0.2], seeds=(0,)), MISMATCH, "s", 0.95)
    assert verdict(one) == "inconclusive"
    none = claims.leak_claim(None, MISMATCH, "s", 0.95)
    assert verdict(none) == "inconclusive" and "leak_measure.csv" in none["reason"]
    assert details(none)["prefix_pool_mismatch_per_seed"] == pytest.approx({0: 0.2, 1: 0.22, 2: 0.19})  # reported
    # the leak measurement's own eval.json columns win over the runs table
    table = _leak_table([-0.2, -0.22, -0.19]).assign(loss_full_pool=3.0)
    res = claims.leak_claim(table, MISMATCH, "s", 0.95)
    assert details(res)["prefix_pool_mismatch_per_seed"] == pytest.approx({0: 0.2, 1: 0.2, 2: 0.2})


# -- every claim of the registry, both ways -----------------------------------------------------------------
def _setting(tmp_path, **kw):
    cfg = {**analysis_cfg(), "variants": ["none", "asrun", "causal", "static"], "sizes": ["s"],
           "size_defs": {"s": {"d_model": 8, "n_layer": 2, "d_ff": 16}}, "profile": "test", "control": {"sizes": None}}
    return claims.Setting(kw.pop("runs", runs_table([])), kw.pop("traces", {}), cfg, kw.pop("meta", GPT2), "s",
                          kw.pop("measures", {}), kw.pop("control", None))


def _control_runs(gaps, steers):
    """ncn analyze control's per-run table: the flipped label's loss gap and the steer per seed."""
    return pd.DataFrame({"variant": "control", "size": "s", "seed": range(len(gaps)), "loss_gap": gaps,
                         "steer": steers, "frac_on": [0.5 + x / 2 for x in steers], "frac_random": 0.5,
                         "frac_off": [0.5 - x / 2 for x in steers], "base_rate": 0.5})


def _kv_table(beta_gain: float, seeds=SEEDS, noise=0.0005, bytes_beta=None) -> pd.DataFrame:
    """ncn analyze kvcache's per-run table: dloss per seed and budget, uniform 0.02, beta
    0.02 - beta_gain, oracle 0.005, random 0.025 (scaled by 4 / budget), plus seeded noise; every
    policy at a budget holds the same bytes per token unless bytes_beta says otherwise."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in seeds:
        for budget in (4, 6):
            for policy, d in (("uniform", 0.02), ("beta", 0.02 - beta_gain), ("oracle", 0.005), ("random", 0.025)):
                bpt = bytes_beta if policy == "beta" and bytes_beta else 24.0 * budget
                rows.append({"variant": "causal", "size": "s", "seed": seed, "policy": policy, "budget_bits": budget,
                             "delta_loss": d * 4 / budget + rng.normal(0, noise), "bytes_per_token": bpt})
    return pd.DataFrame(rows)


KNOB_SCALES = (0.5, 0.7, 1.0, 1.4, 2.0)


def _knob_grid(strength: dict, seeds=SEEDS, noise=0.01, bump=None) -> pd.DataFrame:
    """ncn analyze knobs' per-run table: entropy = 3 - strength[variant] * log2(s) (+ seeded noise
    on the strength); bump=(variant, seed): a kink that breaks the monotone fall."""
    rng = np.random.default_rng(0)
    rows = []
    for v, k in strength.items():
        for seed in seeds:
            for s in KNOB_SCALES:
                h = 3 - (k + rng.normal(0, noise)) * math.log2(s) + (1.0 if bump == (v, seed) and s == 1.4 else 0.0)
                rows.append({"variant": v, "size": "s", "seed": seed, "target": "all", "scale": s, "entropy": h,
                             "loss": 3.0})
    return pd.DataFrame(rows)


def _merge_traces(*frames):
    return pd.concat(frames, ignore_index=True)


def _known(tmp_path, key, arm):
    """The claim `key` judged on its planted ("planted"), null ("null") or thin ("thin") input."""
    planted, null = arm == "planted", arm == "null"
    seeds = (0,) if arm == "thin" else SEEDS
    if key == "ab_beats_baseline":
        ppl = ([10.0, 10.5, 9.8], [11.0, 11.6, 10.9]) if planted else ([11.0, 11.6, 10.9], [10.0, 10.5, 9.8])
        s = _setting(tmp_path, runs=_ab_runs(*(p[: len(seeds)] for p in ppl)))
    elif key == "baseline_ppl":
        s = _setting(tmp_path, runs=_baseline_runs(([6.0, 6.2, 6.1] if planted else [5.0, 5.1, 5.2])[: len(seeds)]))
    elif key == "layer_specialisation":
        base = [0.68, 0.71, 0.74] if planted else [0.7] * 3
        s = _setting(tmp_path, traces={"causal": _layer_trace(base, seeds=seeds)})
    elif key == "phasic_but":
        s = _setting(tmp_path, traces={"causal": _phasic_trace(seeds=seeds, constant=null)})
    elif key == "homeostasis":
        ratios = {0: 100.0, 1: 80.0, 2: 120.0} if planted else {0: 1.0, 1: 1.1, 2: 0.9}
        s = _setting(tmp_path, traces={"causal": _gain_trace(IN_BAND, seeds)},
                     runs=_reg_runs(tmp_path, (0.001,) * 3, seeds), measures={"regonly": _regonly(ratios, seeds)})
    elif key in ("gamma_gates", "block_skipping"):
        trace, skip = _gate_inputs(informative=planted, seeds=seeds)
        s = _setting(tmp_path, traces={"causal": trace}, measures={"skip_measure": skip})
    elif key == "asrun_leak":
        benefit = [-0.2, -0.22, -0.19] if planted else [0.001, 0.002, 0.0015]
        leak = _leak_table(benefit[: len(seeds)], seeds=seeds)
        s = _setting(tmp_path, runs=MISMATCH, measures={"leak_measure": leak})
    elif key == "kvcache_beta_guided":
        s = _setting(tmp_path, measures={"kvcache": _kv_table(0.01 if planted else 0.0, seeds)})
    elif key == "knob_temperature":
        s = _setting(tmp_path, measures={"knobs": _knob_grid({"causal": 0.5, "none": 0.1 if planted else 0.5}, seeds)})
    elif key == "control_steers":
        gaps, steers = ([0.05, 0.06, 0.055], [0.3, 0.35, 0.32]) if planted else ([0.0] * 3, [0.3, 0.35, 0.32])
        s = _setting(tmp_path, control=_control_runs(gaps[: len(seeds)], steers[: len(seeds)]))
    else:
        raise KeyError(key)
    claim = next(c for c in claims.CLAIMS if c.key == key)
    return claims.judge(1, claim, s, "causal", [])


@pytest.mark.parametrize("key", [c.key for c in claims.CLAIMS])
def test_every_claim_has_known_answers_both_ways(tmp_path, key):
    """Planted -> supported, null -> not supported or inconclusive (never the planted verdict),
    thin (one seed) -> inconclusive, through the registry entry itself."""
    try:
        planted = _known(tmp_path / "p", key, "planted")
    except KeyError:
        pytest.fail(f"claim {key} has no known-answer inputs in _known: add a planted, a null and a thin one")
    null, thin = _known(tmp_path / "n", key, "null"), _known(tmp_path / "t", key, "thin")
    assert planted["verdict"] == "supported", planted["reason"]
    assert null["verdict"] in ("not supported", "inconclusive") and null["verdict"] != planted["verdict"]
    assert thin["verdict"] == "inconclusive", thin["reason"]
    for res in (planted, null, thin):
        assert res["origin"] in claims.ORIGINS and res["null"] and res["control"] and res["statistic"]
        assert res["reason"]


def test_claims_are_byte_identical_across_reruns(tmp_path):
    import json

    def doc():
        trace, skip = _gate_inputs(informative=True)
        traces = {"causal": _merge_traces(_layer_trace([0.68, 0.71, 0.74]), _phasic_trace(), trace)}
        runs = pd.concat([_ab_runs([10.0, 10.5, 9.8], [11.0, 11.6, 10.9]), MISMATCH], ignore_index=True)
        measures = {"skip_measure": skip, "leak_measure": _leak_table([-0.2, -0.22, -0.19])}
        s = _setting(tmp_path, traces=traces, runs=runs, measures=measures)
        judged = [claims.judge(i, c, s, "causal", []) for i, c in enumerate(claims.CLAIMS, 1)]
        d = claims.nan_to_none({"claims": judged})
        return json.dumps(d, sort_keys=True), claims.claims_tex(d), claims.claims_paragraphs(d)

    assert doc() == doc()


# -- match_params: the tolerance is a promise ------------------------------------------------------------
TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64)


def test_param_count_by_hand():
    from ncn.model import ModelConfig, count_params

    # embeddings 50*32 + 16*32 = 2112; per layer: 2 RMSNorm weights (64) + qkv 3*32*32 + proj 32*32
    # (4096) + FFN 2*32*64 (4096) = 8256, two layers 16512; final norm 32; the head is tied.
    assert count_params(ModelConfig(**TINY)) == 2112 + 16512 + 32 == 18656
    assert count_params(ModelConfig(**TINY, ncn="static")) == 18656 + 2 * 3  # one (g, beta, gamma) per layer


def test_param_count_on_meta_equals_a_built_model_for_every_variant():
    """count_params builds on the meta device and skips every initialiser; the count is the real one."""
    from ncn.model import ModelConfig, Transformer, count_params
    from ncn.variants import names

    for v in names():
        cfg = ModelConfig(**TINY, ncn=v)
        assert count_params(cfg) == Transformer(cfg).num_params(), v


def test_match_params_honours_the_tolerance():
    """"static" adds 6 parameters; one step of d_ff adds 2 layers * 2 * 32 = 128. No d_ff gets
    closer than 6 below the target (18662): within a tolerance of 6/18662, refused below it."""
    from ncn.model import ModelConfig, count_params, match_params

    cfg = ModelConfig(**TINY, ncn="static")
    target = 18662
    assert count_params(cfg) == target
    base = match_params(cfg, tol=6 / target * (1 + 1e-9))
    assert base.d_ff == 64 and base.ncn == "none" and count_params(base) == target - 6
    with pytest.raises(NCNError, match="match_params"):
        match_params(cfg, tol=6 / target * (1 - 1e-6))
    with pytest.raises(NCNError):
        match_params(cfg, tol=0.0)
    # the default 0.5% (93 parameters) is reachable here
    assert match_params(cfg).d_ff == 64


def test_match_params_picks_the_nearest_d_ff_and_refuses_below_its_miss():
    """A "causal" NCN of arbitrary size on a coarse d_ff step (2 layers * 2 * 256 = 1024 parameters):
    the best d_ff, found here by brute force over the linear count, and its miss decide."""
    from ncn.model import ModelConfig, count_params, match_params

    cfg = ModelConfig(vocab_size=1000, block_size=16, n_layer=2, n_head=2, d_model=256, d_ff=64, ncn="causal",
                      ncn_hidden=7, ncn_heads=2)
    target = count_params(cfg)
    p64 = count_params(replace(cfg, ncn="none"))
    d = np.arange(1, 5000)
    counts = p64 + 2 * 2 * 256 * (d - 64)
    best = int(d[np.argmin(np.abs(counts - target))])
    miss = int(np.min(np.abs(counts - target)))
    assert miss > 0 and count_params(replace(cfg, ncn="none", d_ff=best)) == target + (counts[best - 1] - target)
    got = match_params(cfg, tol=miss / target * (1 + 1e-9))
    assert got.d_ff == best and abs(count_params(got) - target) == miss
    with pytest.raises(NCNError):
        match_params(cfg, tol=miss / target * (1 - 1e-6))


# -- block skipping: delta_loss at a positive eps ---------------------------------------------------------
def _successor_model():
    """A "static" model whose layer-0 FFN does the whole task (token k -> k + 1 on a cycle of 8):
    embeddings 3 * one-hot (tied head), layer 0's FFN maps e_k to a large e_{k+1}. Gates: layer 0
    gamma = 0.3, layer 1 gamma = 0.9. Skipping layer 0's FFN leaves the model predicting k itself:
    the loss must rise."""
    from ncn.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8, block_size=8, n_layer=2, n_head=2, d_model=8, d_ff=8, ncn="static")
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.tok_emb.weight.copy_(3.0 * torch.eye(8))
        shift = torch.roll(torch.eye(8), 1, dims=0)  # column k has its 1 in row k + 1
        model.blocks[0].ffn.up.weight.copy_(10.0 * torch.eye(8))
        model.blocks[0].ffn.down.weight.copy_(5.0 * shift)
        gates = [p for p in model.parameters() if tuple(p.shape) == (2, 3)]
        assert len(gates) == 1  # the per-layer constants (g, beta, gamma) of "static"
        gates[0][:, 2] = torch.logit(torch.tensor([0.3, 0.9]))
    return model


def _write_skip_inputs(tmp_path, model):
    import json

    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    torch.save({"model_config": asdict(model.cfg), "state_dict": model.state_dict(), "size": "t", "seed": 0},
               run / "model.pt")
    stream = (np.arange(8 * 6 + 1) % 8).astype(np.uint16)
    stream.tofile(data / "valid.bin")
    stream.tofile(data / "train.bin")
    split = {"tokens": len(stream), "bytes": 100, "stories": None}
    (data / "meta.json").write_text(json.dumps({
        "dtype": "uint16", "vocab_size": 8, "eot_id": 0, "tokenizer_kind": "bpe", "tokenizer_sha256": "x",
        "val_split": "official", "train": {"file": "train.bin", **split}, "heldout": {"file": "valid.bin", **split},
        "valid": {"file": "valid.bin", **split}}))
    return run, data, stream


def _plain_loss(model, stream, zero_ffn_layers=()):
    """Mean CE of the 6 windows of 8 with the FFN output of the given layers removed by hand."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer in zero_ffn_layers:
            m.blocks[layer].ffn.down.weight.zero_()
        w = torch.from_numpy(stream.astype(np.int64))
        x, y = w[:-1].view(6, 8), w[1:].view(6, 8)
        logits = m(x).logits
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, 8), y.reshape(-1)))


def test_skip_delta_loss_is_positive_when_skipping_a_useful_ffn(tmp_path):
    from ncn.analysis.skip import skip_table

    model = _successor_model()
    run, data, stream = _write_skip_inputs(tmp_path, model)
    dense = _plain_loss(model, stream)
    without0 = _plain_loss(model, stream, (0,))
    without_both = _plain_loss(model, stream, (0, 1))
    assert dense < 0.1 and without0 > dense + 1.0  # the construction works as described
    cfg = {"analysis": {"skip_eps": [0.5, 0.95], "gate_eps": [0.5], "skip_max_tokens": None, "skip_random_draws": 2},
           "eval": {"batch_size": 4}}
    df = skip_table(run, cfg, data).set_index("eps")
    assert list(df.index) == [0.0, 0.5, 0.95]
    assert df.loc[0.0, "delta_loss"] == 0.0 and df.loc[0.0, "skip_frac"] == 0.0
    # dense is ~0.002, a mean of near-zero CEs (logsumexp − logit, logits up to ~8.5): fp32 rounds each by
    # ~1e-7 absolute, which the batches of 4 and 6 and the GEMM kernels of a CPU place differently
    # (an AMD EPYC gave 1.8e-5 relative), so this comparison is absolute
    assert df.loc[0.0, "loss"] == pytest.approx(dense, rel=1e-5, abs=1e-6)
    # eps = 0.5 skips layer 0 (gamma 0.3 < 0.5) for every token, keeps layer 1 (0.9)
    assert df.loc[0.5, "skip_frac"] == pytest.approx(0.5)
    assert df.loc[0.5, "loss"] == pytest.approx(without0, rel=1e-5)
    assert df.loc[0.5, "delta_loss"] == pytest.approx(without0 - dense, rel=1e-5)
    assert df.loc[0.5, "delta_loss"] > 1.0
    assert df.loc[0.5, "ppl"] == pytest.approx(math.exp(without0), rel=1e-5)
    assert df.loc[0.95, "skip_frac"] == pytest.approx(1.0)
    assert df.loc[0.95, "delta_loss"] == pytest.approx(without_both - dense, rel=1e-5)
    assert (df["tokens"] == 48).all()
    # static gates close whole layers: skipping as many (token, layer) evaluations at random is the same skip
    assert (df["delta_random"] == df["delta_loss"]).all() and (df["loss_random_sd"] == 0).all()


# -- the statistics under every claim: edges the claims' tests do not reach ---------------------------------
def test_t_interval_two_and_one_values_and_default_confidence():
    from ncn.analysis import stats

    iv = stats.t_interval([1.0, 3.0])  # default 95%: 2 ± t_{0.975,1} * sd / sqrt(2) = 2 ± 12.706205
    assert (iv.mean, iv.n, iv.sd) == (2.0, 2, pytest.approx(math.sqrt(2)))
    assert (iv.low, iv.high) == pytest.approx((2 - 12.706205, 2 + 12.706205), abs=1e-5)
    assert iv.half == pytest.approx(12.706205, abs=1e-5)
    assert stats.t_interval([1, 2, 3]).half == pytest.approx(T975_2 / math.sqrt(3), abs=1e-6)
    one = stats.t_interval([5.0])
    assert one.n == 1 and math.isnan(one.sd) and not one.defined
    none = stats.t_interval([])
    assert none.n == 0 and all(math.isnan(x) for x in (none.mean, none.low, none.high, none.sd))
    assert iv.as_dict() == {"mean": 2.0, "ci_low": iv.low, "ci_high": iv.high, "n": 2, "sd": iv.sd}
    assert iv.as_dict("loss_") == {"loss_mean": 2.0, "loss_ci_low": iv.low, "loss_ci_high": iv.high, "loss_n": 2,
                                   "loss_sd": iv.sd}


def test_verdicts_with_one_bound_missing_or_on_zero():
    from ncn.analysis import stats

    assert stats.ci_verdict(math.nan, -1.0, 0.0, "below") == "inconclusive"
    assert stats.ci_verdict(1.0, math.nan, 0.0, "above") == "inconclusive"
    assert stats.ab_verdict(math.nan, -0.1) == "inconclusive" and stats.ab_verdict(0.1, math.nan) == "inconclusive"
    assert stats.ab_verdict(-1.0, 0.0) == "no significant difference"  # touching 0 is not "entirely below"
    assert stats.ab_verdict(0.0, 1.0) == "no significant difference"
    assert stats.ab_verdict(-1.0, 0.5) == "no significant difference"
    assert stats.ab_verdict(-0.5, 1.0) == "no significant difference"


def test_one_way_anova_within_sum_of_squares_of_one():
    from ncn.analysis import stats

    # [0, 1] and [5, 6]: SS_within = 4 * 0.25 = 1 on 2 df, SS_between = 2 * 2.5² * 2 = 25 on 1 df: F = 50,
    # p = P(F_{1,2} > 50) = P(|t_2| > sqrt(50)) = 1 - sqrt(50 / (2 + 50)) = 0.019419
    F, p = stats.one_way_anova([[0, 1], [5, 6]])
    assert F == pytest.approx(50.0) and p == pytest.approx(1 - math.sqrt(50 / 52), abs=1e-9)
    assert all(math.isnan(x) for x in stats.one_way_anova([[1, 1], [1, 1]]))  # no variation at all


def test_spearman_edges():
    from ncn.analysis import stats

    rho, p, n = stats.spearman([1, 2, 3], [3, 1, 2])  # n = 3 is enough: d² = 4 + 1 + 1, rho = 1 - 6*6/24 = -0.5
    assert n == 3 and rho == pytest.approx(-0.5) and p == pytest.approx(2 / 3)
    assert all(math.isnan(x) for x in stats.spearman([1, 2], [1, 2])[:2])  # two pairs: undefined
    assert all(math.isnan(x) for x in stats.spearman([1, 2, 3], [4, 4, 4])[:2])  # constant y
    assert stats.spearman([1, 2, 3, 4], [4, 4, 4, 5])[0] == pytest.approx(0.7745967)  # ties, not constant


def test_nan_to_none_keeps_numpy_booleans():
    from ncn.analysis import stats

    assert stats.nan_to_none({"a": np.bool_(True), "b": np.bool_(False)}) == {"a": True, "b": False}
    assert stats.nan_to_none(np.bool_(True)) is True
