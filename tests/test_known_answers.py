"""Known answers, computed by hand or independently of the code under test, for the numbers the
claims and the paper rest on: every claim function both ways (planted effect -> "supported",
none -> not "supported") and on thin data ("inconclusive"); the iso-parameter match refusing an
impossible tolerance; the block-skipping loss change at a positive eps.

Constants used below: t_{0.975, 2} = 4.302653 (two-sided 95% t with 2 degrees of freedom),
log2(5.5) = 2.4594316, ln(5.5) = 1.7047481.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
import torch

from ncn.analysis import claims
from ncn.errors import NCNError

torch.set_num_threads(1)

T975_2 = 4.302653  # t_{0.975, 2}
LOG2_55 = 2.4594316
LN_55 = 1.7047481


# -- claim results: a dict today, maybe an object after the claims rework --------------------------
def verdict(res) -> str:
    return res["verdict"] if isinstance(res, dict) else res.verdict


def value(res) -> float:
    return res["value"] if isinstance(res, dict) else res.value


def ci(res) -> tuple[float, float]:
    return (res["ci_low"], res["ci_high"]) if isinstance(res, dict) else (res.ci_low, res.ci_high)


def details(res) -> dict:
    return res["details"] if isinstance(res, dict) else res.details


def runs_table(rows) -> pd.DataFrame:
    """runs.csv rows: (variant, size, seed, {column: value})."""
    return pd.DataFrame([{"variant": v, "size": s, "seed": seed, **cols} for v, s, seed, cols in rows])


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
    d = details(res)
    assert d["n_pairs"] == 3 and d["dppl_per_seed"] == pytest.approx([-1.0, -1.1, -1.1])
    dl = [math.log(a) - math.log(b) for a, b in zip([10.0, 10.5, 9.8], [11.0, 11.6, 10.9])]
    assert d["dloss_mean"] == pytest.approx(np.mean(dl))


def test_ab_claim_no_improvement_is_not_supported():
    # the NCN worse on every seed: the CI lies above 0
    assert verdict(claims.ab_claim(_ab_runs([11.0, 11.6, 10.9], [10.0, 10.5, 9.8]), "causal", "s", 0.95)) == \
        "not supported"
    # equal on average, noisy: the CI straddles 0
    assert verdict(claims.ab_claim(_ab_runs([10.0, 11.0, 10.5], [10.5, 10.5, 10.5]), "causal", "s", 0.95)) == \
        "inconclusive"


def test_ab_claim_thin_data_is_inconclusive():
    assert verdict(claims.ab_claim(_ab_runs([10.0], [11.0]), "causal", "s", 0.95)) == "inconclusive"
    runs = runs_table([("causal", "s", 0, {"val_ppl": 10.0, "val_loss": 2.3}),
                       ("none", "s", 1, {"val_ppl": 11.0, "val_loss": 2.4})])  # no common seed
    assert verdict(claims.ab_claim(runs, "causal", "s", 0.95)) == "inconclusive"


# -- claim 2: the baseline's PPL vs 5.5, in bits per byte unless the tokenizer is GPT-2's ----------
CFG2 = {"analysis": {"confidence": 0.95, "ppl_threshold": 5.5}}


def _baseline_runs(ppl, bpb):
    return runs_table([("none", "s", seed, {"val_ppl": p, "val_bpb": b}) for seed, (p, b) in enumerate(zip(ppl, bpb))])


def test_baseline_ppl_claim_gpt2_tokenizer_compares_ppl():
    gpt2 = {"tokenizer_kind": "gpt2"}
    above = _baseline_runs([6.0, 6.2, 6.1], [9.0, 9.0, 9.0])  # CI 6.1 ± 0.248: above 5.5
    res = claims.baseline_ppl_claim(above, "s", CFG2, gpt2, 0.3, "test")
    assert verdict(res) == "supported" and value(res) == pytest.approx(6.1)
    assert ci(res) == pytest.approx((6.1 - T975_2 * 0.1 / math.sqrt(3), 6.1 + T975_2 * 0.1 / math.sqrt(3)), abs=1e-5)
    below = _baseline_runs([5.0, 5.1, 5.2], [9.0, 9.0, 9.0])  # CI 5.1 ± 0.248: below 5.5
    assert verdict(claims.baseline_ppl_claim(below, "s", CFG2, gpt2, 0.3, "test")) == "not supported"
    one = _baseline_runs([6.0], [9.0])
    assert verdict(claims.baseline_ppl_claim(one, "s", CFG2, gpt2, 0.3, "test")) == "inconclusive"


def test_baseline_ppl_claim_bpb_threshold_is_log2_of_the_ppl_times_tokens_per_byte():
    bpe = {"tokenizer_kind": "bpe"}
    tpb = 0.25
    # 5.5 GPT-2 PPL = log2(5.5) bits per GPT-2 token = log2(5.5) * 0.25 bits per byte = 0.614858
    thr = LOG2_55 * tpb
    assert LN_55 * tpb == pytest.approx(0.426187, abs=1e-6)  # what the natural log would give
    # bpb CI 0.51 ± 0.025 lies between ln- and log2-thresholds: below the true one. The PPL
    # column (above 5.5) must not be what is compared under our own tokenizer.
    mid = _baseline_runs([6.0, 6.2, 6.1], [0.50, 0.51, 0.52])
    res = claims.baseline_ppl_claim(mid, "s", CFG2, bpe, tpb, "test")
    assert details(res)["bpb_threshold"] == pytest.approx(thr, abs=1e-6)
    assert value(res) == pytest.approx(0.51)
    assert verdict(res) == "not supported"
    high = _baseline_runs([5.0, 5.1, 5.2], [0.70, 0.71, 0.72])  # CI 0.71 ± 0.025: above 0.6149
    assert verdict(claims.baseline_ppl_claim(high, "s", CFG2, bpe, tpb, "test")) == "supported"
    straddle = _baseline_runs([5.0, 5.1, 5.2], [0.60, 0.615, 0.63])
    assert verdict(claims.baseline_ppl_claim(straddle, "s", CFG2, bpe, tpb, "test")) == "inconclusive"


def test_baseline_ppl_claim_thin_or_unknown_conversion_is_inconclusive():
    bpe = {"tokenizer_kind": "bpe"}
    high = _baseline_runs([5.0, 5.1, 5.2], [0.70, 0.71, 0.72])
    res = claims.baseline_ppl_claim(high, "s", CFG2, bpe, math.nan, "GPT-2 vocab not found")
    assert verdict(res) == "inconclusive" and "GPT-2 vocab not found" in details(res)["reason"]
    assert verdict(claims.baseline_ppl_claim(_baseline_runs([5.0], [0.7]), "s", CFG2, bpe, 0.25, "t")) == \
        "inconclusive"
    assert verdict(claims.baseline_ppl_claim(high, "m", CFG2, bpe, 0.25, "t")) == "inconclusive"  # no runs at m


# -- claim 3: layer specialisation (one-way ANOVA of the final per-layer mean beta) -----------------
def _write_log(run_dir, final_betas, extra_rows=()):
    """train_log.csv: an early signal row, the final signal row, then a row without signals."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n = len(final_betas)
    rows = [{"step": 1, "tokens": 10, "loss": 3.0, "ce": 3.0, "reg": 1.0, **{f"beta_mean_l{i}": 7.0 for i in range(n)}},
            {"step": 2, "tokens": 20, "loss": 2.9, "ce": 2.9, "reg": 0.9,
             **{f"beta_mean_l{i}": b for i, b in enumerate(final_betas)}},
            {"step": 3, "tokens": 30, "loss": 2.8, "ce": 2.8, "reg": 0.8, **{f"beta_mean_l{i}": math.nan for i in range(n)}},
            *extra_rows]
    pd.DataFrame(rows).to_csv(run_dir / "train_log.csv", index=False)


