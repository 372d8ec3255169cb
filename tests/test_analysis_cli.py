"""The analyses' seams: every command is a registered module with add_arguments/main whose
output paths come from the caller, and the claims are a list of Claim objects that compute()
judges in order (known answers both ways on a hand-made runs table)."""

from __future__ import annotations

import argparse
import importlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ncn.analysis import claims
from ncn.analysis import cli as analysis_cli
from ncn.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# Options that name a file a command writes: the rule must pass every one (no default name).
OUTPUT_OPTIONS = re.compile(r"^--(?:[a-z]+-)?(?:csv|tex|pdf|png|json|out|timing)$")


@pytest.mark.parametrize("what", list(analysis_cli.ANALYSES))
def test_every_analysis_is_a_module_whose_outputs_the_caller_names(what):
    module = importlib.import_module(analysis_cli.ANALYSES[what][0])
    assert callable(module.add_arguments) and callable(module.main)
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    outputs = [a for a in p._actions if any(OUTPUT_OPTIONS.match(o) for o in a.option_strings)]
    assert outputs, f"{what} writes nothing?"
    for a in outputs:
        assert a.required and a.default is None, f"ncn analyze {what} {a.option_strings[0]} has a default name"


@pytest.mark.source
def test_the_dispatcher_has_no_per_command_branches():
    body = (ROOT / "src" / "ncn" / "analysis" / "cli.py").read_text()
    assert not re.search(r"\belif\b|\bif a\.what\b|== \"(?:runs|ab|claims)\"", body)
    # one command's module only is imported for a job; --help lists them all
    p = analysis_cli.parser("leak")
    assert p.parse_args(["leak", "--runs-table", "r", "--config", "c", "--csv", "x", "--tex", "y"]).what == "leak"


def test_a_rule_named_png_is_written_where_named(tmp_path):
    import matplotlib.pyplot as plt

    from ncn.analysis.options import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    save_figure(fig, tmp_path / "a" / "fig.pdf", tmp_path / "b" / "other.png")
    assert (tmp_path / "a" / "fig.pdf").stat().st_size and (tmp_path / "b" / "other.png").stat().st_size
    assert not (tmp_path / "a" / "fig.png").exists()


# ------------------------------------------------------------------------------------------------
# claims as objects


def test_claims_are_objects_in_the_published_order():
    """The paper's prose names claims by number (\\ClaimSevenVerdict): a reorder must be deliberate."""
    assert [c.key for c in claims.CLAIMS] == ["ab_beats_baseline", "baseline_ppl", "layer_specialisation",
                                             "phasic_but", "homeostasis", "gamma_gates", "asrun_leak",
                                             "block_skipping", "control_steers", "kvcache_beta_guided",
                                             "knob_temperature"]
    for c in claims.CLAIMS:
        assert c.text and c.value_label and c.origin in claims.ORIGINS
        assert all(callable(f) for f in (c.statistic, c.null, c.control, c.threshold, c.compute))
    assert {c.key: c.subject for c in claims.CLAIMS if c.subject} == {"baseline_ppl": "none", "asrun_leak": "asrun",
                                                                      "control_steers": "control"}
    assert {c.key: c.origin for c in claims.CLAIMS if c.origin != "original"} == {
        "asrun_leak": "replication", "control_steers": "original, promise", "block_skipping": "original, future work",
        "kvcache_beta_guided": "original, future work", "knob_temperature": "original, future work"}


def _runs(tmp_path: Path, effect: float, seeds=(0, 1, 2)) -> pd.DataFrame:
    """none/asrun/causal at size "s": causal's PPL = none's + effect (+ per-seed noise); asrun's
    loss with full pooling 0.1 below its prefix-only loss (a prefix-pool mismatch, no measure of
    leak); train logs with L_reg."""
    rows = []
    noise = {0: 0.0, 1: 0.01, 2: -0.012}
    for v in ("none", "asrun", "causal"):
        for seed in seeds:
            loss = 3.0 + noise[seed] + (math.log1p(effect / math.exp(3.0)) if v == "causal" else 0.0)
            d = tmp_path / v / f"seed{seed}"
            d.mkdir(parents=True, exist_ok=True)
            log = pd.DataFrame({"step": [1, 2], "tokens": [10, 20], "loss": [3.0, 2.9], "ce": [3.0, 2.9],
                                "reg": [0.0, 0.0] if v == "none" else [1e-3, 5e-3]})
            if v != "none":
                log = log.assign(beta_mean_l0=[1.0, 1.0 + 0.001 * seed], beta_mean_l1=[1.0, 1.5 + 0.001 * seed])
            log.to_csv(d / "train_log.csv", index=False)
            rows.append({"variant": v, "size": "s", "seed": seed, "run_dir": str(d), "val_loss": loss,
                         "val_ppl": math.exp(loss), "val_bpb": loss / math.log(2) / 4,
                         "val_loss_prefix_pool": loss + 0.1 + 0.001 * seed if v == "asrun" else np.nan})
    return pd.DataFrame(rows)


def _cfg(tmp_path, variants=("none", "asrun", "causal")) -> dict:
    cfg = load_config(ROOT / "config" / "smoke.yaml")
    cfg.update(variants=list(variants), sizes=["s"])
    cfg["tokenizer"]["gpt2_dir"] = str(tmp_path / "no-gpt2")
    return cfg


def _compute(tmp_path, runs):
    return {c["key"]: c for c in claims.compute(runs, {}, _cfg(tmp_path), {"tokenizer_kind": "bpe"}, None)["claims"]}


