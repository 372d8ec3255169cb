"""The value of every ± and interval macro that `ncn paper numbers` writes, computed here
independently (t quantile from scipy, means and differences by hand) from a fake results tree
whose largest size has chosen per-seed values.

With two seeds the 95% t-interval of values a, b is (a + b)/2 ± t_{0.975, 1} · |a − b| / 2,
t_{0.975, 1} = 12.706205: the ± macro is that half-width, not the full width of the interval."""

from __future__ import annotations

import json
import math

import pytest

from ncn import paper
from test_paper import macro_values, make_fake_results, run_numbers

T975_1 = 12.706205
# Largest size "s", seeds 0 and 1: validation loss per variant (a fresh set, not the tree's).
LOSS = {"none": (2.90, 2.94), "asrun": (2.70, 2.79), "causal": (2.80, 2.81), "tonic": (2.85, 2.95),
        "static": (2.88, 2.93)}
PREFIX = (2.95, 3.00)  # asrun's val_loss_prefix_pool
BPB_PER_NAT = 0.436
NAMES = {"none": "None", "asrun": "Asrun", "causal": "Causal", "tonic": "Tonic", "static": "Static"}


def metric(variant: str, short: str) -> tuple[float, float]:
    a, b = LOSS[variant]
    return {"loss": (a, b), "ppl": (math.exp(a), math.exp(b)), "bpb": (a * BPB_PER_NAT, b * BPB_PER_NAT)}[short]


def mean_half(pair) -> tuple[float, float]:
    a, b = pair
    return (a + b) / 2, T975_1 * abs(a - b) / 2


