"""`ncn train`: loss falls, determinism, resume after SIGKILL, corrupt checkpoints, NaN, data order.

Every test uses test-made data (a tiny BPE tokenizer trained on a synthetic story text) and a
2-layer, 32-wide model on one thread, so a 20-step run takes about a second.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ncn.errors import NCNError
from ncn.fileio import sha256_file

ROOT = Path(__file__).resolve().parents[1]

# ---- helpers shared by the train / evaluate / tracking / ddp tests ----------------------------

_NAMES = ["Tim", "Sue", "Max", "Lily", "Ben"]
_THINGS = ["a red ball", "a big dog", "the sun", "a small cat", "an apple"]
_VERBS = ["saw", "liked", "found", "wanted", "had"]


def story_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        who = rng.choice(_NAMES)
        lines = [f"{who} {rng.choice(_VERBS)} {rng.choice(_THINGS)}." for _ in range(rng.randint(2, 4))]
        stories.append("Once upon a time, " + " ".join(lines) + f" {who} was happy.")
    return stories


def make_data(root: Path, n_train: int = 300, n_valid: int = 40, vocab: int = 300, n_heldout: int = 20) -> Path:
    """results/data-like folder: tokenizer.json, train.bin, heldout.bin, valid.bin, meta.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root.mkdir(parents=True, exist_ok=True)
    train, valid = story_text(n_train, 1), story_text(n_valid, 2)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(train, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(root / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    meta = {"dtype": "uint16", "vocab_size": tok.get_vocab_size(), "eot_id": eot, "tokenizer_kind": "bpe",
            "tokenizer_sha256": sha256_file(root / "tokenizer.json"), "val_split": "official"}
    for split, stories in (("train", train), ("heldout", story_text(n_heldout, 3)), ("valid", valid)):
        ids = []
        for s in stories:
            ids += tok.encode(s).ids + [eot]
        np.asarray(ids, dtype=np.uint16).tofile(root / f"{split}.bin")
        nbytes = sum(len((s + "\n").encode("utf-8")) for s in stories)
        meta[split] = {"file": f"{split}.bin", "tokens": len(ids), "bytes": nbytes, "stories": len(stories)}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def tiny_config(tmp: Path, name: str = "c.yaml", **over) -> Path:
    """A config for 20 steps of 4 x 16 tokens; `over` = {"train": {...}, ...} deep-merged."""
    from ncn.config import deep_update

    cfg = {
        "profile": "testprof",
        "variants": ["none", "causal"],
        "sizes": ["xs"],
        "seeds": [0],
        "size_defs": {"xs": {"d_model": 32, "n_layer": 2, "n_head": 2, "d_ff": 64, "block_size": 16}},
        "model": {"dropout": 0.1, "ncn_hidden": 16},  # dropout: resume must restore the RNG
        "train": {"tokens": 20 * 4 * 16, "micro_batch": 4, "grad_accum": 1, "lr": 3e-3, "min_lr": 3e-4,
                  "warmup_steps": 2, "ckpt_every": 5, "keep_checkpoints": 2, "log_every": 2,
                  "signal_every": 4, "decay_all": True, "device": "cpu"},
        "eval": {"batch_size": 8},
        "generate": {"max_new_tokens": 8},
        "mlflow": {"enabled": False, "tracking_uri": f"sqlite:///{tmp}/mlflow.db"},
    }
    cfg = deep_update(cfg, over)
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_args(config: Path, out: Path, data: Path, variant: str = "causal", seed: int = 0) -> list[str]:
    return ["--config", str(config), "--variant", variant, "--size", "xs", "--seed", str(seed),
            "--out", str(out), "--data", str(data), "--threads", "1"]


def run_train(*args, **kw) -> dict:
    from ncn.train import main

    assert main(train_args(*args, **kw)) == 0
    return json.loads((Path(args[1]) / "metrics.json").read_text())


def ncn_subprocess(args: list[str], env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "ncn.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def comparable(metrics: dict) -> dict:
    from ncn.train import TIMING_KEYS

    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def read_log(run: Path) -> list[dict]:
    with open(run / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """One uninterrupted causal run: (config, run dir, metrics)."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = tiny_config(tmp)
    run = tmp / "run"
    return cfg, run, run_train(cfg, run, data)


# ---- tests ---------------------------------------------------------------------------------------


def test_outputs_and_loss_falls(reference):
    cfg, run, m = reference
    for name in ("model.pt", "metrics.json", "train_log.csv", "config.json"):
        assert (run / name).exists(), name
    assert m["finished"] and m["steps"] == 20 and m["tokens"] == 20 * 64
    assert m["n_params"] > m["n_params_non_embedding"] > 0
    for key in ("final_loss", "final_ce", "final_reg", "reg_init", "reg_final", "wall_time_s", "tokens_per_s",
                "batch_order_sha256", "device", "epochs", "profile"):
        assert key in m, key
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1] + list(range(2, 21, 2))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 1.0, "loss did not fall"
    # signals every signal_every steps and at step 1, empty otherwise
    assert rows[0]["g_mean_l0"] and rows[0]["gamma_std_l1"]
    by_step = {int(r["step"]): r for r in rows}
    assert by_step[4]["beta_mean_l1"] and not by_step[2]["beta_mean_l1"]
    # final_* = means over the last log_every (2) steps = the last row's values
    assert m["final_loss"] == pytest.approx(float(rows[-1]["loss"]), rel=1e-12)
    # reg_init is the first step's regulariser (the step-1 row holds that step alone), reg_final the last rows'
    assert m["reg_init"] == pytest.approx(float(rows[0]["reg"]), rel=1e-9) and m["reg_init"] != m["reg_final"]
    ckpts = sorted(p.name for p in (run / "ckpt").glob("step_*.pt"))
    assert ckpts == ["step_000015.pt", "step_000020.pt"]  # keep_checkpoints: 2


def test_same_seed_identical_metrics(reference, data, tmp_path):
    cfg, run, m = reference
    m2 = run_train(cfg, tmp_path / "again", data)
    assert comparable(m2) == comparable(m)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert strip(read_log(tmp_path / "again")) == strip(read_log(run))


def test_sigkill_then_resume_is_bitwise_identical(reference, data, tmp_path):
    cfg, _, ref = reference
    run = tmp_path / "run"
    p = ncn_subprocess(["train", *train_args(cfg, run, data)], {"NCN_FAULT_KILL_AT_STEP": "12"})
    assert p.returncode == -9, p.stderr[-2000:]
    for name in ("metrics.json", "model.pt", "train_log.csv"):  # no output that looks finished
        assert not (run / name).exists(), name
    assert (run / "ckpt" / "step_000010.pt").exists() and (run / "train_log.partial.csv").exists()
    p = ncn_subprocess(["train", *train_args(cfg, run, data)])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming from" in p.stderr and "step 10 of 20" in p.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert comparable(m) == comparable(ref)
    assert m["resumed_at_steps"] == [10]
    assert not (run / "train_log.partial.csv").exists()


def test_corrupt_latest_checkpoint_falls_back(reference, data, tmp_path, monkeypatch, caplog):
    cfg, _, ref = reference
    run = tmp_path / "run"
    p = ncn_subprocess(["train", *train_args(cfg, run, data)], {"NCN_FAULT_KILL_AT_STEP": "11"})
    assert p.returncode == -9
    latest = run / "ckpt" / "step_000010.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    with caplog.at_level("INFO", logger="ncn"):
        m = run_train(cfg, run, data)
    text = caplog.text
    assert "step_000010.pt is unusable" in text and "sha256 mismatch" in text
    assert "step_000005.pt (step 5 of 20)" in text
    assert comparable(m) == comparable(ref)


def test_finished_run_is_left_alone(reference, data, capsys):
    cfg, run, m = reference
    before = (run / "metrics.json").read_bytes(), (run / "model.pt").stat().st_mtime_ns
    assert run_train(cfg, run, data) == m
    assert "already finished" in capsys.readouterr().err
    assert before == ((run / "metrics.json").read_bytes(), (run / "model.pt").stat().st_mtime_ns)
    with pytest.raises(NCNError, match="holds a finished run"):
        run_train(cfg, run, data, seed=1)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(data, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    run = tmp_path / "run"
    monkeypatch.setenv("NCN_FAULT_NAN_AT_STEP", "7")
    with pytest.raises(NCNError, match=r"loss is nan at step 7 .*step_000005\.pt"):
        run_train(cfg, run, data)
    assert not (run / "metrics.json").exists() and not (run / "model.pt").exists()
    assert [p.name for p in (run / "ckpt").glob("*.pt")] == ["step_000005.pt"]


def test_huge_lr_diverges_to_clear_error(data, tmp_path):
    cfg = tiny_config(tmp_path, train={"lr": 1e30, "min_lr": 1e29, "warmup_steps": 0, "grad_clip": 0.0})
    with pytest.raises(NCNError, match=r"loss is (nan|inf) at step \d+"):
        run_train(cfg, tmp_path / "run", data)


def test_baseline_and_ncn_share_the_batch_order(reference, data, tmp_path):
    cfg, _, causal = reference
    base = run_train(cfg, tmp_path / "none", data, variant="none")
    assert base["batch_order_sha256"] == causal["batch_order_sha256"]
    assert base["n_params"] == pytest.approx(causal["n_params"], rel=0.005)  # iso-parameter
    assert "g_mean_l0" not in read_log(tmp_path / "none")[0]
    other = tiny_config(tmp_path, "c1.yaml")
    seed1 = run_train(other, tmp_path / "none1", data, variant="none", seed=1)
    assert seed1["batch_order_sha256"] != base["batch_order_sha256"]


def test_window_order_epochs():
    from ncn.batches import WindowOrder

    o = WindowOrder(seed=3, n_win=7)
    first, second = o.indices(0, 7), o.indices(7, 7)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(7))
    assert first.tolist() != second.tolist()  # a fresh permutation for epoch 2
    assert o.indices(5, 4).tolist() == first[5:].tolist() + second[:2].tolist()  # across the boundary
    g = torch.Generator().manual_seed(3)
    assert first.tolist() == torch.randperm(7, generator=g).tolist()
    assert WindowOrder(3, 7).indices(0, 10).tolist() == o.indices(0, 10).tolist()  # a function of (seed, n, pos)


def train_config(**over):
    """A TrainConfig of the schema's defaults (tokens set), `over` replaced."""
    from ncn.config import train_settings, validate

    xs = {"d_model": 32, "n_layer": 2, "n_head": 2, "d_ff": 64, "block_size": 16}
    cfg = validate({"profile": "p", "variants": ["none"], "sizes": ["xs"], "seeds": [0], "size_defs": {"xs": xs},
                    "train": {"tokens": 1280}})
    return dataclasses.replace(train_settings(cfg, "xs"), **over)


def test_lr_schedule():
    from ncn.train import lr_at

    s = train_config(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert lr_at(0, s, 20) == pytest.approx(0.2)
    assert lr_at(3, s, 20) == pytest.approx(0.8)
    assert lr_at(4, s, 20) == pytest.approx(1.0)
    assert lr_at(12, s, 20) == pytest.approx(0.55)
    assert 0.1 < lr_at(19, s, 20) < 0.12
    o = dataclasses.replace(s, lr_schedule="original")  # from 0, and min_lr at the last iteration
    assert [lr_at(i, o, 20) for i in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lr_at(19, o, 20) == pytest.approx(0.1) and lr_at(18, o, 20) > 0.1
    assert lr_at(4 + 15 / 2, o, 20) == pytest.approx(0.55)  # the cosine's midpoint over iterations 4..19
    assert lr_at(0, dataclasses.replace(o, warmup_steps=0), 1) == 1.0  # a one-step run: the peak


def test_bad_variant_size_and_data_are_named(data, tmp_path):
    from ncn.train import main

    cfg = tiny_config(tmp_path)
    with pytest.raises(NCNError, match="unknown variant 'bogus'"):
        main(train_args(cfg, tmp_path / "r", data, variant="bogus"))
    args = train_args(cfg, tmp_path / "r", data)
    args[args.index("xs")] = "huge"
    with pytest.raises(NCNError, match="unknown size 'huge'"):
        main(args)
    with pytest.raises(NCNError, match="meta.json"):
        main(train_args(cfg, tmp_path / "r", tmp_path / "nodata"))


def test_train_config_names_the_bad_field():
    from ncn.config import train_settings

    with pytest.raises(NCNError, match=r"TrainConfig\.micro_batch must be a positive integer, got 0"):
        train_config(micro_batch=0)
    with pytest.raises(NCNError, match=r"TrainConfig\.beta2 must be in \[0, 1\], got 1.5"):
        train_config(beta2=1.5)
    with pytest.raises(NCNError, match="set train.tokens or train.epochs"):
        train_config(tokens=None, epochs=None)
    with pytest.raises(NCNError, match=r"unknown keys \['bogus'\]"):
        train_settings({"train": {"bogus": 1}, "size_defs": {"xs": {}}}, "xs")
    # per-size overrides
    sizes = {"xs": {"micro_batch": 3, "lr": 0.5}}
    tc = train_settings({"train": dataclasses.asdict(train_config()), "size_defs": sizes}, "xs")
    assert (tc.micro_batch, tc.lr, tc.grad_accum) == (3, 0.5, train_config().grad_accum)


def test_train_state_round_trips_through_its_state_dict():
    """state_dict() -> load_state_dict() restores every field a checkpoint carries, RNG included."""
    from ncn.model import ModelConfig, Transformer
    from ncn.train import TrainState, make_optimizer

    def fresh(seed):
        torch.manual_seed(seed)
        m = Transformer(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, d_model=16, d_ff=32,
                                    ncn="causal", ncn_hidden=8))
        return TrainState(m, make_optimizer(m, train_config(), fused=False), stamp={"seed": seed},
                          windows_per_step=6)

    a = fresh(0)
    a.model(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long)).loss.backward()
    a.optimizer.step()
    a.step, a.reg_init, a.resumed_at_steps = 7, 0.25, [3]
    a.add_losses([3.0, 2.9, 0.1], keep=2)
    a.add_losses([2.0, 1.9, 0.1], keep=2)
    a.add_losses([1.0, 0.9, 0.1], keep=2)
    a.take_row(7, 99, 0.1, 1.0, {})
    a.add_losses([0.5, 0.4, 0.1], keep=2)
    sd = a.state_dict()
    assert sd["cursor"] == 7 * 6 and sd["seed"] == 0
    after_save = torch.rand(3)  # the RNG stream a resumed run must continue
    b = fresh(1)
    b.load_state_dict(sd)
    assert torch.equal(torch.rand(3), after_save)
    sd_b = b.state_dict()
    for key in ("step", "cursor", "log_rows", "recent", "since_row", "reg_init", "resumed_at_steps"):
        assert sd_b[key] == sd[key], key
    assert sd["recent"] == [[1.0, 0.9, 0.1], [0.5, 0.4, 0.1]] and sd["since_row"] == [[0.5, 0.4, 0.1]]
    assert sd["log_rows"][0]["loss"] == pytest.approx(2.0)  # the mean of the three steps since the start
    assert all(torch.equal(v, sd["model"][k]) for k, v in sd_b["model"].items())
    assert sd_b["optimizer"]["state"][0]["exp_avg"].equal(sd["optimizer"]["state"][0]["exp_avg"])
    assert sd_b["seed"] == 1  # the stamp stays the new run's: it is checked before a checkpoint is loaded


@pytest.mark.source
def test_no_function_in_the_trainer_is_longer_than_60_lines():
    import ast

    for name in ("train.py", "checkpoint.py", "batches.py", "config.py"):
        tree = ast.parse((ROOT / "src" / "ncn" / name).read_text())
        long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= 60]
        assert not long, (name, long)


def test_rng_state_round_trips_every_generator(monkeypatch):
    """rng_state/set_rng_state restore torch, numpy and Python's generators, and the CUDA ones
    when the same number of GPUs is there (faked here: the CPU machine has none)."""
    import random

    import numpy as np

    from ncn import checkpoint

    saved = checkpoint.rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu_states = [torch.tensor([7], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: gpu_states)
    assert checkpoint.rng_state()["cuda"] is gpu_states  # saved with the others when a GPU is there
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(states))
    gpu = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    checkpoint.set_rng_state({**saved, "cuda": gpu})
    assert len(restored) == 1 and [int(s) for s in restored[0]] == [1, 2]
    checkpoint.set_rng_state({**saved, "cuda": gpu[:1]})  # another GPU count: the CUDA states stay as they are
    assert len(restored) == 1


def test_checkpoints_of_other_settings_are_moved_aside_and_training_starts_over(reference, data, tmp_path):
    """A run folder whose checkpoints were made with another config (here another lr): they go to
    ckpt.stale (replacing an older ckpt.stale) and the run trains from step 0, like a fresh one."""
    cfg, ref_run, _ = reference
    other = tiny_config(tmp_path, "other.yaml", train={"lr": 1e-3})
    fresh = run_train(other, tmp_path / "fresh", data)
    run = tmp_path / "run"
    for attempt in range(2):  # the second time an older ckpt.stale is there
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(ref_run / "ckpt", run / "ckpt")
        if attempt:
            (run / "ckpt.stale").mkdir()
            (run / "ckpt.stale" / "old.txt").write_text("older")
        m = run_train(other, run, data)
        assert m["resumed_at_steps"] == [] and comparable(m) == comparable(fresh)
        assert sorted(p.name for p in (run / "ckpt.stale").glob("step_*.pt")) == ["step_000015.pt", "step_000020.pt"]
        assert not (run / "ckpt.stale" / "old.txt").exists()


def test_a_checkpoint_that_verifies_but_does_not_load_is_skipped_with_the_reason(tmp_path, caplog):
    """Bytes that match their .sha256 yet are no torch file: load_latest logs why and falls back."""
    from ncn import checkpoint
    from ncn.fileio import sha256_bytes

    ckpt = tmp_path / "ckpt"
    checkpoint.save_checkpoint(ckpt, 5, {"step": 5}, keep=3)
    bad = checkpoint.ckpt_path(ckpt, 10)
    bad.write_bytes(b"not a torch file")
    bad.with_name(bad.name + ".sha256").write_text(sha256_bytes(b"not a torch file") + "\n")
    with caplog.at_level("WARNING", logger="ncn"):
        payload, path = checkpoint.load_latest(ckpt)
    assert payload == {"step": 5} and path == checkpoint.ckpt_path(ckpt, 5)
    assert f"checkpoint {bad} is unusable (failed to load: " in caplog.text
