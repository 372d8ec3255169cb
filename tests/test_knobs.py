"""Modulation knobs (ncn.knobs, `--modulate`) and `ncn analyze knobs`: the grammar and its
refusals, the composed knobs' known answers, a knob of 1.0 is bitwise the model, the baseline's
β is its query scale, and the temperature claim's verdict both ways."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from ncn import knobs
from ncn.analysis import knobs as ak
from ncn.errors import NCNError
from ncn.variants import names
from test_generate import tiny_model

torch.set_num_threads(1)


# ---- grammar -------------------------------------------------------------------------------------


def test_the_issue_s_examples_parse():
    assert knobs.parse("beta=1.5") == [knobs.Knob(1, None, "scale", 1.5)]
    assert knobs.parse("beta@l3=0.5,gamma@*=0.8") == [knobs.Knob(1, (3, 3), "scale", 0.5),
                                                      knobs.Knob(2, None, "scale", 0.8)]
    assert knobs.parse("g@l0-2=+0.1") == [knobs.Knob(0, (0, 2), "add", 0.1)]
    assert knobs.parse(["gain@l1:=-1", " β = 2 "]) == [knobs.Knob(0, (1, 1), "set", -1.0), knobs.Knob(1, None, "scale", 2.0)]
    assert knobs.parse("beta=-0.25") == [knobs.Knob(1, None, "add", -0.25)]
    assert knobs.describe(knobs.parse("beta@l3=0.5,gamma@*=0.8,g@l0-2=+0.1,gate@l1:=1")) == \
        "beta@l3=0.5,gamma=0.8,g@l0-2=+0.1,gamma@l1:=1"
    assert knobs.parse(None) == []


@pytest.mark.parametrize("spec, why", [
    ("beta", "expected SIGNAL"), ("beta=", "is not a number"), ("beta=abc", "is not a number"),
    ("bta=2", "unknown signal 'bta'"), ("beta@3=1", "is not '*', 'lN' or 'lN-M'"),
    ("beta@l2-1=1", "runs backwards"), ("beta=1,,g=2", "empty item"), ("beta=1,", "empty item"),
    ("beta=nan", "is not a number"), ("beta=1e999", "not finite"), ("beta=+-1", "is not a number"),
    ("   ", "empty spec"),
])
def test_bad_syntax_is_refused_naming_the_item_and_the_grammar(spec, why):
    with pytest.raises(NCNError, match=re.escape(why)) as e:
        knobs.parse(spec)
    assert "--modulate" in str(e.value)


def test_a_layer_the_model_lacks_is_refused():
    model = tiny_model("causal")  # 2 layers
    with pytest.raises(NCNError, match=r"names layer 2 but the model has 2 layers \(l0-1\)"):
        knobs.attach(model, knobs.parse("beta@l1-2=2"))


def test_knobs_compose_left_to_right():
    a, b = knobs.affine(knobs.parse("beta=2,beta=+0.5"), 2)
    assert (a[0][1], b[0][1]) == (2.0, 0.5)
    a, b = knobs.affine(knobs.parse("beta=+0.5,beta=2"), 2)
    assert (a[1][1], b[1][1]) == (2.0, 1.0)
    a, b = knobs.affine(knobs.parse("gamma@l1:=0.3,gamma=2"), 2)
    assert (a[0][2], b[0][2], a[1][2], b[1][2]) == (2.0, 0.0, 0.0, 0.6)
    assert a[0][0] == a[1][0] == 1.0 and b[0][0] == b[1][0] == 0.0  # g untouched


# ---- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", names())
def test_a_knob_of_one_is_bitwise_the_unmodified_model(variant):
    model = tiny_model(variant)
    x = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    ref = model(x).logits
    gen = model.generate(x[:1, :3], 10, temperature=1.0, generator=torch.Generator().manual_seed(2), return_logits=True)
    knobs.attach(model, knobs.parse("beta=1,g@l0-1=1.0,gamma@*=+0,beta@l1=+0"))
    assert model.modulate is not None
    assert torch.equal(model(x).logits, ref)
    got = model.generate(x[:1, :3], 10, temperature=1.0, generator=torch.Generator().manual_seed(2), return_logits=True)
    assert torch.equal(got[0], gen[0]) and torch.equal(got[1], gen[1])
    knobs.attach(model, knobs.parse("beta=1.5"))
    assert not torch.allclose(model(x).logits, ref, atol=1e-4)  # and a real knob changes it


def test_the_baseline_s_beta_scales_its_queries():
    model = tiny_model("none")
    x = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(3))
    knobs.attach(model, knobs.parse("beta@l1=1.7"))
    got = model(x).logits
    knobs.attach(model, [])
    with torch.no_grad():  # by hand: the query rows of layer 1's qkv weight times 1.7
        w = model.blocks[1].attn.qkv.weight
        w[: w.size(1)] *= 1.7
    assert torch.allclose(got, model(x).logits, atol=1e-5, rtol=1e-5)


def test_every_signal_set_to_one_is_the_plain_trunk():
    """causal with g, β, γ := 1 computes exactly the baseline Transformer with its trunk weights."""
    ncn, base = tiny_model("causal"), tiny_model("none")
    base.load_state_dict({k: v for k, v in ncn.state_dict().items() if not k.startswith("controller.")})
    x = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(4))
    knobs.attach(ncn, knobs.parse("g:=1,beta:=1,gamma:=1"))
    assert torch.equal(ncn(x).logits, base(x).logits)


# ---- text statistics -----------------------------------------------------------------------------


def test_distinct_and_repetition_known_answers():
    assert ak.distinct([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert ak.distinct([[1, 2, 3], [1, 2, 4]], 3) == 1.0
    assert ak.distinct([[1, 2, 3], [1, 2, 3]], 2) == 0.5
    assert math.isnan(ak.distinct([[1]], 2))
    assert ak.repetition([[1, 2, 3, 4, 1, 2, 3, 4]]) == pytest.approx(1 / 5)  # 5 4-grams, one repeats
    assert ak.repetition([[1, 2, 3, 4, 5], [7, 7, 7, 7, 7]]) == pytest.approx(0.25)  # 0 and 1/2
    assert math.isnan(ak.repetition([[1, 2]]))


# ---- the claim -----------------------------------------------------------------------------------

SCALES = [0.5, 0.7, 1.0, 1.4, 2.0]


def _grid(strength: dict, seeds, noise=0.0, bump=None) -> pd.DataFrame:
    """entropy = 3 − strength[variant] · log2(s) (+ noise); bump=(variant, seed): a non-monotone kink."""
    rng = np.random.default_rng(0)
    rows = []
    for v, k in strength.items():
        for seed in seeds:
            for s in SCALES:
                h = 3 - (k + rng.normal(0, noise)) * math.log2(s)
                if bump == (v, seed) and s == 1.4:
                    h += 1.0
                rows.append({"variant": v, "size": "s", "seed": seed, "target": "all", "scale": s, "entropy": h,
                             "loss": 3.0})
    return pd.DataFrame(rows)


def test_claim_planted_effect_is_supported():
    res = ak.claim(_grid({"causal": 0.5, "none": 0.1}, [0, 1, 2], noise=0.01), "causal", "none", "s", 0.95)
    assert res["verdict"] == "supported"
    assert res["value"] == pytest.approx(0.4, abs=0.03) and res["ci_low"] > 0
    assert res["details"]["monotone_seeds"] == [0, 1, 2]


def test_claim_no_effect_is_not_supported():
    res = ak.claim(_grid({"causal": 0.3, "none": 0.3}, [0, 1, 2], noise=0.02), "causal", "none", "s", 0.95)
    assert res["verdict"] != "supported"
    res = ak.claim(_grid({"causal": 0.3, "none": 0.3}, [0, 1, 2]), "causal", "none", "s", 0.95)
    assert res["verdict"] == "not supported"  # exactly equal strengths: the CI is [0, 0]


def test_claim_a_non_monotone_seed_is_not_supported():
    res = ak.claim(_grid({"causal": 0.5, "none": 0.1}, [0, 1, 2], bump=("causal", 1)), "causal", "none", "s", 0.95)
    assert res["verdict"] == "not supported" and res["details"]["monotone_seeds"] == [0, 2]


def test_claim_thin_data_is_inconclusive():
    assert ak.claim(_grid({"causal": 0.5, "none": 0.1}, [0]), "causal", "none", "s", 0.95)["verdict"] == "inconclusive"
    two = _grid({"causal": 0.5, "none": 0.1}, [0, 1, 2])
    two = two[two["scale"].isin([0.5, 2.0])]
    assert ak.claim(two, "causal", "none", "s", 0.95)["verdict"] == "inconclusive"
    assert ak.claim(two.iloc[0:0], "causal", "none", "s", 0.95)["verdict"] == "inconclusive"


def test_slope_known_answer():
    g = pd.DataFrame({"scale": [0.5, 1.0, 2.0, 4.0], "entropy": [4.0, 3.0, 2.0, 1.0]})
    assert ak.slope(g) == pytest.approx(-1.0)