@pytest.fixture(scope="module")
def macros(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_macros")

    def edit(ev):
        """The A/B reads the held-out set (heldout_*); the official set (val_*) gets other values,
        so a macro computed from the wrong set fails. The leak audit reads val_*."""
        if ev["size"] == "s" and ev["seed"] in (0, 1):
            loss = LOSS[ev["variant"]][ev["seed"]]
            ev.update(heldout_loss=loss, heldout_ppl=math.exp(loss), heldout_bpb=loss * BPB_PER_NAT,
                      val_loss=loss + 0.5, val_ppl=math.exp(loss + 0.5), val_bpb=(loss + 0.5) * BPB_PER_NAT,
                      val_loss_prefix_pool=PREFIX[ev["seed"]] + 0.5 if ev["variant"] == "asrun" else None,
                      heldout_loss_prefix_pool=PREFIX[ev["seed"]] if ev["variant"] == "asrun" else None)
        return ev

    make_fake_results(root, edit_eval=edit)
    return macro_values(run_numbers(root))


def test_pm_is_the_half_width_by_hand(macros):
    # none: mean 2.92, half 12.706205 * 0.04 / 2 = 0.254124 (the full width would print 0.508)
    assert macros["ValLossNoneLargest"] == "2.920" and macros["ValLossNoneLargestPM"] == "0.254"
    # asrun: mean 2.745, half 12.706205 * 0.09 / 2 = 0.571779
    assert macros["ValLossAsrunLargest"] == "2.745" and macros["ValLossAsrunLargestPM"] == "0.572"


@pytest.mark.parametrize("variant", list(LOSS))
@pytest.mark.parametrize("short,stem,dec", [("loss", "ValLoss", 3), ("ppl", "ValPPL", 2), ("bpb", "ValBPB", 3)])
def test_every_pm_macro(macros, variant, short, stem, dec):
    mean, half = mean_half(metric(variant, short))
    name = f"{stem}{NAMES[variant]}Largest"
    assert macros[name] == paper.fmt_fixed(mean, dec)
    assert macros[name + "PM"] == paper.fmt_fixed(half, dec)
    assert macros[name + "PM"] != paper.fmt_fixed(2 * half, dec)  # the values tell half from full width


@pytest.mark.parametrize("variant", [v for v in LOSS if v != "none"])
@pytest.mark.parametrize("short,stem,dec", [("ppl", "DeltaPPL", 2), ("loss", "DeltaLoss", 3), ("bpb", "DeltaBPB", 3)])
def test_every_paired_difference_interval(macros, variant, short, stem, dec):
    (va, vb), (ba, bb) = metric(variant, short), metric("none", short)
    mean, half = mean_half((va - ba, vb - bb))
    name = f"{stem}{NAMES[variant]}Largest"
    assert macros[name] == paper.fmt_fixed(mean, dec)
    assert macros[name + "CILow"] == paper.fmt_fixed(mean - half, dec)
    assert macros[name + "CIHigh"] == paper.fmt_fixed(mean + half, dec)
    assert macros[name + "N"] == "2"


def test_causal_delta_ppl_interval_by_hand(macros):
    # d = exp(2.80) - exp(2.90), exp(2.81) - exp(2.94) = -1.729499, -2.305928:
    # mean -2.017713, half 12.706205 * 0.576429 / 2 = 3.662116 -> [-5.68, 1.64]
    assert macros["DeltaPPLCausalLargest"] == "$-$2.02"
    assert (macros["DeltaPPLCausalLargestCILow"], macros["DeltaPPLCausalLargestCIHigh"]) == ("$-$5.68", "1.64")


def test_leak_interval(macros):
    # leak = full - prefix = 2.70 - 2.95, 2.79 - 3.00 = -0.25, -0.21: mean -0.23, half 0.254124
    assert macros["LeakGap"] == "$-$0.230"
    assert (macros["LeakGapCILow"], macros["LeakGapCIHigh"]) == ("$-$0.484", "0.024")
    assert macros["LeakLossFull"] == "2.745" and macros["LeakLossPrefix"] == "2.975"  # held-out (the leak table reads heldout_*)


def test_claim_interval_macros(macros):
    """tests/test_paper.py's fake claims: claim 1 [-0.5, -0.1], claims 4, 7 [-0.5, 0.25], claims
    2 (not applicable), 3, 5, 6 without an interval."""
    words = ("One", "Two", "Three", "Four", "Five", "Six", "Seven")
    for i, w in enumerate(words, start=1):
        low, high = macros[f"Claim{w}CILow"], macros[f"Claim{w}CIHigh"]
        if i in (2, 3, 5, 6):
            assert (low, high, macros[f"Claim{w}CI"]) == ("n/a", "n/a", "no interval")
            continue
        assert low == "$-$0.500" and high == ("$-$0.100" if i == 1 else "0.250")
        assert macros[f"Claim{w}CI"] == rf"\ConfidencePct{{}} interval [{low}, {high}]"


def test_delta_loss_half_width_p_and_mde_by_hand(macros):
    """causal − none in held-out loss: -0.10, -0.13: mean -0.115, SD 0.021213, half-width
    12.706205 · 0.021213 / √2 = 0.190596; t = -7.667 on 1 df, p = 0.0826. The MDE is the effect a
    two-sided t-test at 0.05 finds with 80% power: checked against scipy's noncentral t here."""
    from scipy import stats as sps

    d = [2.80 - 2.90, 2.81 - 2.94]
    sd = abs(d[0] - d[1]) / math.sqrt(2)
    assert macros["DeltaLossCausalLargest"] == "$-$0.115"
    assert macros["DeltaLossCausalLargestPM"] == paper.fmt_fixed(T975_1 * sd / math.sqrt(2), 3) == "0.191"
    mde = float(macros["DeltaLossCausalLargestMDE"])
    crit = sps.t.ppf(0.975, 1)

    def power(effect):
        return sps.nct.sf(crit, 1, effect / (sd / math.sqrt(2)))

    assert power(mde * 0.99) < 0.8 < power(mde * 1.01)
    assert macros["VerdictCausalLargest"] in ("no significant difference", "better")
    assert float(macros["DeltaLossCausalLargestPHolm"]) >= 0.0826 - 5e-4  # Holm never lowers a p


def test_the_further_contrasts(macros):
    """causal − static, causal − tonic and asrun with its prefix pool − none, from heldout_*."""
    pairs = {"CausalVsStatic": ("causal", "static"), "CausalVsTonic": ("causal", "tonic")}
    for key, (a, b) in pairs.items():
        mean, half = mean_half((LOSS[a][0] - LOSS[b][0], LOSS[a][1] - LOSS[b][1]))
        assert macros[f"DeltaLoss{key}Largest"] == paper.fmt_fixed(mean, 3)
        assert macros[f"DeltaLoss{key}LargestCILow"] == paper.fmt_fixed(mean - half, 3)
        assert macros[f"DeltaLoss{key}LargestN"] == "2"
    mean, _ = mean_half((PREFIX[0] - LOSS["none"][0], PREFIX[1] - LOSS["none"][1]))  # 0.055
    assert macros["DeltaLossAsrunPrefixVsNoneLargest"] == paper.fmt_fixed(mean, 3) == "0.055"
    ppl = [math.exp(p) - math.exp(n) for p, n in zip(PREFIX, LOSS["none"])]
    assert macros["DeltaPPLAsrunPrefixVsNoneLargest"] == paper.fmt_fixed(sum(ppl) / 2, 2)


def test_optimiser_macros_read_the_largest_sizes_overrides():
    """LearningRate and TokensPerStep are the largest size's (paper.yaml: paper350m overrides lr,
    micro_batch and grad_accum), not the `train` section's; the schedule is named in words."""
    from pathlib import Path

    import pandas as pd

    from ncn.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "paper.yaml")
    s = paper.Sources(cfg, Path("."), {}, pd.DataFrame(columns=["size", "tokens", "epochs", "steps"]))
    m = paper._design_budget(s)
    assert cfg["train"]["lr"] == 6e-4 and m["LearningRate"] == "0.0003"  # paper350m's lr
    assert m["TokensPerStep"] == "32,768" and m["MicroBatch"] == "16" and m["GradAccum"] == "4"
    assert m["LrScheduleText"] == paper.LR_SCHEDULE_WORDS["original"] and m["DecayScope"] == "every parameter"
    seeds = paper._seed_macros({**cfg, "variant_seeds": {"none": [0, 1, 2, 3, 4], "causal": [0, 1, 2, 3, 4]}})
    assert seeds["NumSeeds"] == "3--5" and seeds["SeedList"] == "0--2"
    assert seeds["SeedsByVariant"] == (r"\texttt{none}, \texttt{causal}: seeds 0--4; "
                                       r"\texttt{asrun}, \texttt{tonic}, \texttt{static}: seeds 0--2")


