"""The A/B's statistics with known answers: Holm's correction, the paired t-test, the minimum
detectable effect, and the A/B table on planted effects (planted -> significant; none -> not;
thin data -> inconclusive); every variant iso-parameter; per-variant seeds; the lr schedules."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ncn.analysis import ab, stats
from ncn.config import load_config, model_config, planned_runs, seeds_of, validate
from ncn.errors import NCNError

VARIANTS = ["none", "asrun", "causal", "tonic", "static"]
SIZE = {"d_model": 32, "n_layer": 2, "n_head": 2, "d_ff": 64, "block_size": 16}


def config(**over) -> dict:
    cfg = {"profile": "p", "variants": VARIANTS, "sizes": ["s", "l"], "seeds": [0, 1, 2],
           "size_defs": {"s": SIZE, "l": {**SIZE, "d_model": 64, "d_ff": 128}}, "train": {"tokens": 100}}
    return validate({**cfg, **over})


# -- Holm, the paired t-test, the MDE ---------------------------------------------------------------
def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04: 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; max(0.06, 1 * 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # monotone, capped at 1; undefined p-values stay nan and do not count in m
    out = stats.holm([0.5, math.nan, 0.001, 0.4])
    assert out[2] == pytest.approx(0.003) and out[3] == pytest.approx(0.8) and out[0] == pytest.approx(0.8)
    assert math.isnan(out[1])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0]) and stats.holm([]) == []


def test_paired_t_p_is_scipys_one_sample_test():
    d = [-0.1, -0.13, -0.08, -0.12]
    assert stats.paired_t_p(d) == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-12)
    assert math.isnan(stats.paired_t_p([-0.1])) and math.isnan(stats.paired_t_p([]))
    assert stats.paired_t_p([0.2, 0.2]) == 0.0 and stats.paired_t_p([0.0, 0.0]) == 1.0


def test_mde_has_the_stated_power_by_simulation():
    """At the MDE, a two-sided paired t-test at 0.05 with 5 pairs rejects in 80% of simulated
    experiments (40,000 of them: ±0.6% at 3 SE); at half the MDE far less often."""
    rng = np.random.default_rng(0)
    sd, n = 0.02, 5
    mde = stats.mde_paired(sd, n, 0.05, 0.8)
    assert mde == pytest.approx(1.68 * sd, rel=0.01)  # G*Power: d_z = 1.68 for n = 5
    crit = sps.t.ppf(0.975, n - 1)

    def rejections(effect):
        d = rng.normal(effect, sd, size=(40_000, n))
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
        return float(np.mean(np.abs(t) > crit))

    assert rejections(mde) == pytest.approx(0.80, abs=0.006)
    assert rejections(mde / 2) < 0.4
    assert stats.mde_paired(sd, 100) == pytest.approx(0.283 * sd, rel=0.01)  # the normal limit: 2.80/√n
    assert math.isnan(stats.mde_paired(sd, 1)) and math.isnan(stats.mde_paired(math.nan, 5))
    assert stats.mde_paired(0.0, 5) == 0.0
    # power is a probability at every effect size, even where scipy's wrong-sign tail is nan (nc 40)
    for effect in (0.0, 1.0, 5.0, 40 / math.sqrt(5), 100.0):
        assert 0.0 <= stats.paired_power(effect, 1.0, 5, 0.05) <= 1.0, effect
    assert stats.paired_power(0.0, 1.0, 5, 0.05) == pytest.approx(0.05)  # no effect: the test's level


def test_holm_verdict():
    assert stats.holm_verdict(-0.05, 0.01, 0.05) == "better"
    assert stats.holm_verdict(0.05, 0.01, 0.05) == "worse"
    assert stats.holm_verdict(-0.05, 0.05, 0.05) == "no significant difference"  # p must be below alpha
    assert stats.holm_verdict(-0.05, math.nan, 0.05) == stats.INCONCLUSIVE


# -- the A/B table on planted effects -----------------------------------------------------------------
def runs_table(cfg, effect: dict, sd: float = 0.002, seed_spread: float = 0.05, prefix: float = 0.03) -> pd.DataFrame:
    """Held-out losses: a per-seed level shared by every variant (the pairing removes it), the
    planted effect of each variant, and noise of SD `sd`."""
    rng = np.random.default_rng(1)
    rows = []
    for v, size, seed in planned_runs(cfg):
        planted = effect.get(v, 0.0)
        planted = planted[seed] if isinstance(planted, list) else planted
        loss = 3.0 + seed_spread * seed + planted + (rng.normal(0, sd) if sd else 0.0)
        rows.append({"variant": v, "size": size, "seed": seed, "n_params": 1000, "n_params_non_embedding": 500,
                     "heldout_loss": loss, "heldout_ppl": math.exp(loss), "heldout_bpb": 0.4 * loss,
                     "heldout_loss_prefix_pool": loss + prefix if v == "asrun" else math.nan,
                     "val_loss": loss + 1.0})
    return pd.DataFrame(rows)


def contrast(table, size, label) -> dict:
    return table[(table["size"] == size) & (table["contrast"] == label)].iloc[0].to_dict()


def test_planted_effect_is_significant_after_holm():
    cfg = config(variant_seeds={"none": [0, 1, 2, 3, 4], "causal": [0, 1, 2, 3, 4]})
    table = ab.ab_table(runs_table(cfg, {"causal": -0.05}), cfg)
    r = contrast(table, "l", "causal - none")
    assert r["n_pairs"] == 5 and r["verdict"] == "better" and r["p_holm"] < 0.05
    assert r["dloss_mean"] == pytest.approx(-0.05, abs=0.004) and r["mde_loss"] < 0.01
    assert r["family_size"] == 2 * 7  # 7 contrasts per size (4 vs baseline, context, order, no future)
    assert contrast(table, "l", "causal - static")["verdict"] == "better"  # context matters (planted)
    assert contrast(table, "l", "causal - tonic")["verdict"] == "better"  # order matters (planted)
    assert contrast(table, "l", "asrun (prefix pool) - none")["verdict"] == "worse"  # +0.03 without the future
    # the prefix-pool row's own metrics: asrun's seeds at this size, read with the prefix pool (loss + 0.03)
    nofut = contrast(table, "l", "asrun (prefix pool) - none")
    runs = runs_table(cfg, {"causal": -0.05})
    own = runs[(runs["variant"] == "asrun") & (runs["size"] == "l")]
    assert nofut["n_seeds"] == len(own) == 3
    assert nofut["loss_mean"] == pytest.approx(own["heldout_loss_prefix_pool"].mean(), rel=1e-12)
    ctx = contrast(table, "l", "causal - static")
    assert ctx["n_seeds"] == 5 and math.isnan(ctx["loss_mean"])  # a contrast of two NCNs: no own metrics
    assert r["dppl_mean"] == pytest.approx(np.mean([math.exp(3 + 0.05 * s - 0.05) - math.exp(3 + 0.05 * s)
                                                    for s in range(5)]), abs=0.1)


def test_no_effect_is_not_significant():
    cfg = config()
    table = ab.ab_table(runs_table(cfg, {}, prefix=0.0), cfg)
    tested = table[table["kind"] != "baseline"]
    assert len(tested) == 2 * 7 and set(tested["verdict"]) == {"no significant difference"}
    assert (tested["p_holm"] >= tested["p"]).all()  # Holm never lowers a p-value


def test_effect_the_uncorrected_test_finds_but_holm_does_not():
    """tonic − none = -0.004, -0.005, -0.003 at both sizes (so causal − tonic the opposite), every
    other contrast exactly 0: t = -6.93 on 2 df, p = 0.0202 alone; Holm over the 14 tests gives
    the first of these four tied p-values 14 p = 0.283 > 0.05. The uncorrected CI excludes 0;
    the verdict does not."""
    cfg = config()
    table = ab.ab_table(runs_table(cfg, {"tonic": [-0.004, -0.005, -0.003]}, sd=0.0, prefix=0.0), cfg)
    r = contrast(table, "s", "tonic - none")
    assert r["p"] == pytest.approx(0.0202, abs=1e-4) and r["dloss_ci_high"] < 0
    assert r["p_holm"] == pytest.approx(14 * r["p"], rel=1e-6)
    assert r["verdict"] == "no significant difference"
    assert contrast(table, "s", "causal - tonic")["dloss_mean"] == pytest.approx(0.004, abs=1e-9)


def test_thin_data_is_inconclusive():
    cfg = config(seeds=[0])
    table = ab.ab_table(runs_table(cfg, {"causal": -0.5}), cfg)
    tested = table[table["kind"] != "baseline"]
    assert set(tested["verdict"]) == {stats.INCONCLUSIVE} and tested["mde_loss"].isna().all()
    assert tested["dloss_half"].isna().all() and (tested["n_pairs"] == 1).all()
    missing = ab.ab_table(runs_table(cfg, {})[lambda d: d["variant"] != "static"], cfg)
    assert contrast(missing, "s", "causal - static")["verdict"] == "no pairs"


def test_the_a_b_reads_the_held_out_set():
    cfg = config()
    runs = runs_table(cfg, {"causal": -0.05})
    runs.loc[runs["variant"] == "causal", "val_loss"] += 1.0  # the official set says causal is far worse
    r = contrast(ab.ab_table(runs, cfg), "l", "causal - none")
    assert r["verdict"] == "better" and r["loss_mean"] < 3.2


def test_contrasts_follow_the_flags():
    labels = [c.label for c in ab.contrasts(VARIANTS)]
    assert labels == ["asrun - none", "causal - none", "tonic - none", "static - none", "causal - tonic",
                      "causal - static", "asrun (prefix pool) - none"]
    assert [c.label for c in ab.contrasts(["none", "causal"])] == ["causal - none"]
    assert [c.label for c in ab.contrasts(["causal", "static"])] == ["causal - static"]


def test_tex_has_the_half_width_mde_and_holm_columns():
    cfg = config(variant_seeds={"none": [0, 1, 2, 3, 4], "causal": [0, 1, 2, 3, 4]})
    table = ab.ab_table(runs_table(cfg, {"causal": -0.05}), cfg)
    tex = ab.ab_tex(table, 0.95)
    assert r"$\Delta$loss $\pm$ 95\% CI" in tex and "MDE" in tex and r"$p_\mathrm{Holm}$" in tex
    r = contrast(table, "l", "causal - none")
    assert f"${r['dloss_mean']:.4f} \\pm {r['dloss_half']:.4f}$" in tex
    m = ab.numbers(table, cfg)
    power = m["power per size: the primary NCN - baseline's CI half-width and MDE (80% power)"]
    assert power["MDELossBySize"].startswith(r"\texttt{s} ") and "(5 pairs)" in power["DeltaLossHalfWidthBySize"]


# -- every variant iso-parameter ---------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["smoke", "default", "cpu-trunk", "paper"])
def test_every_variant_matches_the_reference_count(profile):
    from ncn.model import count_params

    cfg = load_config(f"config/{profile}.yaml")
    vocab = 50257 if cfg["tokenizer"]["kind"] == "gpt2" else cfg["tokenizer"]["vocab_size"]
    for size in cfg["sizes"]:
        ref = model_config(cfg, cfg["ncn_reference"], size, vocab)
        assert ref.d_ff == cfg["size_defs"][size]["d_ff"]  # the reference keeps its width
        target = count_params(ref)
        for v in VARIANTS:
            mc = model_config(cfg, v, size, vocab)
            assert abs(count_params(mc) - target) <= 0.005 * target, (size, v)
            assert dataclasses.replace(mc, d_ff=ref.d_ff, ncn=ref.ncn) == ref  # only d_ff (and the name) differ
        assert model_config(cfg, "static", size, vocab).d_ff > ref.d_ff  # static pays for its missing controller


def test_match_params_to_a_target():
    from ncn.model import ModelConfig, count_params, match_params

    causal = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64, ncn="causal")
    target = count_params(causal)
    static = match_params(dataclasses.replace(causal, ncn="static"), ncn="static", target=target)
    assert static.ncn == "static" and static.d_ff > 64 and abs(count_params(static) - target) <= 0.005 * target
    assert match_params(causal, ncn="causal", target=target) == causal  # the reference is a fixed point
    assert count_params(static) == target  # here exactly: causal's controller minus static's 6 = 44 d_ff steps
    none = match_params(causal, target=target)  # the baseline misses by 6
    assert none.ncn == "none" and count_params(none) == target - 6
    with pytest.raises(NCNError, match="variant 'none'"):
        match_params(causal, target=target, tol=5 / target)


# -- per-variant seeds ---------------------------------------------------------------------------------
def test_variant_seeds():
    cfg = config(variant_seeds={"none": [0, 1, 2, 3, 4], "causal": [0, 1, 2, 3, 4]})
    assert seeds_of(cfg, "none") == [0, 1, 2, 3, 4] and seeds_of(cfg, "tonic") == [0, 1, 2]
    assert len(planned_runs(cfg)) == 2 * (2 * 5 + 3 * 3)
    assert ("causal", "l", 4) in planned_runs(cfg) and ("static", "l", 4) not in planned_runs(cfg)
    with pytest.raises(NCNError, match="casual"):
        config(variant_seeds={"casual": [0]})
    default = load_config("config/default.yaml")
    assert len(planned_runs(default)) == 57 and default["train"]["tokens"] is None
    assert default["train"]["epochs"] >= 1.0
    assert all(len(seeds_of(default, v)) >= (5 if v in ("none", "causal") else 3) for v in default["variants"])




def test_tex_rows_by_hand():
    """Every cell of the A/B table for a hand-made table: the baseline row (its own metrics, no
    test), a "vs baseline" row (its metrics and parameters, and the test), a "without the future"
    row (its metrics, no parameters) and a contrast between NCNs (only the test); the header."""
    nan = math.nan

    def row(kind, variant, contrast, **kw):
        base = dict(size="l", variant=variant, contrast=contrast, kind=kind, n_params=1386700.0, loss_mean=4.1,
                    loss_ci_low=4.0, loss_ci_high=4.2, ppl_mean=60.34, ppl_ci_low=54.6, ppl_ci_high=66.7,
                    dloss_mean=-0.0123, dloss_ci_low=-0.0223, dloss_ci_high=-0.0023, dppl_mean=-0.74,
                    mde_loss=0.01394, p_holm=0.0312, n_pairs=5, n_seeds=5, verdict="NCN better")
        return {**base, **kw}

    table = pd.DataFrame([row("baseline", "none", "none", dloss_mean=nan, verdict="reference"),
                          row("vs baseline", "causal", "causal - none"),
                          row("without the future", "asrun", "asrun (prefix pool) - none", n_pairs=3),
                          row("context", "causal", "causal - static", n_pairs=3, verdict="no significant difference")])
    lines = ab.ab_tex(table, 0.9).splitlines()
    assert lines[0] == r"\begin{tabular}{llrrrrrrrrl}"
    assert lines[2] == (r"Size & Variant / contrast & Params & Loss & PPL & $\Delta$loss $\pm$ 90\% CI & "
                        r"$\Delta$PPL & MDE & $p_\mathrm{Holm}$ & $n$ & Verdict \\")
    params, metrics = r"$1.39 \times 10^{6}$", r"$4.100 \pm 0.100$ & $60.34 \pm 6.05$"
    test = r"$-0.0123 \pm 0.0100$ & $-0.74$ & $0.0139$ & $0.031$"
    assert lines[4:8] == [
        rf"l & none (baseline) & {params} & {metrics} & -- & -- & -- & -- & 5 & reference \\",
        rf"l & causal - none & {params} & {metrics} & {test} & 5 & NCN better \\",
        rf"l & asrun (prefix pool) - none &  & {metrics} & {test} & 3 & NCN better \\",
        rf"l & causal - static &  &  &  & {test} & 3 & no significant difference \\"]
