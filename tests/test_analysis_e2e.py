"""`ncn analyze` end to end on a fake results tree: tiny real models (saved in the model.pt
payload format) with hand-made metrics.json / eval.json / train_log.csv, a tiny BPE tokenizer
and a tokenized validation stream. Every command runs; every table, figure and claims.json
appears; a rerun gives byte-identical CSV/JSON (and figures)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ncn.cli import main as ncn_main
from ncn.fileio import sha256_file

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["none", "asrun", "causal", "tonic", "static"]
SIZES = ["xs", "s"]
SEEDS = [0, 1]

STORY_BITS = [
    "Timmy wanted an apple. He looked in the box, but it was empty.",
    "Once upon a time, there was a little girl named Lily. She liked to play in the park with her big red ball.",
    "Tom had a dog. The dog was happy and ran in the garden all day long with a stick.",
    "One day, a bird sat on the tree. It sang a song for the children who played below in the sun.",
    "The cat was sleepy, but it wanted to play. Mom gave it a toy and the cat smiled at her.",
]


def _tokenizer(text: str, path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    tok.save(str(path))
    return tok


def _cfg(tmp: Path) -> tuple[dict, Path]:
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg.update(variants=VARIANTS, sizes=SIZES, seeds=SEEDS)
    cfg["size_defs"] = {"xs": {"d_model": 16, "n_layer": 2, "n_head": 2, "d_ff": 32, "block_size": 48},
                        "s": {"d_model": 24, "n_layer": 3, "n_head": 2, "d_ff": 48, "block_size": 48}}
    cfg["model"] = {"ncn_hidden": 8}
    cfg["eval"] = {"batch_size": 4}
    cfg["tokenizer"] = {"kind": "bpe", "vocab_size": 400, "gpt2_dir": str(tmp / "no-gpt2-here")}
    cfg["analysis"] = {"n_valid_sentences": 2, "skip_eps": [0.0, 0.5, 0.97], "skip_max_tokens": 600,
                       "skip_random_draws": 2, "leak_windows": 4, "leak_cuts": [0.5], "regonly_steps": 20}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from ncn.config import load_config

    return load_config(path), path


def _train_log(variant: str, n_layer: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 41)
    ce = 6.0 * np.exp(-steps / 30) + 2.0 + rng.normal(0, 0.01, len(steps))
    reg = 2.5e-5 + 1e-5 * steps if variant != "none" else np.zeros(len(steps))
    df = pd.DataFrame({"step": steps, "tokens": steps * 256, "loss": ce + reg, "ce": ce, "reg": reg,
                       "lr": 1e-3, "tokens_per_s": 1000.0})
    if variant != "none":
        logged = (steps % 10 == 0) | (steps == 1)
        for s in ("g", "beta", "gamma"):
            for layer in range(n_layer):
                mean = 1.0 + (0.1 * layer if s == "beta" else 0.0) + rng.normal(0, 0.005, len(steps))
                df[f"{s}_mean_l{layer}"] = np.where(logged, mean, np.nan)
                df[f"{s}_std_l{layer}"] = np.where(logged, 0.01, np.nan)
    return df


def build_tree(tmp: Path) -> dict:
    """results/{data,runs} under tmp; returns paths."""
    from ncn.config import model_config
    from ncn.model import Transformer, model_payload

    cfg, cfg_path = _cfg(tmp)
    data = tmp / "results" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    stories = [" ".join(rng.permutation(STORY_BITS)) for _ in range(40)]
    tok = _tokenizer("\n".join(stories) + "\n" + "\n".join(cfg["analysis"]["control_sentences"]), data / "tokenizer.json")
    eot = tok.token_to_id("<|endoftext|>")
    ids = []
    for s in stories:
        ids += tok.encode(s).ids + [eot]
    np.asarray(ids, dtype=np.uint16).tofile(data / "valid.bin")
    n_bytes = sum(len(s.encode()) for s in stories)
    meta = {"dtype": "uint16", "vocab_size": tok.get_vocab_size(), "eot_id": eot, "tokenizer_kind": "bpe",
            "tokenizer_sha256": sha256_file(data / "tokenizer.json"), "val_split": "official",
            "train": {"file": "valid.bin", "tokens": len(ids), "bytes": n_bytes, "stories": len(stories)},
            "heldout": {"file": "valid.bin", "tokens": len(ids), "bytes": n_bytes, "stories": len(stories)},
            "valid": {"file": "valid.bin", "tokens": len(ids), "bytes": n_bytes, "stories": len(stories)}}
    (data / "meta.json").write_text(json.dumps(meta))

    runs = []
    base_loss = {"none": 3.00, "asrun": 2.90, "causal": 2.95, "tonic": 3.01, "static": 3.00}
    for v in VARIANTS:
        for si, size in enumerate(SIZES):
            for seed in SEEDS:
                run = tmp / "results" / "runs" / v / size / f"seed{seed}"
                run.mkdir(parents=True)
                torch.manual_seed(seed)
                mcfg = model_config(cfg, v, size, meta["vocab_size"])
                model = Transformer(mcfg)
                torch.save(model_payload(model, variant=v, size=size, seed=seed, tokenizer_sha256=sha256_file(data / "tokenizer.json"),
                                         step=40, tokens=10240), run / "model.pt")
                loss = base_loss[v] - 0.2 * si + 0.01 * seed + (0.003 * seed if v == "causal" else 0.0)
                common = {"variant": v, "size": size, "seed": seed, "n_params": model.num_params(),
                          "n_params_non_embedding": model.num_params(non_embedding=True)}
                (run / "metrics.json").write_text(json.dumps({**common, "profile": "test", "steps": 40,
                    "tokens": 10240, "final_loss": loss, "final_ce": loss, "final_reg": 0.0, "reg_init": 2.5e-5,
                    "reg_final": 4e-4, "wall_time_s": 1.0, "tokens_per_s": 1e4, "batch_order_sha256": "x",
                    "device": "cpu", "finished": True}))
                scores = {"loss": loss, "ppl": math.exp(loss), "bpb": loss / math.log(2) * len(ids) / n_bytes,
                          "tokens": len(ids), "bytes": n_bytes,
                          "loss_prefix_pool": loss + 0.05 + 0.001 * seed if v == "asrun" else None}
                (run / "eval.json").write_text(json.dumps({**common, "max_tokens": None,
                    **{f"{split}_{k}": x for split in ("val", "heldout") for k, x in scores.items()}}))
                _train_log(v, mcfg.n_layer, seed).to_csv(run / "train_log.csv", index=False)
                runs.append(run)
    return {"cfg": cfg, "cfg_path": cfg_path, "data": data, "runs": runs, "res": tmp / "results"}


def _all(tree: dict, rerun: bool = False) -> None:
    """Every command. rerun=True repeats the deterministic ones (not brainscan/skip, the slow
    figure and the timed table) to check byte-identical outputs."""
    res, c = tree["res"], str(tree["cfg_path"])
    run_table = str(res / "tables" / "runs.csv")

    def ok(*argv):
        assert ncn_main(["analyze", *argv]) == 0, argv

    ok("runs", "--runs", *map(str, tree["runs"]), "--out", run_table, "--timing", str(res / "timing" / "runs.csv"))
    # Measured timings live apart, so the runs table is byte-identical across reruns.
    assert not {"wall_time_s", "tokens_per_s"} & set(pd.read_csv(run_table).columns)
    assert {"wall_time_s", "tokens_per_s"} <= set(pd.read_csv(res / "timing" / "runs.csv").columns)
    traces, first_seed = [], []
    for v in VARIANTS[1:]:
        for seed in SEEDS:
            out = res / "traces" / f"{v}_s_seed{seed}.csv"
            traces.append(str(out))
            first_seed += [str(out)] if seed == SEEDS[0] else []
            if rerun and v != "causal":
                continue
            ok("trace", "--run", str(res / "runs" / v / "s" / f"seed{seed}"), "--config", c, "--data",
               str(tree["data"]), "--out", str(out))
    ncn_runs = [str(r) for r in tree["runs"] if "/none/" not in r.as_posix()]
    ok("leakprobe", "--run", *ncn_runs, "--config", c, "--data", str(tree["data"]),
       "--csv", str(res / "tables" / "leak_measure.csv"))
    if not rerun:
        ok("regonly", "--run", *[str(res / "runs" / v / "s" / f"seed{s}") for v in ("causal", "static") for s in SEEDS],
           "--config", c, "--data", str(tree["data"]), "--csv", str(res / "tables" / "regonly.csv"))
    table = ("--runs-table", run_table, "--config", c)
    tab, fig = res / "tables", res / "figures"
    ok("ab", *table, *outputs(tab / "ab", "csv", "tex"), *outputs(fig / "loss_curves", "pdf", "png"))
    ok("scaling", *table, *outputs(tab / "scaling", "csv", "tex"), *outputs(fig / "scaling", "pdf", "png"))
    ok("leak", *table, "--measure", str(tab / "leak_measure.csv"), *outputs(tab / "leak", "csv", "tex"))
    if not rerun:
        ok("brainscan", "--traces", *traces, "--config", c, *outputs(fig / "brainscan", "pdf", "png"),
           *outputs(fig / "brainscan_dev", "pdf", "png", prefix="dev-"))
        ok("skip", "--run", *[str(res / "runs" / v / "s" / f"seed{s}") for v in VARIANTS[1:] for s in SEEDS],
           "--config", c, "--data", str(tree["data"]), *outputs(tab / "skip", "csv", "tex"),
           "--measure-csv", str(tab / "skip_measure.csv"),
           *outputs(fig / "skip_tradeoff", "pdf", "png"), "--timing", str(res / "timing" / "skip_wall.csv"), "--repeats", "2")
    ok("claims", *table, "--traces", *traces, "--data", str(tree["data"]), "--json", str(res / "claims.json"),
       "--skip-measure", str(tab / "skip_measure.csv"), "--leak-measure", str(tab / "leak_measure.csv"),
       "--regonly", str(tab / "regonly.csv"),
       *outputs(tab / "claims", "tex"), "--paragraphs", str(tab / "claims_text.tex"))


def outputs(stem: Path, *exts: str, prefix: str = "") -> list[str]:
    """The output options a rule passes: outputs(tables/ab, "csv", "tex") -> --csv tables/ab.csv --tex tables/ab.tex."""
    return [a for ext in exts for a in (f"--{prefix}{ext}", str(stem.with_suffix(f".{ext}")))]


EXPECTED = (["tables/runs.csv", "claims.json"]
            + [f"traces/{v}_s_seed{s}.csv" for v in VARIANTS[1:] for s in SEEDS]
            + [f"tables/{t}.{e}" for t in ("ab", "scaling", "skip", "leak") for e in ("csv", "tex")]
            + [f"tables/{t}.csv" for t in ("leak_measure", "skip_measure", "regonly")]
            + ["tables/claims.tex", "tables/claims_text.tex"]
            + [f"figures/{f}.{e}" for f in ("loss_curves", "scaling", "brainscan", "brainscan_dev", "skip_tradeoff")
               for e in ("pdf", "png")])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    t = build_tree(tmp)
    import os

    cwd = os.getcwd()
    os.chdir(tmp)  # the CLI writes relative paths only where told; keep anything stray in tmp
    try:
        _all(t)
    finally:
        os.chdir(cwd)
    return t


def test_every_output_exists(tree):
    missing = [p for p in EXPECTED if not (tree["res"] / p).exists() or (tree["res"] / p).stat().st_size == 0]
    assert not missing


def test_rerun_is_byte_identical(tree):
    res = tree["res"]
    before = {p: (res / p).read_bytes() for p in EXPECTED}
    _all(tree, rerun=True)
    changed = [p for p, b in before.items() if (res / p).read_bytes() != b]
    assert not changed, f"not byte-identical on rerun: {changed}"


def test_runs_table(tree):
    df = pd.read_csv(tree["res"] / "tables" / "runs.csv")
    assert len(df) == len(VARIANTS) * len(SIZES) * len(SEEDS)
    assert list(df.columns[:4]) == ["variant", "size", "seed", "run_dir"]
    assert {"val_loss", "val_bpb", "n_params_non_embedding", "final_ce"} <= set(df.columns)


def test_trace_contents(tree):
    df = pd.read_csv(tree["res"] / "traces" / "causal_s_seed1.csv", keep_default_na=False,
                     na_values={"surprisal": [""]})
    assert list(df.columns) == ["variant", "size", "seed", "sentence_id", "kind", "pos", "token_id", "token", "layer",
                                "g", "beta", "gamma", "surprisal", "probe", "branch_ratio", "log_freq"]
    assert (df["seed"] == 1).all()
    cfg = tree["cfg"]["analysis"]
    assert list(dict.fromkeys(df["kind"])) == ["trace", "control", "pair", "valid"]
    n = df.groupby("kind")["sentence_id"].nunique().to_dict()
    assert n["trace"] == 1 and n["valid"] == cfg["n_valid_sentences"] and n["pair"] == len(cfg["pair_sentences"])
    assert len(cfg["control_sentences"]) // 2 < n["control"] <= len(cfg["control_sentences"])
    assert df["layer"].nunique() == 3
    bos = df[df["pos"] == 0]
    assert bos["surprisal"].isna().all() and (bos["token"] == "<|endoftext|>").all()
    real = df[df["pos"] > 0]
    assert real["surprisal"].notna().all() and (real["surprisal"] > 0).all()
    # one probe per twist, control and pair, all at the twist's token index: "but" (twist, controls)
    # or the first token that differs from the twist (pairs: "and")
    probes = df[(df["probe"] == 1) & (df["layer"] == 0) & (df["kind"] != "valid")]
    assert probes["sentence_id"].nunique() == 1 + n["control"] + n["pair"]
    assert probes["pos"].nunique() == 1
    assert (probes.loc[probes["kind"] != "pair", "token"].str.strip() == "but").all()
    assert (probes.loc[probes["kind"] == "pair", "token"].str.strip() == "and").all()
    assert df["g"].between(0, 2).all() and df["gamma"].between(0, 1).all()
    assert (df["branch_ratio"] > 0).all() and (df["log_freq"] < 0).all()


def test_ab_and_leak_numbers(tree):
    ab = pd.read_csv(tree["res"] / "tables" / "ab.csv")
    row = ab[(ab["variant"] == "causal") & (ab["size"] == "s")].iloc[0]
    # causal − none per seed: -0.05 and -0.047 in loss; the table's dloss is their mean
    assert row["dloss_mean"] == pytest.approx(-0.0485, abs=1e-9)
    # p = 0.0197 (t = -32.3, 1 df), but Holm over the 14 contrasts of 2 sizes leaves it short of 0.05
    assert row["n_pairs"] == 2 and row["p"] == pytest.approx(0.01970, abs=1e-4)
    assert row["p_holm"] > 0.05 and row["verdict"] == "no significant difference"
    base = ab[(ab["variant"] == "none") & (ab["size"] == "s")].iloc[0]
    assert base["verdict"] == "baseline" and math.isnan(base["dppl_mean"])
    leak = pd.read_csv(tree["res"] / "tables" / "leak.csv").set_index(["variant", "size"])
    assert leak.loc[("asrun", "s"), "leak_mean"] == pytest.approx(-0.0505)  # the prefix-pool mismatch
    assert leak.loc[("asrun", "s"), "max_abs_dlogit_past"] > 0 and leak.loc[("causal", "s"), "max_abs_dlogit_past"] == 0
    assert math.isnan(leak.loc[("causal", "s"), "leak_mean"]) and leak.loc[("causal", "s"), "benefit_mean"] == 0
    tex = (tree["res"] / "tables" / "ab.tex").read_text()
    assert tex.startswith("\\begin{tabular}") and "\\toprule" in tex and "\\bottomrule" in tex


def test_claims_json(tree):
    doc = json.loads((tree["res"] / "claims.json").read_text())
    assert doc["profile"] == "smoke" and doc["size"] == "s" and doc["ncn_variant"] == "causal"
    assert doc["tokenizer_kind"] == "bpe"  # read from --data's meta.json
    from ncn.analysis.claims import CLAIMS

    assert [c["id"] for c in doc["claims"]] == list(range(1, len(CLAIMS) + 1)) and len(CLAIMS) >= 11
    for c in doc["claims"]:
        assert {"id", "key", "claim", "origin", "statistic", "null", "control", "value", "ci_low", "ci_high",
                "threshold", "verdict", "reason", "details"} <= set(c)
        assert c["verdict"] in ("supported", "not supported", "inconclusive", "not applicable")
    by = {c["id"]: c for c in doc["claims"]}
    assert by[1]["verdict"] == "supported"  # hand-made: causal better in both seeds
    assert by[2]["verdict"] == "not applicable"  # a bpe tokenizer: 5.5 is a GPT-2 perplexity
    assert "asrun" in by[1]["details"]["also"]
    gate = next(c for c in doc["claims"] if c["key"] == "gamma_gates")  # the skip grid holds max(gate_eps)
    assert "no skip measurement" not in gate["reason"], gate["reason"]
    tex = (tree["res"] / "tables" / "claims.tex").read_text()
    assert "\\begin{tabularx}{\\linewidth}" in tex and tex.count("\\\\") == 1 + len(CLAIMS)  # header + a row per claim; fits the line
    text = (tree["res"] / "tables" / "claims_text.tex").read_text()
    assert text.count("\\paragraph{") == len(CLAIMS) and "Null hypothesis" in text


def test_skip_table(tree):
    df = pd.read_csv(tree["res"] / "tables" / "skip.csv", dtype={"size": str})
    assert set(df["variant"]) == {"asrun", "causal", "tonic", "static"} and set(df["seed"]) == set(SEEDS)
    assert list(df.columns[:4]) == ["variant", "size", "seed", "eps"] and set(df["size"]) == {"s"}
    zero = df[df["eps"] == 0.0]
    assert (zero["delta_loss"] == 0.0).all() and (zero["skip_frac"] == 0.0).all() and (zero["delta_random"] == 0).all()
    # asrun starts at gamma ≈ 0.5, so eps = 0.97 skips nearly every FFN evaluation
    top = df[(df["variant"] == "asrun") & (df["eps"] == 0.97)].iloc[0]
    assert top["skip_frac"] > 0.9 and top["ffn_flops_saved"] == top["skip_frac"]
    m = pd.read_csv(tree["res"] / "tables" / "skip_measure.csv")
    assert len(m) == len(df) and (m["delta_skip"] == df["delta_loss"]).all() and (m["n_random"] == 2).all()
    assert (m["tolerance_nats"] == 0.01).all() and set(m["within_tolerance"]) <= {0, 1}


def test_leak_measure_table(tree):
    m = pd.read_csv(tree["res"] / "tables" / "leak_measure.csv")
    assert len(m) == 4 * len(SIZES) * len(SEEDS) and list(m["windows"].unique()) == [4]
    causal = m[m["variant"] != "asrun"]
    assert (causal["max_abs_dlogit_past"] == 0).all() and (causal["benefit"] == 0).all()
    assert (m.loc[m["variant"] == "asrun", "max_abs_dlogit_past"] > 0).all()
    asrun = m[(m["variant"] == "asrun") & (m["size"] == "s")].set_index("seed")
    assert asrun.loc[0, "prefix_pool_mismatch"] == pytest.approx(0.05)  # from eval.json's heldout_*


def test_regonly_control(tree):
    r = pd.read_csv(tree["res"] / "tables" / "regonly.csv")
    assert list(r["signal"].unique()) == ["g", "beta", "gamma", "all"] and (r["steps"] == 20).all()
    causal = r[r["variant"] == "causal"]
    # the tree's model.pt IS the init (torch.manual_seed(seed), Transformer): the control rebuilt it exactly
    assert (causal["var_trained"] == causal["var_init"]).all() and (causal["var_init"] > 0).all()
    assert (causal["reg_last"] < causal["reg_first"]).all()
    both = causal[causal["signal"] == "all"]
    assert (both["var_regonly"] < 0.5 * both["var_init"]).all()  # L_reg alone flattens the signals
    static = r[r["variant"] == "static"]
    assert (static[["var_init", "var_regonly", "var_trained"]] == 0).all().all()


def test_user_errors_are_one_line(tree, capsys):
    res = tree["res"]
    rc = ncn_main(["analyze", "trace", "--run", str(res / "runs" / "none" / "s" / "seed0"), "--config",
                   str(tree["cfg_path"]), "--data", str(tree["data"]), "--out", str(res / "x.csv")])
    assert rc == 2 and "variant 'none' has no signals" in capsys.readouterr().err
    assert not (res / "x.csv").exists()
    rc = ncn_main(["analyze", "ab", "--runs-table", str(res / "nope.csv"), "--config", str(tree["cfg_path"]),
                   *outputs(res / "tables" / "nope", "csv", "tex", "pdf", "png")])
    assert rc == 2 and "ncn analyze runs" in capsys.readouterr().err
    assert not list(res.glob("tables/nope.*"))
