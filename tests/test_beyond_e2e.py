"""`ncn analyze kvcache|knobs` and `ncn generate --modulate/--kv-bits` end to end on the fake
results tree of test_analysis_e2e (tiny untrained models, a tiny tokenizer): the outputs appear,
their rows obey the design (equal bytes per budget, baseline uniform only, a scale of 1 is the
reference), reruns are byte-identical, and bad knobs fail with one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from ncn.cli import main as ncn_main
from test_analysis_e2e import build_tree, outputs

ANALYSIS = {"kv_max_tokens": 192, "kv_budgets": [4, 6], "kv_uniform_bits": [8, 16], "kv_random_draws": 2,
            "knob_scales": [0.5, 1.0, 2.0], "knob_max_tokens": 192, "knob_prompts": ["Once upon a time, there was"],
            "knob_samples": 2, "knob_new_tokens": 6}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("beyond")
    t = build_tree(tmp)
    cfg = yaml.safe_load(t["cfg_path"].read_text())
    cfg["analysis"].update(ANALYSIS)
    t["cfg_path"].write_text(yaml.safe_dump(cfg))
    t["runs_xs"] = [str(t["res"] / "runs" / v / "xs" / f"seed{s}") for v in ("causal", "none") for s in (0, 1)]
    t["out"] = tmp / "out"
    _analyses(t)
    return t


def _analyses(t) -> None:
    common = ["--run", *t["runs_xs"], "--config", str(t["cfg_path"]), "--data", str(t["data"])]
    gen = ["--gen-run", t["runs_xs"][0], "--gen-csv", str(t["out"] / "kvgen.csv"), "--gen-tex", str(t["out"] / "kvgen.tex")]
    for what, extra in (("kvcache", gen), ("knobs", [])):
        stem = t["out"] / what
        assert ncn_main(["analyze", what, *common, *extra, *outputs(stem, "csv", "tex", "pdf", "png"),
                         "--summary", f"{stem}_summary.csv", "--claim-json", f"{stem}_claim.json",
                         "--claim-tex", f"{stem}_claim.tex"]) == 0


def test_kvcache_rows(tree):
    df = pd.read_csv(tree["out"] / "kvcache.csv")
    assert list(df["variant"].unique()) == ["none", "causal"]  # the registry's order
    assert set(df.loc[df["variant"] == "none", "policy"]) == {"fp32", "uniform"}
    assert set(df.loc[df["variant"] == "causal", "policy"]) == {"fp32", "uniform", "beta", "oracle", "random"}
    assert (df.loc[df["policy"] == "fp32", "delta_loss"] == 0).all()
    mixed = df[df["budget_bits"].isin([4, 6]) & (df["policy"] != "fp32")]
    assert (mixed.groupby(["variant", "seed", "budget_bits"])["bytes_per_token"].nunique() == 1).all()
    u16 = df[(df["policy"] == "uniform") & (df["budget_bits"] == 16)]
    assert (u16["delta_loss"].abs() < 1e-3 * u16["loss"]).all()
    beta = df[df["policy"] == "beta"]
    assert all(sorted(map(int, b.split())) in ([2, 6], [4, 8]) for b in beta["bits"])
    assert (tree["out"] / "kvcache.tex").read_text().startswith("\\begin{tabular}")


def test_kvcache_generation_rows(tree):
    gen = pd.read_csv(tree["out"] / "kvgen.csv")
    assert list(gen["kv_bits"]) == ["none", "16", "8", "4", "beta:4", "beta:6"]
    assert gen["cache_ratio"].iloc[0] == 1 and (gen["cache_ratio"].iloc[1:] < 1).all()
    assert gen.loc[gen["kv_bits"] == "4", "cache_ratio"].iloc[0] == pytest.approx((4 + 2) / 32)  # hd 8: 4 packed bytes + a 2-byte scale vs 32
    assert (gen["same_text"].iloc[0] == 1) and gen["same_text"].between(0, 1).all()


def test_knobs_rows(tree):
    df = pd.read_csv(tree["out"] / "knobs.csv")
    assert set(df["target"]) == {"all", "l0", "l1"}
    one = df[df["scale"] == 1.0]
    # a knob of 1 is bitwise the model: every target's row at s = 1 is the same number
    assert (one.groupby(["variant", "seed"])["loss"].nunique() == 1).all()
    assert (one.groupby(["variant", "seed"])["entropy"].nunique() == 1).all()
    al = df[df["target"] == "all"]
    assert (al["samples"] == 2).all() and al["distinct2"].between(0, 1).all()
    assert df[df["target"] != "all"]["distinct2"].isna().all()
    sm = pd.read_csv(tree["out"] / "knobs_summary.csv")
    assert len(sm) == 2 * 3 and set(sm["n_seeds"]) == {2}


def test_rerun_is_byte_identical(tree):
    names = [f"{w}{x}" for w in ("kvcache", "knobs") for x in (".csv", "_summary.csv", ".tex", "_claim.json", "_claim.tex")]
    before = {n: (tree["out"] / n).read_bytes() for n in names}
    _analyses(tree)
    assert [n for n in names if (tree["out"] / n).read_bytes() != before[n]] == []


def test_generate_with_knobs_and_a_compressed_cache(tree, capsys):
    run, out = tree["runs_xs"][0], tree["out"] / "g.json"
    base = ["generate", "--run", run, "--config", str(tree["cfg_path"]), "--data", str(tree["data"]),
            "--prompt", "Once upon a time", "--max-new-tokens", "5"]
    assert ncn_main([*base, "--modulate", "beta=1.5", "--modulate", "gamma@l1:=1", "--kv-bits", "4", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["modulate"] == "beta=1.5,gamma@l1:=1" and rec["kv_bits"] == [4, 4]
    assert rec["kv_cache_bytes"] * 4 < rec["kv_cache_bytes_uncompressed"]
    assert ncn_main([*base, "--kv-bits", "beta:6", "--out", str(out)]) == 0
    assert sorted(json.loads(out.read_text())["kv_bits"]) == [4, 8]
    capsys.readouterr()
    assert ncn_main([*base, "--modulate", "beta@l2=2"]) == 2
    assert "names layer 2 but the model has 2 layers" in capsys.readouterr().err
    assert ncn_main([*base, "--modulate", "beta==2"]) == 2
    assert "bad item 'beta==2'" in capsys.readouterr().err
    assert ncn_main(["evaluate", "--run", run, "--config", str(tree["cfg_path"]), "--modulate", "beta=2"]) == 2
    assert "--out FILE" in capsys.readouterr().err


def test_claim_entries(tree):
    for what, key in (("kvcache", "kvcache_beta_guided"), ("knobs", "knob_temperature")):
        doc = json.loads((tree["out"] / f"{what}_claim.json").read_text())
        assert doc["key"] == key and doc["origin"] == "original, future work" and doc["variant"] == "causal"
        assert doc["size"] == "s" and doc["verdict"] in ("supported", "not supported", "inconclusive")
        assert "\\toprule" in (tree["out"] / f"{what}_claim.tex").read_text()


def test_per_run_rows_give_byte_identical_outputs(tree):
    """The workflow's per-run jobs (`ncn analyze rows`, resources.analysis_per_run) then `--rows`
    give the same bytes as measuring every run in the analysis's own job (`--run`)."""
    cfg = ["--config", str(tree["cfg_path"]), "--data", str(tree["data"])]
    out, rows_dir = tree["out"] / "via_rows", tree["out"] / "rows"
    causal = [r for r in tree["runs_xs"] if "/causal/" in r]
    cases = {"kvcache": (tree["runs_xs"], ["--gen-csv", str(out / "g.csv"), "--gen-tex", str(out / "g.tex")]),
             "knobs": (tree["runs_xs"], []), "skip": (causal, [])}
    for what, (runs, extra) in cases.items():
        rows = [str(rows_dir / f"{what}_{i}.csv") for i in range(len(runs))]
        for run, path in zip(runs, rows):
            assert ncn_main(["analyze", "rows", what, "--run", run, *cfg, "--out", path]) == 0
        for src, stem in ((["--run", *runs], out / f"{what}_run"), (["--rows", *rows], out / f"{what}_rows")):
            if what == "skip":
                opts = ["--measure-csv", f"{stem}_summary.csv", "--timing", f"{stem}_timing.csv"]
            else:
                opts = ["--summary", f"{stem}_summary.csv", "--claim-json", f"{stem}_claim.json",
                        "--claim-tex", f"{stem}_claim.tex", *extra]
            assert ncn_main(["analyze", what, *src, *cfg, *outputs(stem, "csv", "tex", "pdf", "png"), *opts]) == 0
        # skip's tex holds measured wall-time ratios; its csv and measure csv hold every number but those
        names = [".csv", "_summary.csv"] + ([] if what == "skip" else [".tex", "_claim.json", "_claim.tex"])
        differ = [n for n in names if (out / f"{what}_run{n}").read_bytes() != (out / f"{what}_rows{n}").read_bytes()]
        assert differ == [], what


def test_rows_and_run_are_exclusive_and_empty_rows_fail(tree, capsys):
    cfg = ["--config", str(tree["cfg_path"]), "--data", str(tree["data"])]
    stem = tree["out"] / "bad"
    args = [*cfg, *outputs(stem, "csv", "tex", "pdf", "png"), "--measure-csv", f"{stem}_m.csv", "--timing", f"{stem}_t.csv"]
    with pytest.raises(SystemExit):  # argparse: not both
        ncn_main(["analyze", "skip", "--run", tree["runs_xs"][0], "--rows", "x.csv", *args])
    empty = tree["out"] / "empty_rows.csv"
    empty.write_text("")
    assert ncn_main(["analyze", "skip", "--rows", str(empty), *args]) != 0
    assert "no rows" in capsys.readouterr().err