def test_compute_judges_every_claim_object_planted_effect(tmp_path):
    by = _compute(tmp_path, _runs(tmp_path, effect=-0.5))
    assert [c["id"] for c in by.values()] == list(range(1, len(claims.CLAIMS) + 1))
    # no control measurements given: the control claim cannot decide
    assert by["control_steers"]["verdict"] == "inconclusive" and by["control_steers"]["variant"] == "control"
    assert by["ab_beats_baseline"]["verdict"] == "supported" and by["ab_beats_baseline"]["variant"] == "causal"
    assert "PPL(causal) - PPL(none)" in by["ab_beats_baseline"]["statistic"]
    assert by["ab_beats_baseline"]["threshold"].startswith("supported if the CI lies below 0")
    for c in by.values():  # every entry carries the registry's words and a reason
        assert c["origin"] in claims.ORIGINS and c["null"] and c["control"] and c["reason"] and c["value_label"]
    # asrun and static are judged beside the NCN on the per-NCN claims only
    assert "asrun" in by["ab_beats_baseline"]["details"]["also"]
    assert "also" not in by["baseline_ppl"]["details"] and "also" not in by["asrun_leak"]["details"]
    # no traces and no measurements given: the claims that read them cannot decide, and say why
    for key in ("layer_specialisation", "phasic_but", "homeostasis", "gamma_gates"):
        assert by[key]["verdict"] == "inconclusive" and by[key]["reason"] == "no trace"
    assert by["asrun_leak"]["verdict"] == "inconclusive" and "leak_measure.csv" in by["asrun_leak"]["reason"]
    assert by["block_skipping"]["verdict"] == "inconclusive" and "skip_measure.csv" in by["block_skipping"]["reason"]
    for key, table in (("kvcache_beta_guided", "kvcache.csv"), ("knob_temperature", "knobs.csv")):
        assert by[key]["verdict"] == "inconclusive" and table in by[key]["reason"]
        assert by[key]["origin"] == "original, future work"
    # a bpe tokenizer: the 5.5 GPT-2 perplexity does not apply
    assert by["baseline_ppl"]["verdict"] == "not applicable" and "bpe" in by["baseline_ppl"]["reason"]


def test_compute_no_effect_and_thin_data(tmp_path):
    assert _compute(tmp_path / "a", _runs(tmp_path / "a", effect=0.0))["ab_beats_baseline"]["verdict"] != "supported"
    thin = _compute(tmp_path / "b", _runs(tmp_path / "b", effect=-0.5, seeds=(0,)))
    assert thin["ab_beats_baseline"]["verdict"] == "inconclusive"  # one seed: no interval


def test_no_ncn_variant_is_inconclusive_for_the_ncn_claims(tmp_path):
    runs = _runs(tmp_path, effect=-0.5)
    doc = claims.compute(runs[runs["variant"] == "none"], {}, _cfg(tmp_path, ["none"]), {"tokenizer_kind": "bpe"}, None)
    by = {c["key"]: c for c in doc["claims"]}
    assert doc["ncn_variant"] is None and by["ab_beats_baseline"]["reason"] == "no NCN variant trained"
    assert by["ab_beats_baseline"]["verdict"] == "inconclusive"


def test_the_claims_rule_passes_options_the_command_takes():
    """rules.claim_measure_options turns the rule's measurement inputs into options that
    `ncn analyze claims` parses, one per measurement that is there."""
    from types import SimpleNamespace

    from ncn.analysis.rules import CLAIM_MEASURES, claim_measure_options

    assert set(CLAIM_MEASURES) == set(claims.MEASURES)
    inputs = SimpleNamespace(leak_measure="L.csv", skip_measure=[], regonly="R.csv", kvcache="K.csv", knobs="N.csv")
    opts = claim_measure_options(inputs).split()
    assert opts == ["--leak-measure", "L.csv", "--regonly", "R.csv", "--kvcache", "K.csv", "--knobs", "N.csv"]
    base = ["claims", "--runs-table", "r.csv", "--config", "c.json", "--data", "d", "--json", "j", "--tex", "t",
            "--paragraphs", "p"]
    args = analysis_cli.parser("claims").parse_args(base + opts)
    assert (args.leak_measure, args.skip_measure, args.regonly) == ("L.csv", None, "R.csv")
    assert (args.kvcache, args.knobs) == ("K.csv", "N.csv")


def test_claims_numbers_are_one_macro_set_per_claim():
    doc = {"claims": [{"id": i, "key": c.key, "claim": c.text, "statistic": "s_1", "threshold": "p < 0.05",
                       "value": -0.25, "ci_low": -0.5 if i == 1 else None, "ci_high": -0.1 if i == 1 else None,
                       "verdict": "supported" if i == 1 else "inconclusive"} for i, c in enumerate(claims.CLAIMS, 1)]}
    (group, m), = claims.numbers(doc, {}).items()
    assert m["ClaimsTotal"] == "11" and m["ClaimsSupported"] == "1" and m["ClaimsInconclusive"] == "10"
    assert m["ClaimOneCI"].endswith("[$-$0.500, $-$0.100]") and m["ClaimTwoCI"] == "no interval"
    assert m["ClaimSevenStatistic"] == r"s\_1" and m["ClaimOneValue"] == "$-$0.250"
    assert (m["ClaimOneCILow"], m["ClaimOneCIHigh"]) == ("$-$0.500", "$-$0.100")