def _smoke_sources(tmp_path, edit):
    """paper.Sources over the smoke profile with `edit(raw yaml dict)` applied, and no runs."""
    from pathlib import Path

    import pandas as pd
    import yaml

    from ncn.config import load_config

    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "config" / "smoke.yaml").read_text())
    edit(raw)
    path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    return cfg, paper.Sources(cfg, Path("."), {}, pd.DataFrame(columns=["size", "tokens", "epochs", "steps"]))


def test_optimiser_macros_follow_an_override_of_the_largest_size_only(tmp_path):
    """A config whose largest size ("s") overrides lr, micro_batch and grad_accum: the macros are
    that size's; the same override on the smaller size leaves them at `train`'s."""
    def big(raw):
        raw["size_defs"]["s"].update(lr=1.25e-3, micro_batch=3, grad_accum=5)

    cfg, s = _smoke_sources(tmp_path, big)
    m = paper._design_budget(s)
    assert cfg["train"]["lr"] != 1.25e-3
    assert m["LearningRate"] == paper.fmt_cfg(1.25e-3) and m["MicroBatch"] == "3" and m["GradAccum"] == "5"
    assert m["TokensPerStep"] == paper.fmt_int(3 * 5 * cfg["size_defs"]["s"]["block_size"])

    def small(raw):
        raw["size_defs"]["xs"].update(lr=1.25e-3, micro_batch=3, grad_accum=5)

    cfg, s = _smoke_sources(tmp_path, small)
    m = paper._design_budget(s)
    tr = cfg["train"]
    assert m["LearningRate"] == paper.fmt_cfg(tr["lr"]) and m["MicroBatch"] == paper.fmt_int(tr["micro_batch"])
    tokens = tr["micro_batch"] * tr["grad_accum"] * cfg["size_defs"]["s"]["block_size"]
    assert m["TokensPerStep"] == paper.fmt_int(tokens)


def test_fidelity_macros_say_each_options_value(tmp_path):
    """The fidelity table's option cells: the original's behaviour in paper.yaml, this model's
    default in the CPU profiles, n/a for a config without the key (a build before the option)."""
    from pathlib import Path

    import pandas as pd

    from ncn.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "config" / "paper.yaml")
    on = paper.fidelity(paper.Sources(cfg, Path("."), {}, pd.DataFrame()))
    on = next(iter(on.values()))
    assert on["OptDropoutLayout"] == paper.FIDELITY_WORDS["dropout_layout"]["original"]
    assert on["OptNcnAfterDropout"] == paper.FIDELITY_WORDS["ncn_after_dropout"][True]
    assert on["OptPoolBias"] == paper.FIDELITY_WORDS["pool_bias"][True]
    cfg, s = _smoke_sources(tmp_path, lambda raw: None)
    off = next(iter(paper.fidelity(s).values()))
    assert off["OptDropoutLayout"] == paper.FIDELITY_WORDS["dropout_layout"]["single"]
    assert off["OptNcnAfterDropout"] == "before embedding dropout" and off["OptPoolBias"] == "none"
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "pool_bias"}}
    old_m = next(iter(paper.fidelity(paper.Sources(old, Path("."), {}, pd.DataFrame())).values()))
    assert old_m["OptPoolBias"] == "n/a"