def _layer_runs(tmp_path, table):
    """table[seed][layer] = the final per-layer mean beta of that seed."""
    rows = []
    for seed, betas in enumerate(table):
        d = tmp_path / f"seed{seed}"
        _write_log(d, betas)
        rows.append(("causal", "s", seed, {"run_dir": str(d)}))
    return runs_table(rows)


def test_layer_claim_planted_layer_effect_is_supported(tmp_path):
    # layer l of seed s: (l + 1) + [0, 0.1, -0.1][s]. Groups (layers) [1, 1.1, .9], [2, 2.1, 1.9],
    # [3, 3.1, 2.9]: SS_between = 3 * (1 + 0 + 1) = 6 on 2 df, SS_within = 3 * 0.02 = 0.06 on 6 df,
    # F = (6 / 2) / (0.06 / 6) = 300.
    off = [0.0, 0.1, -0.1]
    res = claims.layer_claim(_layer_runs(tmp_path, [[l + 1 + o for l in range(3)] for o in off]), "causal", "s", 0.95)
    assert value(res) == pytest.approx(300.0)
    d = details(res)
    assert d["p_value"] < 1e-5 and d["alpha"] == pytest.approx(0.05)
    assert d["layer_means"] == pytest.approx([1.0, 2.0, 3.0])  # the final signal row, not the first
    assert d["pooled_seed_sd"] == pytest.approx(0.1) and d["range_over_seed_sd"] == pytest.approx(20.0)
    assert (d["n_seeds"], d["n_layers"]) == (3, 3)
    assert verdict(res) == "supported"


