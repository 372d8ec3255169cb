"""Analysis building blocks on hand-made numbers: intervals, verdicts at their thresholds,
the lexical control, power-law fits, LaTeX formatting, and block skipping on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from ncn.analysis import claims, stats, tables
from ncn.analysis.scaling import fit_power_law
from scipy.stats import f as sps_f
from ncn.errors import NCNError

torch.set_num_threads(1)


# -- intervals --------------------------------------------------------------------------------------
def test_t_interval_known_value():
    iv = stats.t_interval([1, 2, 3], 0.95)
    assert iv.mean == 2 and iv.n == 3 and iv.sd == 1
    # t_{0.975, 2} = 4.302653 → half-width 4.302653 / sqrt(3) = 2.484138
    assert iv.half == pytest.approx(2.484138, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert stats.t_interval([1, 2, 3], 0.90).half == pytest.approx(2.919986 / math.sqrt(3), abs=1e-6)


def test_t_interval_undefined():
    one = stats.t_interval([5.0])
    assert one.mean == 5.0 and math.isnan(one.low) and math.isnan(one.high) and not one.defined
    none = stats.t_interval([])
    assert math.isnan(none.mean) and none.n == 0
    assert not stats.t_interval([1.0, float("nan")]).defined


def test_paired_differences_uses_common_seeds():
    seeds, d = stats.paired_differences({0: 5.0, 1: 6.0, 2: 7.0}, {1: 1.0, 0: 2.0, 3: 9.0})
    assert seeds == [0, 1] and list(d) == [3.0, 5.0]


# -- verdicts at the thresholds ---------------------------------------------------------------------
@pytest.mark.parametrize("low,high,expected", [
    (-2.0, -1e-12, "supported"),
    (-2.0, 0.0, "inconclusive"),  # touching the threshold is not "entirely below"
    (-1.0, 1.0, "inconclusive"),  # straddles: neither shown nor refuted
    (0.0, 1.0, "not supported"),  # entirely on the other side (touching counts as other side)
    (0.5, 1.0, "not supported"),
    (math.nan, math.nan, "inconclusive"),
])
def test_ci_verdict_below(low, high, expected):
    assert stats.ci_verdict(low, high, 0.0, "below") == expected


def test_ci_verdict_above():
    assert stats.ci_verdict(5.5 + 1e-9, 7, 5.5, "above") == "supported"
    assert stats.ci_verdict(5.5, 7, 5.5, "above") == "inconclusive"
    assert stats.ci_verdict(4, 5.5, 5.5, "above") == "not supported"
    assert stats.ci_verdict(4, 6, 5.5, "above") == "inconclusive"
    assert stats.ci_verdict(math.nan, 7, 5.5, "above") == "inconclusive"
    with pytest.raises(ValueError):
        stats.ci_verdict(0, 1, 0, "sideways")


def test_ab_verdict():
    assert stats.ab_verdict(-1, -0.1) == "better"
    assert stats.ab_verdict(0.1, 1) == "worse"
    assert stats.ab_verdict(-1, 1) == "no significant difference"
    assert stats.ab_verdict(math.nan, math.nan) == "inconclusive"


def test_empirical_p():
    controls = list(range(1, 20))  # 19 controls
    assert stats.empirical_p_greater(100, controls) == pytest.approx(1 / 20)
    assert stats.empirical_p_greater(19, controls) == pytest.approx(2 / 20)  # a tie counts against
    assert stats.empirical_p_greater(0, controls) == 1.0
    assert math.isnan(stats.empirical_p_greater(1, []))


def test_one_way_anova_known():
    F, p = stats.one_way_anova([[1, 2, 3], [4, 5, 6]])
    assert F == pytest.approx(13.5) and p == pytest.approx(0.021312, abs=1e-5)
    assert all(math.isnan(x) for x in stats.one_way_anova([[1, 2, 3]]))  # one group
    assert all(math.isnan(x) for x in stats.one_way_anova([[1], [2]]))  # one seed: no within variance
    assert stats.one_way_anova([[1, 1], [2, 2]]) == (math.inf, 0.0)


def test_spearman():
    rho, p, n = stats.spearman([1, 2, 3, 4, float("nan")], [10, 20, 30, 40, 50])
    assert rho == pytest.approx(1.0) and n == 4
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3])[0])


def test_nan_to_none_is_strict_json():
    obj = stats.nan_to_none({"a": float("nan"), "b": [np.float64(1.5), float("inf")], "c": np.int64(3)})
    assert obj == {"a": None, "b": [1.5, None], "c": 3}
    json.dumps(obj, allow_nan=False)



# -- the statistics of the claims (issue 12) ----------------------------------------------------------
def test_prediction_interval_is_wider_than_the_mean_ci_by_sqrt_n_plus_one():
    pi, ci = stats.prediction_interval([1, 2, 3]), stats.t_interval([1, 2, 3])
    assert pi.mean == 2 and pi.half == pytest.approx(4.302653 * math.sqrt(4 / 3), abs=1e-6)
    assert pi.half / ci.half == pytest.approx(math.sqrt(3 + 1))
    assert not stats.prediction_interval([1.0]).defined


def _anova_by_regression(mat):
    """F of the column effect from two least-squares fits (rows + columns vs rows only)."""
    b, k = mat.shape
    y = mat.ravel()
    rows = np.kron(np.eye(b), np.ones((k, 1)))
    cols = np.kron(np.ones((b, 1)), np.eye(k))[:, 1:]
    full, reduced = np.hstack([rows, cols]), rows
    rss = [float(((y - x @ np.linalg.lstsq(x, y, rcond=None)[0]) ** 2).sum()) for x in (full, reduced)]
    df_res = b * k - b - (k - 1)
    return ((rss[1] - rss[0]) / (k - 1)) / (rss[0] / df_res)


def test_blocked_anova_matches_the_regression_f():
    rng = np.random.default_rng(0)
    mat = rng.normal(size=(4, 3)) + np.array([0.0, 0.5, 1.0]) + rng.normal(size=(4, 1)) * 5
    F, p = stats.blocked_anova(mat)
    assert F == pytest.approx(_anova_by_regression(mat), rel=1e-9)
    assert p == pytest.approx(float(sps_f.sf(F, 2, 6)))
    # block offsets do not change it; the one-way ANOVA would drown in them
    assert stats.blocked_anova(mat + np.arange(4)[:, None] * 100)[0] == pytest.approx(F, rel=1e-6)
    assert all(math.isnan(x) for x in stats.blocked_anova(mat[:1]))
    assert stats.blocked_anova([[1, 2], [2, 3]]) == (math.inf, 0.0)  # additive exactly: no residual
    assert all(math.isnan(x) for x in stats.blocked_anova([[1, 1], [2, 2]]))  # no column effect, no residual


def test_friedman_matches_scipy_and_handles_two_columns():
    from scipy.stats import friedmanchisquare

    mat = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0], [1.0, 3.0, 2.0, 4.0]])
    q, p = stats.friedman(mat)
    ref = friedmanchisquare(*mat.T)
    assert q == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    # three seeds ranking the same layers in the same order, k = 4: Q = 9 (the smallest p, 0.029)
    assert stats.friedman([[1, 2, 3, 4]] * 3)[0] == pytest.approx(9.0)
    assert stats.friedman([[1, 2], [1, 3], [0, 5]])[0] == pytest.approx(3.0)  # k = 2: Q = 3, p = 0.083
    assert all(math.isnan(x) for x in stats.friedman([[1, 1], [2, 2]]))  # every row tied
    assert all(math.isnan(x) for x in stats.friedman([[1, 2, 3]]))  # one block: no test
    assert all(math.isnan(x) for x in stats.friedman([[1], [2], [3]]))  # one column: no test
    assert all(math.isnan(x) for x in stats.friedman([[1, 2, 3], [1, math.nan, 3]]))  # a missing value


def test_partial_spearman_matches_the_first_order_formula():
    rng = np.random.default_rng(1)
    z = rng.normal(size=60)
    x, y = z + rng.normal(size=60), z + rng.normal(size=60)
    rho, p, n = stats.partial_spearman(x, y, [z])
    r = lambda a, b: stats.spearman(a, b)[0]  # noqa: E731
    by_hand = (r(x, y) - r(x, z) * r(y, z)) / math.sqrt((1 - r(x, z) ** 2) * (1 - r(y, z) ** 2))
    assert n == 60 and rho == pytest.approx(by_hand, abs=1e-9) and 0 < p < 1
    assert stats.spearman(x, y)[0] > 0.3 and abs(rho) < stats.spearman(x, y)[0]  # z explained most of it
    assert stats.partial_spearman(x, y, [])[0] == pytest.approx(stats.spearman(x, y)[0])
    assert math.isnan(stats.partial_spearman([1, 2, 3], [1, 2, 3], [[1, 2, 3]])[0])  # no df left
    assert math.isnan(stats.partial_spearman(z, y, [z])[0])  # x is its covariate
    # p: with no covariate it is Spearman's own test (t with n - 2 df), as scipy computes it
    import scipy.stats as sps

    assert stats.partial_spearman(x, y, [])[1] == pytest.approx(sps.spearmanr(x, y).pvalue, rel=1e-9)
    # one degree of freedom left (n 4, one covariate) is enough: rho and its t-test with 1 df
    rho1, p1, _ = stats.partial_spearman([1, 3, 2, 4], [2, 1, 4, 3], [[1, 2, 4, 3]])
    assert math.isfinite(rho1) and abs(rho1) < 1
    assert p1 == pytest.approx(2 * sps.t.sf(abs(rho1) / math.sqrt(1 - rho1**2), 1), rel=1e-12)


def test_fisher_interval_and_all_of():
    iv = stats.fisher_interval([0.5, 0.5, 0.5])
    assert iv.mean == pytest.approx(0.5) and iv.low == pytest.approx(0.5)
    # a perfect correlation (rho = -1 or 1) is clipped, not an infinite z
    for edge in (-1.0, 1.0):
        iv, near = stats.fisher_interval([edge, 0.5 * edge, 0.8 * edge]), stats.fisher_interval([0.999999 * edge, 0.5 * edge, 0.8 * edge])
        assert math.isfinite(iv.mean) and (iv.mean, iv.low, iv.high) == (near.mean, near.low, near.high)
    iv = stats.fisher_interval([0.2, 0.5, 0.8])
    z = np.arctanh([0.2, 0.5, 0.8])
    assert iv.mean == pytest.approx(math.tanh(z.mean())) and iv.low < 0.2
    S, N, I, A = "supported", "not supported", "inconclusive", "not applicable"
    assert stats.all_of(S, S) == S and stats.all_of(S, I) == I and stats.all_of(S, N, I) == N
    assert stats.all_of(S, A) == A and stats.all_of(N, A) == N and stats.all_of() == I

# -- the lexical control (claim 4) on a hand-made trace ----------------------------------------------
def _sentence(sid, kind, values, probe_pos, layers=2, surprisal=None):
    """One sentence: every signal of every layer takes values[pos] (+ layer offset)."""
    rows = []
    for pos, v in enumerate(values):
        for layer in range(layers):
            rows.append({"variant": "causal", "size": "s", "seed": 0, "sentence_id": sid, "kind": kind, "pos": pos,
                         "token_id": pos, "token": f"t{pos}", "layer": layer, "g": v + 0.1 * layer,
                         "beta": v, "gamma": v, "surprisal": np.nan if pos == 0 else
                         (surprisal[pos] if surprisal is not None else float(pos)),
                         "probe": int(pos == probe_pos)})
    return rows


def test_token_changes_by_hand():
    df = pd.DataFrame(_sentence(0, "trace", [1.0, 1.0, 1.2, 0.9, 0.9], probe_pos=3))
    ch = claims.token_changes(df)
    assert list(ch["pos"]) == [2, 3, 4]  # t ≥ 2 only
    # |Δ| is the same for every layer and signal, so the mean is |Δ| itself
    assert list(ch["change"]) == pytest.approx([0.2, 0.3, 0.0])
    assert list(ch["probe"]) == [0, 1, 0]
    twist, pos, controls, unmatched = claims.twist_and_controls(ch)
    assert twist == pytest.approx(0.3) and pos == 3 and len(controls) == 0 and unmatched == 0


def test_twist_and_controls_keep_only_position_matched_controls():
    rows = _sentence(0, "trace", [1, 1, 1, 1.3, 1], 3)
    rows += _sentence(1, "control", [1, 1, 1, 1.1, 1], 3)  # probe at 3, as the twist's
    rows += _sentence(2, "control", [1, 1, 1.5, 1, 1], 2)  # probe at 2: left out
    rows += _sentence(3, "valid", [1, 1, 1, 1, 1], -1)
    twist, pos, controls, unmatched = claims.twist_and_controls(claims.token_changes(pd.DataFrame(rows)))
    assert (twist, pos, unmatched) == (pytest.approx(0.3), 3, 1)
    assert controls.to_dict() == {1: pytest.approx(0.1)}


def test_pair_difference_at_the_first_differing_token():
    twist = _sentence(0, "trace", [1, 1, 1, 1.3, 1], 3)
    pair = _sentence(1, "pair", [1, 1, 1, 1.1, 1.2], -1)
    for r in pair:
        r["token_id"] = r["pos"] + (100 if r["pos"] >= 3 else 0)  # the same prefix, then other tokens
    df = pd.DataFrame(twist + pair)
    d, n = claims.pair_difference(df, claims.token_changes(df))
    assert n == 1 and d == pytest.approx(0.3 - 0.1)  # at position 3, not at 4 (0.3 vs 0.1 at 4 too)


def test_gate_and_skipping_read_the_measurement_at_the_gate_eps():
    cfg = {"analysis": {"confidence": 0.95, "gate_eps": [0.05, 0.2], "gate_branch_ratio": 0.05,
                        "gate_min_fraction": 0.25, "skip_tolerance_nats": 0.01, "skip_min_fraction": 0.01}}
    rows = []
    for seed in range(3):
        # gamma < 0.2 on 2 of 4 real tokens; of those, the branch is small on one: closed 0.25 < 0.2?
        for pos, (gam, ratio) in enumerate([(0.0, 0.0), (0.05, 0.01), (0.15, 0.2), (0.5, 0.01), (0.9, 0.3)]):
            rows.append({"seed": seed, "pos": pos, "layer": 0, "gamma": gam, "branch_ratio": ratio})
    trace = pd.DataFrame(rows)
    assert claims.closed_fractions(trace, 0.2, 0.05) == {0: 0.25, 1: 0.25, 2: 0.25}  # BOS excluded
    skip = pd.DataFrame([{"variant": "causal", "size": "s", "seed": s, "eps": e, "loss_dense": 3.0,
                          "loss_skip": 3.0 + 0.001 * e, "loss_random": 3.0 + 0.1 * e + 0.001 * s, "skip_frac": e}
                         for s in range(3) for e in (0.05, 0.2, 0.3)])
    res = claims.gate_claim(trace, skip, "causal", "s", cfg)
    assert res["details"]["eps"] == 0.2 and res["details"]["skip_frac"] == pytest.approx(0.2)
    assert res["details"]["gated_minus_random"] == pytest.approx(0.0002 - 0.02 - 0.001)
    # the fraction 0.25 sits on the floor 0.25: not above it, a refuted leg
    assert res["value"] == 0.25 and res["verdict"] == "not supported"
    cfg["analysis"]["gate_min_fraction"] = 0.2499
    assert claims.gate_claim(trace, skip, "causal", "s", cfg)["verdict"] == "supported"
    res = claims.skipping_claim(skip, "causal", "s", cfg)  # every eps within 0.01 nats: the most skipping, 0.3
    assert res["details"]["eps"] == 0.3 and res["value"] == pytest.approx(0.0003 - 0.03 - 0.001)


# -- scaling, tables --------------------------------------------------------------------------------
def test_power_law_fit():
    n = np.array([1e4, 1e5, 1e6])
    a, b = fit_power_law(n, 7.0 * n**-0.07)
    assert a == pytest.approx(7.0) and b == pytest.approx(-0.07)
    assert all(math.isnan(x) for x in fit_power_law([1e4], [3.0]))
    assert all(math.isnan(x) for x in fit_power_law([1e4, 1e4], [3.0, 3.1]))


def test_latex_helpers():
    assert tables.escape("a_b & 50% #1 {x} ~ ^ \\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}")
    assert tables.pm(2.0, -0.484138, 4.484138, 2) == r"$2.00 \pm 2.48$"
    assert tables.pm(2.0, math.nan, math.nan) == "$2.000$"
    assert tables.num(None) == "--" and tables.ci(math.nan, 1) == "--"
    assert tables.sci(12345) == r"$1.23 \times 10^{4}$"
    tex = tables.booktabs(["A", "B"], [["1", "2"], ["3", "4"]], "lr", midrules_after=[0])
    assert tex.splitlines() == ["\\begin{tabular}{lr}", "\\toprule", "A & B \\\\", "\\midrule", "1 & 2 \\\\",
                                "\\midrule", "3 & 4 \\\\", "\\bottomrule", "\\end{tabular}"]
    with pytest.raises(ValueError):
        tables.booktabs(["A", "B"], [["1"]], "lr")


def test_largest_size():
    from ncn.analysis.runs import largest_size, sizes_by_scale

    cfg = {"sizes": ["m", "xs", "s"], "size_defs": {
        "xs": {"d_model": 32, "n_layer": 2, "d_ff": 64}, "s": {"d_model": 48, "n_layer": 2, "d_ff": 96},
        "m": {"d_model": 64, "n_layer": 4, "d_ff": 256}}}
    assert sizes_by_scale(cfg) == ["xs", "s", "m"] and largest_size(cfg) == "m"


def test_missing_eval_is_named(tmp_path):
    from ncn.analysis.runs import collect

    (tmp_path / "metrics.json").write_text(json.dumps({"variant": "none", "size": "s", "seed": 0}))
    with pytest.raises(NCNError, match="eval.json is missing"):
        collect([tmp_path])


# -- block skipping on a tiny random model ----------------------------------------------------------
def _tiny(ncn, seed=0):
    from ncn.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, d_model=16, d_ff=32,
                                   ncn=ncn, ncn_hidden=8)).eval()


@pytest.mark.parametrize("ncn", ["asrun", "causal", "tonic", "static"])
def test_skip_eps_zero_is_exactly_unskipped(ncn):
    from ncn.analysis.skip import evaluate, windows

    tokens = np.random.default_rng(0).integers(0, 64, 16 * 7 + 1).astype(np.uint16)
    x, y = windows(tokens, 16, None)
    assert x.shape == (7, 16)
    assert windows(tokens, 16, 16 * 3)[0].shape == (3, 16)  # a cap of k windows' tokens: k windows (targets are the +1)
    assert torch.equal(windows(tokens, 16, 16 * 3)[1], y[:3])
    ref, frac_ref, _ = evaluate(_tiny(ncn), x, y, 3, None)
    loss, frac, _ = evaluate(_tiny(ncn), x, y, 3, 0.0)
    assert loss == ref and frac == 0.0  # bitwise equal, not approximately


def test_skip_gathers_fewer_rows():
    """At an ε inside the range of γ, the FFN runs on fewer rows (it is not multiplied by 0)."""
    from ncn.analysis.skip import evaluate

    model = _tiny("asrun")  # zero biases: γ = σ(small) ≈ 0.5 spread around it
    torch.manual_seed(1)
    x = torch.randint(0, 64, (4, 16))
    with torch.no_grad():
        gamma = model(x, return_signals=True).signals[..., 2]
    eps = float(gamma.median())
    expected_skipped = int((gamma < eps).sum())
    assert 0 < expected_skipped < gamma.numel()

    rows = []
    hooks = [b.ffn.register_forward_hook(lambda m, inp, out: rows.append(inp[0].numel() // inp[0].shape[-1]))
             for b in model.blocks]
    try:
        evaluate(model, x, x, 4, None)
        dense = sum(rows)
        rows.clear()
        _, frac, _ = evaluate(model, x, x, 4, eps)
        sparse = sum(rows)
    finally:
        for h in hooks:
            h.remove()
    assert dense == gamma.numel()
    assert sparse == dense - expected_skipped
    assert frac == pytest.approx(expected_skipped / gamma.numel())


# -- helpers of workflow/rules/analysis.smk and of the trace ------------------------------------------
def test_rule_helpers():
    from ncn.analysis.rules import claim_variants, trace_files

    cfg = {"variants": ["none", "asrun", "tonic"], "seeds": [3, 4], "analysis": {"skip_eps": [0.1],
                                                                               "confidence": 0.95}, "eval": {"b": 1}}
    assert claim_variants(cfg) == ["asrun"]  # no causal: the first NCN variant is asrun itself
    assert claim_variants({**cfg, "variants": ["none", "causal", "asrun"]}) == ["causal", "asrun"]
    assert claim_variants({**cfg, "variants": ["none"]}) == []
    assert trace_files("t/{variant}_{size}_seed{seed}.csv", ["asrun", "tonic"], "s", [3, 4]) == [
        "t/asrun_s_seed3.csv", "t/asrun_s_seed4.csv", "t/tonic_s_seed3.csv", "t/tonic_s_seed4.csv"]
    assert trace_files("t/{variant}", [], "s", [3]) == []
    # the rules' rerun triggers: tests/test_stages.py


class _CharTokenizer:
    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_validation_sentences_with_and_without_eot():
    from ncn.analysis.trace import decode_chunks, validation_sentences

    stories = ["Once upon a time. The little dog ran to the big red barn in the sun. End.",
               "Hello there. A very small bird sang a happy song for all of the kids. Bye."]
    tok = _CharTokenizer()
    with_eot = np.array([ord(c) for c in stories[0]] + [1] + [ord(c) for c in stories[1]])
    without = np.array([ord(c) for c in stories[0] + "\n\n" + stories[1]])
    for stream in (with_eot, without):
        assert decode_chunks(stream, 1, tok) == stories
        assert validation_sentences(stream, 1, tok, 2) == [
            "The little dog ran to the big red barn in the sun.", "A very small bird sang a happy song for all of the kids."]
    with pytest.raises(NCNError, match="n_valid_sentences"):
        validation_sentences(without, 1, tok, 3)


def test_skip_tex_prints_the_means_over_seeds_of_each_variant_and_eps():
    """The skip table in the paper: one row per (variant, eps), the mean over seeds of each column,
    written out by hand here; a rule between variants."""
    import pandas as pd

    from ncn.analysis.skip import skip_tex

    def row(v, seed, eps, loss, dl, dr, frac, wall):
        return {"variant": v, "size": "s", "seed": seed, "eps": eps, "loss": loss, "ppl": math.exp(loss),
                "delta_loss": dl, "delta_random": dr, "skip_frac": frac, "ffn_flops_saved": frac, "wall_ratio": wall}

    df = pd.DataFrame([row("causal", 0, 0.0, 3.0, 0.0, 0.0, 0.0, 1.0), row("causal", 1, 0.0, 3.2, 0.0, 0.0, 0.0, 1.0),
                       row("causal", 0, 0.5, 3.1, 0.1, 0.3, 0.2, 0.9), row("causal", 1, 0.5, 3.3, 0.1, 0.5, 0.3, 0.8),
                       row("asrun", 0, 0.5, 4.0, 0.02, 0.04, 0.5, 0.7)])
    lines = skip_tex(df).splitlines()
    assert lines[0] == r"\begin{tabular}{lrrrrrrr}"
    assert lines[2] == (r"Variant & $\varepsilon$ & Seeds & Loss & $\Delta$loss, gate & $\Delta$loss, random & "
                        r"FFN skipped & Wall time ratio \\")
    body = [line for line in lines[4:] if line.endswith(r"\\")]
    assert body == [r"causal & $0.00$ & 2 & $3.1000$ & $0.0000$ & $0.0000$ & $0.0\%$ & $1.00$ \\",
                    r"causal & $0.50$ & 2 & $3.2000$ & $0.1000$ & $0.4000$ & $25.0\%$ & $0.85$ \\",
                    r"asrun & $0.50$ & 1 & $4.0000$ & $0.0200$ & $0.0400$ & $50.0\%$ & $0.70$ \\"]
    assert lines[lines.index(body[1]) + 1] == r"\midrule"  # between the variants
