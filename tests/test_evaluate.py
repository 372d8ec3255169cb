"""`ncn evaluate` and `ncn generate`: bits-per-byte by hand, whole-stream coverage, refusals."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncn.errors import NCNError
from test_train import make_data, run_train, tiny_config


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/V: CE is exactly ln V per token."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.seen = []

    def forward(self, x, **kw):
        self.seen.append(tuple(x.shape))
        return SimpleNamespace(logits=torch.zeros(*x.shape, self.vocab))


def test_bits_per_byte_by_hand():
    from ncn.evaluate import bits_per_byte, stream_ce

    V, T = 16, 4
    tokens = np.arange(11, dtype=np.uint16) % V  # 10 predictable tokens: windows 4 + 4 + tail 2
    model = Uniform(V)
    ce, n = stream_ce(model, tokens, T, batch_size=8, device=torch.device("cpu"))
    assert n == 10 and model.seen == [(2, 4), (1, 2)]
    assert ce == pytest.approx(10 * math.log(16))
    # 10 tokens x log2(16) = 40 bits over 20 bytes of text = 2 bits per byte
    bpb, nbytes = bits_per_byte(ce, n, 10, total_bytes=20)
    assert (bpb, nbytes) == (pytest.approx(2.0), 20)
    # capped at 6 tokens: 24 bits over 6/10 of the 20 bytes
    ce6, n6 = stream_ce(Uniform(V), tokens, T, 8, torch.device("cpu"), max_tokens=6)
    assert n6 == 6
    assert bits_per_byte(ce6, n6, 10, 20) == (pytest.approx(24 / 12), pytest.approx(12))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ev")
    data = make_data(tmp / "data")
    cfg = tiny_config(tmp, train={"tokens": 8 * 64})
    runs = {}
    for v in ("causal", "asrun"):
        runs[v] = tmp / v
        run_train(cfg, runs[v], data, variant=v)
    return SimpleNamespace(tmp=tmp, data=data, cfg=cfg, runs=runs)


def test_evaluate_whole_stream_matches_manual(trained):
    from ncn.evaluate import main
    from ncn.model import load_model

    run = trained.runs["causal"]
    assert main(["--run", str(run)]) == 0  # data folder found through RUN/config.json
    ev = json.loads((run / "eval.json").read_text())
    for k in ("variant", "size", "seed", "val_loss", "val_ppl", "val_bpb", "val_tokens", "val_bytes", "n_params",
              "n_params_non_embedding", "val_loss_prefix_pool", "max_tokens", "heldout_loss", "heldout_ppl",
              "heldout_bpb", "heldout_tokens", "heldout_bytes", "heldout_loss_prefix_pool"):
        assert k in ev, k
    meta = json.loads((trained.data / "meta.json").read_text())
    model, _ = load_model(run / "model.pt")
    T = model.cfg.block_size
    for split, p in (("valid", "val"), ("heldout", "heldout")):  # each set scored on its own stream
        toks = np.fromfile(trained.data / f"{split}.bin", dtype=np.uint16).astype(np.int64)
        assert ev[f"{p}_tokens"] == len(toks) - 1 and ev[f"{p}_bytes"] == meta[split]["bytes"]
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(toks) - 1, T):  # one window at a time, the tail included
                x = torch.tensor(toks[i : i + T + 1])
                x, y = x[:-1][None], x[1:][None]
                total += F.cross_entropy(model(x).logits[0], y[0], reduction="sum").item()
        assert ev[f"{p}_loss"] == pytest.approx(total / (len(toks) - 1), rel=1e-5)
        assert ev[f"{p}_ppl"] == pytest.approx(math.exp(ev[f"{p}_loss"]))
        assert ev[f"{p}_bpb"] == pytest.approx(total / math.log(2) / meta[split]["bytes"], rel=1e-5)
        assert ev[f"{p}_ce_sum_nats"] == pytest.approx(total, rel=1e-5)  # the summed CE, by hand
        assert ev[f"{p}_loss_prefix_pool"] is None
    assert ev["heldout_tokens"] != ev["val_tokens"] and ev["heldout_loss"] != ev["val_loss"]


def test_asrun_reports_prefix_pool_loss(trained):
    from ncn.evaluate import evaluate

    ev = evaluate(trained.runs["asrun"])
    for p in ("val", "heldout"):
        assert ev[f"{p}_loss_prefix_pool"] is not None and math.isfinite(ev[f"{p}_loss_prefix_pool"])
        assert ev[f"{p}_loss_prefix_pool"] != ev[f"{p}_loss"]


def test_one_text_is_scored_once(trained, tmp_path, monkeypatch):
    """val_split train_tail: valid.bin is the held-out tail again (same text_sha256), so both
    sets get the same numbers from one pass; different texts get a pass each."""
    import ncn.evaluate

    data = tmp_path / "data"
    shutil.copytree(trained.data, data)
    meta = json.loads((data / "meta.json").read_text())
    shutil.copyfile(data / "heldout.bin", data / "valid.bin")
    meta["valid"] = {**meta["heldout"], "file": "valid.bin", "text_sha256": "abc"}
    meta["heldout"]["text_sha256"] = "abc"
    meta["val_split"] = "train_tail"
    (data / "meta.json").write_text(json.dumps(meta))
    calls = []
    real = ncn.evaluate.stream_ce
    monkeypatch.setattr(ncn.evaluate, "stream_ce", lambda *a, **k: calls.append(1) or real(*a, **k))
    ev = ncn.evaluate.evaluate(trained.runs["causal"], data=str(data))
    assert len(calls) == 1
    assert {k: ev[f"val_{k}"] for k in ("loss", "bpb", "tokens")} == {k: ev[f"heldout_{k}"] for k in ("loss", "bpb", "tokens")}
    meta["heldout"]["text_sha256"] = "def"  # another text: scored again (same tokens, same numbers here)
    (data / "meta.json").write_text(json.dumps(meta))
    calls.clear()
    ncn.evaluate.evaluate(trained.runs["causal"], data=str(data))
    assert len(calls) == 2


def test_evaluate_max_tokens_cap(trained, tmp_path):
    from ncn.evaluate import main

    cfg = tiny_config(tmp_path, eval={"max_tokens": 100, "batch_size": 3})
    assert main(["--run", str(trained.runs["causal"]), "--config", str(cfg)]) == 0
    ev = json.loads((trained.runs["causal"] / "eval.json").read_text())
    assert ev["val_tokens"] == 100 and ev["heldout_tokens"] == 100 and ev["max_tokens"] == 100


def test_refuses_missing_unfinished_and_mismatched(trained, tmp_path):
    from ncn.evaluate import main

    with pytest.raises(NCNError, match="run folder not found"):
        main(["--run", str(tmp_path / "nope")])
    half = tmp_path / "half"
    shutil.copytree(trained.runs["causal"], half)
    (half / "model.pt").unlink()
    (half / "metrics.json").write_text(json.dumps({"finished": False}))
    with pytest.raises(NCNError, match=r"is not finished: no model.pt / no metrics.json finished flag"):
        main(["--run", str(half)])
    # data tokenized with another vocabulary
    other = make_data(tmp_path / "other", vocab=280)
    with pytest.raises(NCNError, match=r"vocabulary mismatch: \S*causal/model\.pt has vocab_size"):
        main(["--run", str(trained.runs["causal"]), "--data", str(other)])


def test_generate_writes_samples(trained, tmp_path):
    from ncn.generate import main

    run = trained.runs["causal"]
    assert main(["--run", str(run), "--out", str(tmp_path / "a.json")]) == 0
    out = json.loads((tmp_path / "a.json").read_text())
    s = out["samples"][0]
    assert s["prompt"].startswith("Once upon a time")
    assert s["text"].startswith(s["prompt"]) and s["new_tokens"] == 8 and s["tokens_per_s"] > 0
    assert out["tokens_per_s"] > 0 and out["kv_cache"] is True
    main(["--run", str(run), "--out", str(tmp_path / "b.json")])  # seeded: the same sample again
    assert json.loads((tmp_path / "b.json").read_text())["samples"][0]["text"] == s["text"]


def test_the_prefix_pool_loss_scores_the_same_capped_tokens(trained, tmp_path, monkeypatch):
    """With eval.max_tokens, every pass (full pool and prefix pool, both sets) reads the same cap."""
    import ncn.evaluate

    caps = []
    real = ncn.evaluate.stream_ce
    monkeypatch.setattr(ncn.evaluate, "stream_ce", lambda *a, **k: caps.append(a[5]) or real(*a, **k))
    cfg = tiny_config(tmp_path, eval={"max_tokens": 100, "batch_size": 3})
    from ncn.config import load_config

    ncn.evaluate.evaluate(trained.runs["asrun"], cfg=load_config(cfg))
    assert len(caps) == 4 and set(caps) == {100}  # (val, heldout) x (full pool, prefix pool)


def test_a_changed_model_is_scored_to_out_only(trained, tmp_path):
    """--modulate/--kv-bits write their record to --out, never over RUN/eval.json, and change the score."""
    from ncn.evaluate import evaluate

    run = trained.runs["causal"]
    plain = evaluate(run)
    before = (run / "eval.json").read_bytes()
    for kw in ({"modulate": ["beta=4.0"]}, {"kv_bits": "4"}):
        with pytest.raises(NCNError, match="--out"):
            evaluate(run, **kw)
        with pytest.raises(NCNError, match="--out"):
            evaluate(run, **kw, out_path=run / "eval.json")
        out = tmp_path / "changed.json"
        ev = evaluate(run, **kw, out_path=out)
        assert json.loads(out.read_text())["heldout_loss"] == ev["heldout_loss"] != plain["heldout_loss"], kw
        assert (run / "eval.json").read_bytes() == before
    assert ev["kv_bits"] == [4] * 2 and json.loads(out.read_text())["kv_bits"] == [4] * 2


def test_a_config_describing_another_shape_is_named_in_the_refusal(trained):
    """evaluate(cfg=...) refuses a config whose size differs from the checkpoint, naming where the
    config came from (the default source: --config) and the checkpoint."""
    import copy

    from ncn.evaluate import evaluate

    cfg = copy.deepcopy(json.loads((trained.runs["causal"] / "config.json").read_text())["config"])
    size = json.loads((trained.runs["causal"] / "config.json").read_text())["size"]
    cfg["size_defs"][size]["n_layer"] += 1
    with pytest.raises(NCNError, match=r"n_layer is \d+ in --config but \d+ in \S*model\.pt"):
        evaluate(trained.runs["causal"], cfg=cfg)


def test_a_cpu_forward_holds_at_most_the_cpu_logits_budget(monkeypatch):
    """stream_ce joins batches into one forward up to FORWARD_LOGITS[device] logits (the CPU's
    budget on the CPU), never fewer than batch_size windows; the loss is the same either way."""
    import ncn.evaluate as ev

    tokens = np.arange(10 * 8 + 1) % 7
    losses = []
    for budget in (8 * 7 * 4, 8 * 7 * 1):  # 4 windows of T=8, V=7 per forward; then 1 (below batch_size 2)
        monkeypatch.setattr(ev, "FORWARD_LOGITS", {"cpu": budget, "cuda": 1 << 30})
        model = Uniform(7)
        model.cfg = SimpleNamespace(vocab_size=7)
        ce, n = ev.stream_ce(model, tokens, 8, 2, torch.device("cpu"), None)
        assert max(b for b, _ in model.seen) == (4 if budget > 8 * 7 else 2)
        losses.append((ce, n))
    assert losses[0] == losses[1]


def test_the_cli_passes_out_through(trained, tmp_path):
    """`ncn evaluate --run R --out X --kv-bits 4` writes its record to X (R/eval.json stays as it was);
    without --out a changed model is refused, so the record can never land over R/eval.json."""
    from ncn.cli import main

    run = trained.runs["causal"]
    assert main(["evaluate", "--run", str(run)]) == 0
    before = (run / "eval.json").read_bytes()
    out = tmp_path / "kv4.json"
    assert main(["evaluate", "--run", str(run), "--kv-bits", "4", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["kv_bits"] == [4] * 2
    assert (run / "eval.json").read_bytes() == before
    assert main(["evaluate", "--run", str(run), "--kv-bits", "4"]) != 0
    assert (run / "eval.json").read_bytes() == before