def test_layer_claim_no_layer_effect_is_not_supported(tmp_path):
    # Every layer holds the values {0.9, 1.0, 1.1} across seeds: equal layer means, F = 0, p = 1.
    table = [[1.0 + 0.1 * ((l + s) % 3 - 1) for l in range(3)] for s in range(3)]
    res = claims.layer_claim(_layer_runs(tmp_path, table), "causal", "s", 0.95)
    assert value(res) == pytest.approx(0.0, abs=1e-9) and details(res)["p_value"] == pytest.approx(1.0)
    assert verdict(res) == "not supported"


def test_layer_claim_thin_data_is_inconclusive(tmp_path):
    one_seed = claims.layer_claim(_layer_runs(tmp_path / "a", [[1.0, 2.0, 3.0]]), "causal", "s", 0.95)
    assert verdict(one_seed) == "inconclusive"  # no seed-to-seed variation to compare with
    d = tmp_path / "b"
    d.mkdir()
    pd.DataFrame({"step": [1], "tokens": [1], "loss": [1.0], "ce": [1.0], "reg": [0.1]}).to_csv(
        d / "train_log.csv", index=False)  # no per-layer signal columns at all
    runs = runs_table([("causal", "s", 0, {"run_dir": str(d)})])
    assert verdict(claims.layer_claim(runs, "causal", "s", 0.95)) == "inconclusive"


# -- claim 4: phasic response at the probe word --------------------------------------------------------
def test_phasic_claim_negative_surprisal_correlation_is_not_supported():
    """The twist stands out from every control (rank p = 1/20) but the signal change falls as
    surprisal rises: rho < 0, so the claim (both conditions) is not supported."""
    from test_analysis_stats import _sentence

    rng = np.random.default_rng(3)
    rows = _sentence(0, "trace", [1, 1, 1, 1.3, 1], 3, surprisal=[np.nan, 9, 9, 9 - 10 * 0.3, 9 - 10 * 0.3])
    for k in range(19):
        j = float(rng.uniform(0.01, 0.05))
        rows += _sentence(1 + k, "control", [1, 1, 1, 1 + j, 1], 3, surprisal=[np.nan, 9, 9, 9 - 10 * j, 9 - 10 * j])
    res = claims.phasic_claim(pd.DataFrame(rows), 0.95)
    d = details(res)
    assert d["rank_p"] == pytest.approx(0.05) and d["spearman_rho"] < 0
    assert verdict(res) == "not supported"
    assert verdict(claims.phasic_claim(None, 0.95)) == "inconclusive"


# -- claim 5: homeostasis, with several seeds -----------------------------------------------------------
CFG5 = {"analysis": {"gain_band": [0.9, 1.1], "gain_min_fraction": 0.75, "reg_move_rel": 0.1}}


def _reg_runs(tmp_path, regs):
    """regs[seed] = (first, last) value of the train_log `reg` column."""
    rows = []
    for seed, (first, last) in enumerate(regs):
        d = tmp_path / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": [1, 2, 3], "tokens": [1, 2, 3], "loss": 1.0, "ce": 1.0,
                      "reg": [first, (first + last) / 2, last]}).to_csv(d / "train_log.csv", index=False)
        rows.append(("causal", "s", seed, {"run_dir": str(d)}))
    return runs_table(rows)


def _gain_trace(g):
    """A trace whose BOS (pos 0) gain is far out of the band: it must not count."""
    return pd.DataFrame({"pos": [0] + list(range(1, len(g) + 1)), "g": [50.0] + list(g)})


def test_homeostasis_all_seeds_moved_and_gains_in_band_is_supported(tmp_path):
    runs = _reg_runs(tmp_path, [(1.0, 0.5), (1.0, 0.8), (2.0, 2.5)])  # moved by 50%, 20%, 25%
    res = claims.homeostasis_claim(_gain_trace([1.0, 0.95, 1.05, 1.2]), runs, "causal", "s", CFG5)
    assert value(res) == pytest.approx(0.75)  # 3 of the 4 non-BOS gains in [0.9, 1.1]
    per = details(res)["reg_per_seed"]
    assert {int(k): v["rel_change"] for k, v in per.items()} == pytest.approx({0: 0.5, 1: 0.2, 2: 0.25})
    assert details(res)["reg_moved"] is True and verdict(res) == "supported"


