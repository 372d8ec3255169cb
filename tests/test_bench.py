"""`ncn bench`: the tables' plumbing and the arithmetic behind them (never a speed assert)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from ncn import bench
from ncn.errors import NCNError

torch.set_num_threads(1)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- model --------------------------------------------------------------------------------------


def test_median_ci_order_statistics_and_coverage():
    """Known answers: n = 10 gives (x_(2), x_(9)) (coverage 97.9%), n = 6 the range, n = 5 nothing;
    on 2,000 seeded samples of 10 from N(3, 1) the interval holds the median 3 about 98% of the time."""
    import random

    xs = [float(i) for i in range(10, 0, -1)]
    assert bench.median_ci(xs) == (2.0, 9.0)
    assert bench.median_ci(xs[:6]) == (5.0, 10.0) and bench.median_ci(xs[:5]) is None
    rng = random.Random(0)
    hits = sum(lo <= 3.0 <= hi for lo, hi in (bench.median_ci([rng.gauss(3, 1) for _ in range(10)])
                                              for _ in range(2000)))
    assert 0.965 <= hits / 2000 <= 0.99


def test_speed_target_verdicts_both_ways_and_thin_data():
    """A planted slowdown must read "not met", a planted parity "met", one at the line "undecided", and
    four rounds give no interval."""
    import random

    rng = random.Random(1)

    def verdict(ratio, n=12, noise=0.01):
        base = [1.0 + rng.random() * 0.2 for _ in range(n)]  # the machine's state moves both alike
        times = {"none": base, "causal": [b * ratio * (1 + rng.gauss(0, noise)) for b in base]}
        return bench.target_verdict(*bench.paired_ratio(times, "causal", "none")[1:], 1.05)

    assert verdict(1.15) == "not met"
    assert verdict(1.00) == "met"
    assert verdict(1.05, noise=0.03) == "undecided"
    assert verdict(1.00, n=4) == "too few rounds for an interval"


def test_bench_model_writes_reference_and_variants(tmp_path, capsys):
    out = tmp_path / "model.csv"
    rc = bench.main(["model", "--out", str(out), "--shapes", "d16/L1/T8/H2/F32", "--steps", "1", "--warmup", "0",
                     "--threads", "1", "--batch", "1", "--eval-batch", "2", "--vocab", "32", "--gemm-n", "64",
                     "--variants", "causal", "static"])
    assert rc == 0
    rows = read_csv(out)
    assert [r["variant"] for r in rows] == ["reference", "none", "causal", "static"]
    assert set(bench.MODEL_COLUMNS) == set(rows[0])
    by = {r["variant"]: r for r in rows}
    assert float(by["reference"]["ratio_to_reference"]) == 1.0 and float(by["none"]["ratio_to_none"]) == 1.0
    assert by["reference"]["d_ff"] == by["none"]["d_ff"] != "32"  # the baseline's (iso-parameter) d_ff
    for r in rows:
        assert float(r["tokens_per_s"]) > 0 and float(r["eval_tokens_per_s"]) > 0 and float(r["mfu"]) > 0
    rounds = read_csv(tmp_path / "model_rounds.csv")  # every timed round: 4 models' steps, the GEMM, 4 forwards
    assert [(r["phase"], r["variant"]) for r in rounds] == [("train", v) for v in (*by, "gemm")] + [("eval", v) for v in by]
    assert {r["round"] for r in rounds} == {"1"} and all(float(r["seconds"]) > 0 for r in rounds)
    text = capsys.readouterr().out
    assert "× ref" in text and "causal / none" in text
    with pytest.raises(NCNError, match="steps"):
        bench.main(["model", "--steps", "0", "--out", str(out)])
    with pytest.raises(NCNError, match="bogus"):
        bench.main(["model", "--variants", "bogus", "--out", str(out)])


def _process_rows(ratios):
    """Per-process CSV rows (strings, as read back) of none and causal with these causal/none paired ratios."""
    rows = []
    for k, ratio in enumerate(ratios, 1):
        for variant, paired in (("none", 1.0), ("causal", ratio)):
            rows.append({c: "" for c in bench.MODEL_COLUMNS} | {
                "shape": "s", "variant": variant, "n_params": "100", "step_s_median": str(0.1 * paired),
                "step_s_min": str(0.09 * paired + 0.001 * k), "tokens_per_s": str(1000 / paired),
                "ratio_to_reference": "0.95", "ratio_to_none": str(paired), "mfu": "0.3", "eval_tokens_per_s": "2000",
                "eval_ratio_to_reference": "1.0", "eval_mfu": "0.2", "gemm_flops_per_s": "1e11",
                "peak_flops_per_s": "1e11", "ratio_to_none_paired": str(paired), "ratio_to_reference_paired": "0.95",
                "process": k})
    return rows


def test_processes_pool_verdicts_both_ways_and_thin_data():
    """Pooled over processes, the interval is over the processes' own paired ratios: 8 processes at
    1.01-1.03 read "met", at 1.08-1.10 "not met"; processes that each sit inside 1.05 but spread
    1.00-1.10 between them read "undecided"; 4 processes give no interval."""
    def verdict(ratios):
        row = [r for r in bench.pool_processes(_process_rows(ratios)) if r["variant"] == "causal"][0]
        assert row["processes"] == len(ratios) and row["ratio_to_none_paired"] == pytest.approx(sorted(ratios)[len(ratios) // 2], abs=0.011)
        return bench.target_verdict(row["ratio_to_none_lo"], row["ratio_to_none_hi"], 1.05)

    assert verdict([1.01, 1.02, 1.03, 1.02, 1.01, 1.03, 1.02, 1.02]) == "met"
    assert verdict([1.08, 1.09, 1.10, 1.09, 1.08, 1.10, 1.09, 1.09]) == "not met"
    assert verdict([1.00, 1.10, 1.02, 1.08, 1.04, 1.06, 1.01, 1.09]) == "undecided"
    assert verdict([1.01, 1.02, 1.03, 1.02]) == "too few rounds for an interval"
    pooled = bench.pool_processes(_process_rows([1.0, 1.2, 1.1]))
    causal = [r for r in pooled if r["variant"] == "causal"][0]
    assert causal["step_s_median"] == pytest.approx(0.11) and causal["step_s_min"] == pytest.approx(0.091)
    assert [r["variant"] for r in pooled] == ["none", "causal"] and set(causal) == set(bench.MODEL_COLUMNS)
    assert any("median of 3 processes' paired ratios" in line and "too few processes for an interval" in line
               for line in bench.model_targets(pooled))


def test_bench_model_processes_runs_fresh_processes(tmp_path, capsys):
    out = tmp_path / "model.csv"
    rc = bench.main(["model", "--out", str(out), "--shapes", "d16/L1/T8/H2/F32", "--steps", "1", "--warmup", "0",
                     "--threads", "1", "--batch", "1", "--eval-batch", "2", "--vocab", "32", "--gemm-n", "64",
                     "--variants", "causal", "--processes", "2"])
    assert rc == 0
    rows, per = read_csv(out), read_csv(tmp_path / "model_processes.csv")
    assert [r["variant"] for r in rows] == ["reference", "none", "causal"] and {r["processes"] for r in rows} == {"2"}
    assert [(r["process"], r["variant"]) for r in per] == [(k, v) for k in "12" for v in ("reference", "none", "causal")]
    assert {r["shape"] for r in per} == {"d16/L1/T8/H2/F32"} and {r["batch"] for r in per} == {"1"}
    rounds = read_csv(tmp_path / "model_rounds.csv")  # each process's rounds, tagged with the process
    assert [r["process"] for r in rounds] == ["1"] * 7 + ["2"] * 7 and set(rounds[0]) == {*bench.ROUND_COLUMNS, "process"}
    text = capsys.readouterr().out
    assert "over 2 processes" in text and "too few processes for an interval" in text
    with pytest.raises(NCNError, match="processes"):
        bench.main(["model", "--processes", "0", "--out", str(out)])
    if not torch.cuda.is_available():  # a process that fails stops the run, with what failed
        with pytest.raises(NCNError, match="process 1 of 2 exited with [1-9]"):
            bench.main(["model", "--out", str(tmp_path / "cuda.csv"), "--shapes", "d16/L1/T8/H2/F32",
                        "--device", "cuda", "--processes", "2"])
        assert not (tmp_path / "cuda.csv").exists()


def test_parse_shape_sizes_and_specs():
    sd = {"s": {"d_model": 64, "n_layer": 2, "n_head": 2, "d_ff": 256, "block_size": 128}}
    assert bench.parse_shape("s", sd) == bench.Shape("s", 64, 2, 2, 256, 128)
    assert bench.parse_shape("d256/L6/T256", sd) == bench.Shape("d256/L6/T256", 256, 6, 8, 1024, 256)
    assert bench.parse_shape("d64/L2/T32/H4/F100", sd) == bench.Shape("d64/L2/T32/H4/F100", 64, 2, 4, 100, 32)
    for bad in ("xl", "d64/L2", "d64/L2/T32/Q3", "dx/L2/T3"):
        with pytest.raises(NCNError, match="--shapes"):
            bench.parse_shape(bad, sd)


def test_flops_per_token_known_answer():
    ref = bench.reference_module().ReferenceGPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=8, d_ff=32)
    shape = bench.Shape("x", 8, 2, 2, 32, 16)
    n = sum(p.numel() for p in ref.parameters()) - 16 * 8  # less the position embedding
    assert bench.flops_per_token(ref, shape, train=True) == 6 * n + 12 * 2 * 8 * 16
    assert bench.flops_per_token(ref, shape, train=False) == 2 * n + 4 * 2 * 8 * 16


def test_reference_gpt_is_causal_and_tied():
    torch.manual_seed(0)
    ref = bench.reference_module().ReferenceGPT(vocab_size=40, block_size=12, n_layer=2, n_head=2, d_model=16, d_ff=64)
    idx = torch.randint(0, 40, (2, 12))
    logits, loss = ref(idx, torch.roll(idx, -1, 1))
    assert logits.shape == (2, 12, 40) and abs(loss.item() - torch.log(torch.tensor(40.0)).item()) < 0.2
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 40
    assert torch.equal(ref(changed)[0][:, :7], logits[:, :7])  # no position sees a later token
    assert not torch.equal(ref(changed)[0][:, 7:], logits[:, 7:])
    assert sum(p.numel() for p in ref.parameters()) == ref.num_params()  # one tensor for embedding and head


# ---- stages -------------------------------------------------------------------------------------


def write_tsv(folder, rel, seconds, end, cpu=1.0):
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                    f"{seconds}\t0:00:00\t100.0\t200.0\t0\t0\t0\t0\t0\t{cpu}\n")
    os.utime(path, (end, end))


def test_union_seconds():
    assert bench.union_seconds([]) == 0.0
    assert bench.union_seconds([(0, 10), (5, 15), (20, 25)]) == 20.0
    assert bench.union_seconds([(0, 10), (2, 3)]) == 10.0


def test_stages_planted_overhead(tmp_path):
    """data 0-10, two parallel train jobs 10-30 and 15-35, paper 40-45, run started at -5:
    wall 50, jobs busy 40 of it, so 10 s of Snakemake overhead (5 before the first job, 5 in a gap)."""
    t0 = 1_700_000_000.0
    b = tmp_path / "benchmarks"
    write_tsv(b, "data/fetch.tsv", 10, t0 + 10)
    write_tsv(b, "train/causal/s/seed0.tsv", 20, t0 + 30)
    write_tsv(b, "train/none/s/seed0.tsv", 20, t0 + 35)
    write_tsv(b, "paper/latexmk.tsv", 5, t0 + 45)
    write_tsv(b, "timing/stages.tsv", 1, t0 + 99)  # the timing rule's own file: ignored
    rows = {r["stage"]: r for r in bench.stage_rows(bench.read_benchmarks(b), run_start=t0 - 5)}
    assert rows["train"]["jobs"] == 2 and rows["train"]["job_s"] == 40 and rows["train"]["busy_s"] == 25
    assert rows["all_jobs"]["busy_s"] == 40 and rows["wall"]["busy_s"] == 50
    assert rows["snakemake_overhead"]["busy_s"] == pytest.approx(10)
    assert "evaluate" not in rows and "other" not in rows


def test_stages_no_overhead_and_old_jobs(tmp_path):
    """Back-to-back jobs leave no overhead; a job that ended before the run started (an earlier
    run's output) counts in its stage but not in this run's wall."""
    t0 = 1_700_000_000.0
    b = tmp_path / "benchmarks"
    write_tsv(b, "data/fetch.tsv", 10, t0 - 1000)
    write_tsv(b, "evaluate/causal/s/seed0.tsv", 10, t0 + 10)
    write_tsv(b, "analysis/ab.tsv", 10, t0 + 20)
    rows = {r["stage"]: r for r in bench.stage_rows(bench.read_benchmarks(b), run_start=t0)}
    assert rows["data"]["jobs"] == 1 and rows["all_jobs"]["jobs"] == 2
    assert rows["wall"]["busy_s"] == pytest.approx(20) and rows["snakemake_overhead"]["busy_s"] == pytest.approx(0)


def test_stages_cli_and_snakemake_log(tmp_path, capsys):
    b = tmp_path / "benchmarks"
    write_tsv(b, "train/x.tsv", 3, 1_700_000_100.0)
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "2023-11-14T221000.000000.snakemake.log").write_text("")
    (logs / "not-a-log.txt").write_text("")
    start = bench.snakemake_run_start(logs)
    assert start is not None and abs(start - 1699999800.0) < 24 * 3600  # local time: within a day
    out = tmp_path / "timing" / "stages.csv"
    assert bench.main(["stages", "--benchmarks", str(b), "--snakemake-log", str(tmp_path / "none"),
                       "--out", str(out)]) == 0
    assert [r["stage"] for r in read_csv(out)] == ["train", "all_jobs", "snakemake_overhead", "wall"]
    with pytest.raises(NCNError, match="no such folder"):
        bench.main(["stages", "--benchmarks", str(tmp_path / "missing"), "--out", str(out)])
    (b / "train" / "bad.tsv").write_text("hello\n1\n")
    with pytest.raises(NCNError, match="not a Snakemake benchmark"):
        bench.main(["stages", "--benchmarks", str(b), "--out", str(out)])


def write_ledger(path, rows):
    from ncn.trackserver import LEDGER_COLUMNS

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["\t".join(LEDGER_COLUMNS), *("\t".join(map(str, r)) for r in rows)]) + "\n")


def test_stages_add_the_cpu_of_the_server_forks_that_ran_their_jobs(tmp_path, capsys):
    """A forked job's benchmark file has only its waiting process: the ledger's forks that ended
    inside a job of their stage add their CPU (job and MLflow work) and peak RSS to it; a fork of a
    job whose file is gone (run again since), one of another stage, a repeated header and a cut
    row do not; without a ledger the columns stay empty."""
    t0 = 1_700_000_000.0
    b = tmp_path / "benchmarks"
    write_tsv(b, "train/causal/s/seed0.tsv", 20, t0 + 30, cpu=0.2)
    write_tsv(b, "evaluate/causal/s/seed0.tsv", 5, t0 + 40, cpu=0.1)
    write_tsv(b, "paper/latexmk.tsv", 5, t0 + 50, cpu=4.0)
    ledger = tmp_path / "logs" / "forks.tsv"
    write_ledger(ledger, [
        (t0 - 100, 9, 8, "job", "train", 50.0, 900.0, 0, "train --old"),  # an earlier run of the job
        (t0 + 29, 11, 10, "job", "train", 18.5, 700.0, 0, "train --config c"),
        (t0 + 29.5, 12, 10, "tracker", "tracker", 1.5, 650.0, 0, ""),
        (t0 + 39, 14, 13, "job", "evaluate", 4.0, 600.0, "signal 9", "evaluate --run r"),
        (t0 + 39, 15, 13, "log_eval", "log_eval", 0.5, 500.0, 0, ""),
        (t0 + 48, 17, 16, "job", "analyze", 7.0, 800.0, 0, "analyze ab"),  # inside the paper job: not its stage
        "end_unix\tpid".split("\t"),
        (t0 + 45, 16),
    ])
    forks = bench.read_forks(ledger)
    assert [f["stage"] for f in forks] == ["train", "train", "train", "evaluate", "evaluate", "analysis"]
    rows = {r["stage"]: r for r in bench.stage_rows(bench.read_benchmarks(b), t0, forks)}
    assert rows["train"]["cpu_s"] == 0.2 and rows["train"]["fork_cpu_s"] == 20.0 and rows["train"]["fork_max_rss_mb"] == 700.0
    assert rows["evaluate"]["fork_cpu_s"] == 4.5 and rows["paper"]["fork_cpu_s"] == ""
    assert rows["all_jobs"]["fork_cpu_s"] == 24.5 and rows["all_jobs"]["cpu_s"] == pytest.approx(4.3)
    assert bench.read_forks(tmp_path / "missing.tsv") == [] and bench.read_forks(None) == []
    out = tmp_path / "stages.csv"
    assert bench.main(["stages", "--benchmarks", str(b), "--forks", str(ledger), "--snakemake-log", str(tmp_path / "none"),
                       "--out", str(out)]) == 0
    assert float({r["stage"]: r for r in read_csv(out)}["train"]["fork_cpu_s"]) == 20.0
    assert bench.main(["stages", "--benchmarks", str(b), "--out", str(out)]) == 0
    assert {r["fork_cpu_s"] for r in read_csv(out)} == {""}


# ---- startup ------------------------------------------------------------------------------------


def test_import_costs_names_the_packages():
    wall, top = bench.import_costs("json", top=1000)  # every package: json's few ms are not in a top 8 under load
    assert wall > 0 and "json" in dict(top) and list(dict(top).values()) == sorted(dict(top).values(), reverse=True)
    assert len(bench.import_costs("json", top=2)[1]) == 2


@pytest.mark.parametrize("optimizer", ["torch.optim.SGD(m.parameters(), 0.1)", "ncn.optim.AdamW(m.parameters())"])
def test_probe_stamps_steps_and_exit(tmp_path, optimizer):
    """The probe's hooks see a forward and the steps of torch's optimizers and of ncn.optim.AdamW (the
    CPU jobs' optimizer), and print at exit."""
    code = bench.PROBE.replace("from ncn.cli import run\nrun()  # what the `ncn` script runs",
                               f"import ncn.optim; m = torch.nn.Linear(2, 2); o = {optimizer}\n"
                               "for _ in range(3): m(torch.ones(1, 2)).sum().backward(); o.step()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stderr.splitlines() if x.startswith("NCN_BENCH_TIMES ")][-1]
    import json

    t = json.loads(line.split(" ", 1)[1])
    assert t["interpreter"][0] <= t["torch_imported"][0] <= t["first_forward"][0] <= t["first_step_done"][0]
    assert t["first_step_done"][0] <= t["last_step_done"][0] <= t["atexit"][0]


# ---- the GPU scripts' pieces, on the CPU ----------------------------------------------------------


def test_gpu_check_fp32_loss_passes_ours_and_fails_a_bf16_log_prob_loss(monkeypatch):
    """gpu_checks' guard of the fp32 loss under autocast: ok for ncn.model.cross_entropy, FAIL for a
    loss whose log-probs are rounded to bf16 (what F.cross_entropy on bf16 logits does under CUDA autocast)."""
    import torch.nn.functional as F

    import ncn.model as M

    gc = bench.bench_script("gpu_checks")
    a = gc.parser().parse_args(["train", "--device", "cpu", "--seq-len", "32", "--vocab", "512"])
    dev = torch.device("cpu")
    name, ok, _ = gc.check_autocast_ce(a, dev)
    assert ok, name
    monkeypatch.setattr(M, "cross_entropy", lambda z, t: F.nll_loss(
        F.log_softmax(z.float(), -1).to(torch.bfloat16).float(), t, ignore_index=-1))
    name, ok, _ = gc.check_autocast_ce(a, dev)
    assert not ok, name


def test_gpu_profile_plumbing_on_cpu(tmp_path, monkeypatch, capsys):
    gp = bench.bench_script("gpu_profile")
    monkeypatch.setattr(sys, "argv", ["gpu_profile.py", "--device", "cpu", "--out", str(tmp_path), "--case",
                                      "d16/L1/T8/H2/F32", "2", "32", "--rounds", "1", "--profile-steps", "1"])
    assert gp.main() == 0
    rows = read_csv(tmp_path / "gpu_profile.csv")
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("reference", "eager"), ("none", "eager"), ("causal", "eager"),
        ("none", "eager, F.cross_entropy on autocast logits")]
    assert float(rows[1]["ratio_to_none"]) == 1.0 and all(float(r["step_ms"]) > 0 for r in rows)
    assert (tmp_path / "profile_d16L1T8H2F32_causal.txt").read_text().count("aten::") > 3
    assert "× none" in capsys.readouterr().out


def test_mutate_equivalents_match_function_and_both_lines():
    """bench/mutants_equivalent.yaml: a survivor counts as equivalent only if its function and both
    changed lines match an entry (renumbering does not matter; any other change of the line does)."""
    import yaml

    mu = bench.bench_script("mutate")
    entries = yaml.safe_load(mu.EQUIVALENT.read_text())
    assert entries and all(set(e) == {"function", "before", "after", "why"} and e["why"] for e in entries)
    diff = ("--- src/ncn/train.py\n+++ src/ncn/train.py\n@@ -1,2 +1,2 @@\n def _resume(run, state):\n"
            '-            ckpt = torch.load(box[0], map_location="cpu", weights_only=True)\n'
            '+            ckpt = torch.load(box[0], map_location="cpu", weights_only=None)\n')
    assert mu.is_equivalent("ncn.train.x__resume__mutmut_23", diff, entries)
    assert mu.is_equivalent("ncn.train.x__resume__mutmut_99", diff, entries)  # renumbered: same mutant
    assert not mu.is_equivalent("ncn.train.x__other__mutmut_23", diff, entries)  # another function
    assert not mu.is_equivalent("ncn.train.x__resume__mutmut_23", diff.replace("=None", "=False"), entries)
    for e in entries:  # every entry names a line that still exists in its module
        module = e["function"].rsplit(".", 1)[0]
        src = (bench.ROOT / "src" / (module.replace(".", "/") + ".py")).read_text()
        assert e["before"] in src, e
