"""The claims beyond the original in the registry (issue 16): beta-guided KV-cache bits
(kvcache_beta_guided) and the temperature knob (knob_temperature), judged from the per-run tables
of `ncn analyze kvcache|knobs`, with known answers both ways and on thin data; control_steers to
the same standard; claims.json/tables byte-identical across reruns; the generated paragraphs; the
abstract's tally keeps them apart from the original's claims; no variant name compared in claims.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from ncn.analysis import claims, tables
from test_known_answers import _ab_runs, _control_runs, _knob_grid, _kv_table, _setting

ROOT = Path(__file__).resolve().parents[1]


def _judge(tmp_path, key, **kw) -> dict:
    claim = next(c for c in claims.CLAIMS if c.key == key)
    return claims.judge(1, claim, _setting(tmp_path, **kw), "causal", [])


def kv(tmp_path, table) -> dict:
    return _judge(tmp_path, "kvcache_beta_guided", measures={"kvcache": table})


def knob(tmp_path, table) -> dict:
    return _judge(tmp_path, "knob_temperature", measures={"knobs": table})


# -- kvcache_beta_guided ------------------------------------------------------------------------------------
def test_kvcache_planted_gain_is_supported_with_the_bounds_reported(tmp_path):
    res = kv(tmp_path, _kv_table(0.01))
    assert res["verdict"] == "supported" and res["ci_high"] < 0, res["reason"]
    assert res["value"] == pytest.approx(-0.01 * (4 / 4 + 4 / 6) / 2, abs=1e-3)  # mean over budgets 4 and 6
    d = res["details"]
    assert d["oracle_minus_uniform"]["mean"] < res["value"] < 0 < d["random_minus_uniform"]["mean"]
    assert "oracle - uniform" in res["reason"] and "random - uniform" in res["reason"]
    assert res["origin"] == "original, future work" and res["variant"] == "causal"
    assert "oracle" in res["statistic"] and "random" in res["control"]


def test_kvcache_no_gain_or_a_loss_is_not_supported(tmp_path):
    assert kv(tmp_path, _kv_table(0.0))["verdict"] in ("inconclusive", "not supported")
    assert kv(tmp_path, _kv_table(0.0, noise=0.0))["verdict"] == "not supported"  # identical: CI [0, 0]
    assert kv(tmp_path, _kv_table(-0.01))["verdict"] == "not supported"  # beta-guided loses more


def test_kvcache_thin_data_is_inconclusive(tmp_path):
    one = kv(tmp_path, _kv_table(0.01, seeds=(0,)))  # a planted gain on one seed: no interval
    assert one["verdict"] == "inconclusive" and "1 paired seed" in one["reason"]
    assert kv(tmp_path, None)["verdict"] == "inconclusive" and "kvcache.csv" in kv(tmp_path, None)["reason"]
    base_only = _kv_table(0.01)
    base_only = base_only[base_only["policy"] == "uniform"]  # the baseline has no beta rows
    assert kv(tmp_path, base_only)["verdict"] == "inconclusive"


def test_kvcache_unequal_memory_decides_nothing(tmp_path):
    res = kv(tmp_path, _kv_table(0.01, bytes_beta=999.0))
    assert res["verdict"] == "inconclusive" and "differ in bytes per token" in res["reason"]


def test_kvcache_reads_the_table_as_written(tmp_path):
    """Through the CSV the analysis writes (sizes and seeds come back typed by pandas)."""
    path = tmp_path / "kvcache.csv"
    tables.write_csv(_kv_table(0.01).assign(size="1"), path)
    df = claims.read_measure(path, "kvcache")
    claim = next(c for c in claims.CLAIMS if c.key == "kvcache_beta_guided")
    s = _setting(tmp_path, measures={"kvcache": df})
    s = claims.Setting(s.runs, s.traces, s.cfg, s.meta, "1", s.measures, s.control)
    assert claims.judge(10, claim, s, "causal", [])["verdict"] == "supported"


# -- knob_temperature ------------------------------------------------------------------------------------------
def test_knob_planted_stronger_monotone_knob_is_supported(tmp_path):
    res = knob(tmp_path, _knob_grid({"causal": 0.5, "none": 0.1}))
    assert res["verdict"] == "supported", res["reason"]
    assert res["value"] == pytest.approx(0.4, abs=0.03) and res["ci_low"] > 0
    assert res["details"]["monotone_seeds"] == [0, 1, 2] and res["details"]["baseline"] == "none"
    assert res["details"]["legs"] == {"monotone": "supported", "stronger than on none": "supported"}


def test_knob_no_difference_a_weaker_or_a_non_monotone_knob_is_not_supported(tmp_path):
    assert knob(tmp_path, _knob_grid({"causal": 0.3, "none": 0.3}))["verdict"] in ("inconclusive", "not supported")
    assert knob(tmp_path, _knob_grid({"causal": 0.3, "none": 0.3}, noise=0.0))["verdict"] == "not supported"
    assert knob(tmp_path, _knob_grid({"causal": 0.1, "none": 0.5}))["verdict"] == "not supported"
    kinked = knob(tmp_path, _knob_grid({"causal": 0.5, "none": 0.1}, bump=("causal", 1)))
    assert kinked["verdict"] == "not supported" and "2 of 3 seeds" in kinked["reason"]
    # entropy rising with the precision is no temperature knob either
    assert knob(tmp_path, _knob_grid({"causal": -0.5, "none": 0.1}))["verdict"] == "not supported"


def test_knob_thin_data_is_inconclusive(tmp_path):
    one = knob(tmp_path, _knob_grid({"causal": 0.5, "none": 0.1}, seeds=(0,)))
    assert one["verdict"] == "inconclusive" and "1 paired seeds" in one["reason"]
    two_scales = _knob_grid({"causal": 0.5, "none": 0.1})
    assert knob(tmp_path, two_scales[two_scales["scale"].isin([0.5, 2.0])])["verdict"] == "inconclusive"
    no_base = _knob_grid({"causal": 0.5})
    assert knob(tmp_path, no_base)["verdict"] == "inconclusive"
    assert knob(tmp_path, None)["verdict"] == "inconclusive" and "knobs.csv" in knob(tmp_path, None)["reason"]


# -- control_steers, to the same standard ------------------------------------------------------------------------
@pytest.mark.parametrize("gaps, steers, verdict", [
    ([0.05, 0.06, 0.055], [0.30, 0.35, 0.32], "supported"),  # planted: both legs in every seed
    ([0.0, 0.0, 0.0], [0.30, 0.35, 0.32], "not supported"),  # the label is ignored: gap exactly 0
    ([0.05, 0.06, 0.055], [-0.3, -0.35, -0.32], "not supported"),  # steers the wrong way
    ([0.05, 0.06, 0.055], [0.2, -0.2, 0.01], "inconclusive"),  # generation undecided
    ([0.05], [0.3], "inconclusive"),  # planted on one seed: no interval
])
def test_control_steers_through_the_registry(tmp_path, gaps, steers, verdict):
    res = _judge(tmp_path, "control_steers", control=_control_runs(gaps, steers))
    assert res["verdict"] == verdict and res["reason"] and res["variant"] == "control"
    # another variant's rows in the table are not pooled into the control variant's seeds
    other = _control_runs([9.0] * 3, [-0.9] * 3).assign(variant="other")
    mixed = _judge(tmp_path, "control_steers", control=pd.concat([_control_runs(gaps, steers), other]))
    assert mixed["verdict"] == verdict and mixed["details"]["n_seeds"] == len(gaps)


# -- the document: byte-identical, paragraphs, tally -------------------------------------------------------------
def _doc(tmp_path) -> dict:
    measures = {"kvcache": _kv_table(0.01), "knobs": _knob_grid({"causal": 0.5, "none": 0.1})}
    s = _setting(tmp_path, measures=measures, control=_control_runs([0.05, 0.06, 0.055], [0.3, 0.35, 0.32]),
                 runs=_ab_runs([10.0, 10.5, 9.8], [11.0, 11.6, 10.9]))
    return claims.nan_to_none({"claims": [claims.judge(i, c, s, "causal", []) for i, c in enumerate(claims.CLAIMS, 1)]})


def test_the_document_is_byte_identical_across_reruns(tmp_path):
    def render(d):
        return json.dumps(d, sort_keys=True), claims.claims_tex(d), claims.claims_paragraphs(d)

    assert render(_doc(tmp_path / "a")) == render(_doc(tmp_path / "b"))


def test_compute_judges_the_control_claim_from_the_control_runs(tmp_path):
    """compute() hands its control_runs to the control claim (planted: supported), and without
    them the claim waits for a measurement."""
    s = _setting(tmp_path, runs=_ab_runs([10.0, 10.5, 9.8], [11.0, 11.6, 10.9]))
    args = (s.runs, s.traces, s.cfg | {"variants": s.cfg["variants"] + ["control"]}, {"tokenizer_kind": "bpe"})
    key = "control_steers"
    with_runs = claims.compute(*args, {}, _control_runs([0.05, 0.06, 0.055], [0.3, 0.35, 0.32]))
    without = claims.compute(*args, {}, None)
    assert next(c for c in with_runs["claims"] if c["key"] == key)["verdict"] == "supported"
    assert next(c for c in without["claims"] if c["key"] == key)["verdict"] == "inconclusive"


def test_the_paragraphs_render_the_new_claims(tmp_path):
    doc = _doc(tmp_path)
    text = claims.claims_paragraphs(doc)
    ids = {c["key"]: c["id"] for c in doc["claims"]}
    for key in ("kvcache_beta_guided", "knob_temperature"):
        c = next(c for c in doc["claims"] if c["key"] == key)
        head = f"\\paragraph{{Claim {ids[key]} (original, future work): {tables.prose(c['claim'])}.}}"
        assert head in text and c["verdict"] == "supported"
        assert f"\\textbf{{supported}}: {tables.prose(c['reason'])}." in text  # the result, then why
    assert "$\\beta$-guided" in claims.claims_tex(doc) and "temperature" in claims.claims_tex(doc)


def test_the_tally_counts_them_as_future_work_not_as_the_originals(tmp_path):
    doc = _doc(tmp_path)
    m = claims.numbers(doc, {})["claims (results/claims.json)"]
    origins = [c.origin for c in claims.CLAIMS]
    assert m["ClaimsOriginalTotal"] == str(origins.count("original")) == "6"
    assert m["ClaimsFutureWorkTotal"] == "3" and m["ClaimsFutureWorkSupported"] == str(
        sum(c["verdict"] == "supported" for c in doc["claims"] if c["origin"] == "original, future work"))
    assert m["ClaimOneZeroText"].startswith("At equal cache memory")
    assert m["ClaimOneOneOrigin"] == "original, future work"
    # the prose names the future-work claims by their macros, the original's by the tally only
    prose = "".join((ROOT / "paper" / "sections" / f).read_text() for f in ("abstract.tex", "results.tex"))
    assert "\\ClaimOneZeroVerdict" in prose and "\\ClaimOneOneVerdict" in prose and "\\ClaimsFutureWorkTotal" in prose


@pytest.mark.source
def test_no_variant_name_is_compared_in_claims():
    from ncn.variants import names

    src = (ROOT / "src" / "ncn" / "analysis" / "claims.py").read_text()
    code = re.sub(r'"""[\s\S]*?"""', "", src)  # docstrings may name them
    # trace kinds and option names are no variants
    code = "\n".join(line for line in code.splitlines() if '["kind"]' not in line and "getattr(args" not in line)
    for v in names():
        assert not re.search(rf'[=!]=\s*"{v}"|"{v}"\s*[=!]=|\(\s*"{v}"|,\s*"{v}"\s*[,)]|subject="{v}"', code), v