def test_homeostasis_one_seed_not_moving_is_not_supported(tmp_path):
    """"The regulariser is active" must hold in EVERY seed: one still seed refutes it."""
    runs = _reg_runs(tmp_path, [(1.0, 0.5), (1.0, 0.8), (1.0, 0.99)])  # the third moved only 1% < 10%
    res = claims.homeostasis_claim(_gain_trace([1.0, 1.0, 1.0, 1.0]), runs, "causal", "s", CFG5)
    assert value(res) == pytest.approx(1.0)
    assert details(res)["reg_moved"] is False and verdict(res) == "not supported"
    # and the gains out of the band refute it with every seed moving
    moving = _reg_runs(tmp_path / "b", [(1.0, 0.5), (1.0, 0.8), (1.0, 1.5)])
    res = claims.homeostasis_claim(_gain_trace([1.0, 1.5, 1.5, 0.5]), moving, "causal", "s", CFG5)
    assert value(res) == pytest.approx(0.25) and verdict(res) == "not supported"


def test_homeostasis_thin_data_is_inconclusive(tmp_path):
    runs = _reg_runs(tmp_path, [(1.0, 0.5)])
    assert verdict(claims.homeostasis_claim(None, runs, "causal", "s", CFG5)) == "inconclusive"
    d = tmp_path / "short"
    d.mkdir()
    pd.DataFrame({"step": [1], "tokens": [1], "loss": 1.0, "ce": 1.0, "reg": [1.0]}).to_csv(
        d / "train_log.csv", index=False)  # one reg value: nothing to compare
    short = runs_table([("causal", "s", 0, {"run_dir": str(d)})])
    assert verdict(claims.homeostasis_claim(_gain_trace([1.0]), short, "causal", "s", CFG5)) == "inconclusive"


# -- claim 6: the gate ----------------------------------------------------------------------------------
def test_gate_claim_without_trace_is_inconclusive():
    cfg = {"analysis": {"gate_eps": [0.1], "gate_min_fraction": 0.1}}
    assert verdict(claims.gate_claim(None, cfg)) == "inconclusive"
    trace = pd.DataFrame({"pos": [0, 1, 2, 3, 4], "gamma": [0.0, 0.5, 0.6, 0.7, 0.01]})  # BOS's 0.0 excluded
    res = claims.gate_claim(trace, cfg)
    assert value(res) == pytest.approx(0.25) and verdict(res) == "supported"
    cfg["analysis"]["gate_min_fraction"] = 0.3
    assert verdict(claims.gate_claim(trace, cfg)) == "not supported"


# -- claim 7: the asrun leak ------------------------------------------------------------------------------
def _leak_runs(full, prefix):
    return runs_table([("asrun", "s", seed, {"val_loss": f, "val_loss_prefix_pool": p})
                       for seed, (f, p) in enumerate(zip(full, prefix))])


def test_leak_claim_both_ways_and_thin():
    # leak = full - prefix = [-0.2, -0.22, -0.19]: mean -0.203333, sd 0.015275, half 0.037946
    res = claims.leak_claim(_leak_runs([3.0, 3.1, 3.05], [3.2, 3.32, 3.24]), "s", 0.95)
    assert value(res) == pytest.approx(-0.203333, abs=1e-6)
    assert ci(res) == pytest.approx((-0.203333 - 0.037946, -0.203333 + 0.037946), abs=1e-5)
    assert verdict(res) == "supported"
    assert verdict(claims.leak_claim(_leak_runs([3.2, 3.32, 3.24], [3.0, 3.1, 3.05]), "s", 0.95)) == "not supported"
    assert verdict(claims.leak_claim(_leak_runs([3.0], [3.2]), "s", 0.95)) == "inconclusive"
    no_prefix = runs_table([("asrun", "s", 0, {"val_loss": 3.0})])
    assert verdict(claims.leak_claim(no_prefix, "s", 0.95)) == "inconclusive"


# -- match_params: the tolerance is a promise ------------------------------------------------------------
TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64)


def test_param_count_by_hand():
    from ncn.model import ModelConfig, count_params

    # embeddings 50*32 + 16*32 = 2112; per layer: 2 RMSNorm weights (64) + qkv 3*32*32 + proj 32*32
    # (4096) + FFN 2*32*64 (4096) = 8256, two layers 16512; final norm 32; the head is tied.
    assert count_params(ModelConfig(**TINY)) == 2112 + 16512 + 32 == 18656
    assert count_params(ModelConfig(**TINY, ncn="static")) == 18656 + 2 * 3  # one (g, beta, gamma) per layer


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
    cfg = {"analysis": {"skip_eps": [0.5, 0.95], "skip_max_tokens": None, "skip_random_draws": 2},
           "eval": {"batch_size": 4}}
    df = skip_table(run, cfg, data).set_index("eps")
    assert list(df.index) == [0.0, 0.5, 0.95]
    assert df.loc[0.0, "delta_loss"] == 0.0 and df.loc[0.0, "skip_frac"] == 0.0
    assert df.loc[0.0, "loss"] == pytest.approx(dense, rel=1e-5)
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
