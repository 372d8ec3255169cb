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
    twist, controls = claims.lexical_control(ch)
    assert twist == pytest.approx(0.3) and len(controls) == 0


def _claim4_trace(n_controls, twist_jump, seed=0):
    rng = np.random.default_rng(seed)
    rows = _sentence(0, "trace", [1, 1, 1, 1 + twist_jump, 1], probe_pos=3,
                     surprisal=[np.nan, 1, 1, 1 + 10 * twist_jump, 1])
    for k in range(n_controls):
        j = float(rng.uniform(0.01, 0.05))
        rows += _sentence(1 + k, "control", [1, 1, 1, 1 + j, 1], probe_pos=3, surprisal=[np.nan, 1, 1, 1 + 10 * j, 1])
    return pd.DataFrame(rows)


def test_phasic_claim_verdicts():
    res = claims.phasic_claim(_claim4_trace(19, 0.3), 0.95)
    d = res["details"]
    assert d["n_controls"] == 19 and d["rank_p"] == pytest.approx(0.05)
    assert d["twist_change"] == pytest.approx(0.3)
    assert res["value"] == pytest.approx(0.3 - d["control_mean"])
    assert d["spearman_rho"] > 0 and res["verdict"] == "supported"
    # the twist no larger than the controls: not supported
    assert claims.phasic_claim(_claim4_trace(19, 0.02), 0.95)["verdict"] == "not supported"
    # 18 controls cannot reach p ≤ 0.05: inconclusive, whatever the numbers
    res = claims.phasic_claim(_claim4_trace(18, 0.3), 0.95)
    assert res["verdict"] == "inconclusive" and "18 control" in res["details"]["reason"]


def test_gate_and_homeostasis_thresholds(tmp_path):
    cfg = {"analysis": {"gate_eps": [0.05, 0.1, 0.2], "gate_min_fraction": 0.25, "gain_band": [0.99, 1.05],
                        "gain_min_fraction": 0.75, "reg_move_rel": 0.1}}
    trace = pd.DataFrame({"pos": [0, 1, 2, 3, 4], "gamma": [0.0, 0.05, 0.15, 0.5, 0.9],
                          "g": [5.0, 0.99, 1.05, 1.0, 1.06]})
    res = claims.gate_claim(trace, cfg)  # BOS excluded; γ < 0.2 for 2 of 4 (0.05 is not < 0.05)
    assert res["details"]["fraction_below"] == {"0.05": 0.0, "0.1": 0.25, "0.2": 0.5}
    assert res["value"] == 0.5 and res["verdict"] == "supported"
    cfg["analysis"]["gate_min_fraction"] = 0.5000001
    assert claims.gate_claim(trace, cfg)["verdict"] == "not supported"

    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"step": [1, 2, 3], "tokens": [1, 2, 3], "loss": 1.0, "ce": 1.0, "reg": [1.0, 1.05, 1.1000001]}
                 ).to_csv(run / "train_log.csv", index=False)
    runs = pd.DataFrame({"variant": ["causal"], "size": ["s"], "seed": [0], "run_dir": [str(run)]})
    res = claims.homeostasis_claim(trace, runs, "causal", "s", cfg)
    assert res["value"] == 0.75  # band inclusive at both ends: 0.99, 1.05, 1.0 in; 1.06 out
    assert res["details"]["reg_moved"] and res["verdict"] == "supported"
    cfg["analysis"]["reg_move_rel"] = 0.2
    assert claims.homeostasis_claim(trace, runs, "causal", "s", cfg)["verdict"] == "not supported"


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
    from ncn.analysis.rules import claim_variants, trace_seed

    cfg = {"variants": ["none", "asrun", "tonic"], "seeds": [3, 4], "analysis": {"trace_seed": 0, "skip_eps": [0.1],
                                                                               "confidence": 0.95}, "eval": {"b": 1}}
    assert trace_seed(cfg) == 3  # seed 0 not trained: the smallest trained seed
    assert claim_variants(cfg) == ["asrun"]  # no causal: the first NCN variant is asrun itself
    assert claim_variants({**cfg, "variants": ["none", "causal", "asrun"]}) == ["causal", "asrun"]
    assert claim_variants({**cfg, "variants": ["none"]}) == []
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
