"""Known answers of the model-evaluating measurements (issue 12): the leak probe, the random-skip
control, the trace's position matching, branch ratio and frequencies, the brain scans' mean over
seeds, the leak table. Tiny models built here; no results/ folder."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ncn.errors import NCNError

torch.set_num_threads(1)


def _tiny(ncn, seed=0, **kw):
    from ncn.model import ModelConfig, Transformer

    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, d_model=16, d_ff=32, ncn=ncn, ncn_hidden=8)
    return Transformer(ModelConfig(**{**cfg, **kw})).eval()


def _windows(n=6, T=16, V=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T + 1), generator=g)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def _louder_controller(model, factor=20.0):
    """Scale the controller's weights so its input visibly moves the signals."""
    with torch.no_grad():
        for p in model.controller.parameters():
            if p.dim() == 2:
                p.mul_(factor)
    return model


# -- the leak probe: structural fact and benefit ------------------------------------------------------------
@pytest.mark.parametrize("ncn", ["causal", "tonic", "static"])
def test_no_structural_leak_for_variants_that_cannot_see_the_future(ncn):
    from ncn.analysis.leakprobe import probe_model

    model = _tiny(ncn)
    if model.controller is not None:
        _louder_controller(model)
    x, y = _windows()
    r = probe_model(model, x, y, [3, 8, 14], batch_size=4, seed=0)
    assert r["max_abs_dlogit_past"] == 0.0  # exactly: bitwise the same logits
    assert r["benefit"] == 0.0 and r["loss_true_future"] == r["loss_replaced_future"]
    assert r["positions_scored"] == 6 * (4 + 9 + 15)


def test_asrun_has_a_structural_leak():
    from ncn.analysis.leakprobe import probe_model

    x, y = _windows()
    r = probe_model(_louder_controller(_tiny("asrun")), x, y, [3, 8], batch_size=4, seed=0)
    assert r["max_abs_dlogit_past"] > 1e-3
    assert r["benefit"] != 0.0


def test_a_pool_of_positions_only_shows_no_structural_leak(monkeypatch):
    """A whole-window pool (sees_future) whose input is the position embeddings alone carries no
    information about later tokens: exactly 0, although the same pool over tokens leaks."""
    from ncn import variants
    from ncn.analysis.leakprobe import probe_model

    monkeypatch.setitem(variants.REGISTRY, "posonly",
                        variants.VariantSpec(pool="window", positions=True, per_token=False, init="zeroed"))
    assert variants.spec("posonly").sees_future
    model = _louder_controller(_tiny("posonly"))
    x, y = _windows()
    leaky = probe_model(model, x, y, [3, 8], batch_size=4, seed=0)["max_abs_dlogit_past"]
    assert leaky > 1e-3  # as registered (token + position input) it leaks

    def positions_only(tok, emb, causal_pool=None, cache=None, control=None):
        pos = model.pos_emb(torch.arange(tok.size(1))).expand_as(tok)
        return model.controller(pos, causal=False)

    monkeypatch.setattr(model, "_raw_signals", positions_only)
    r = probe_model(model, x, y, [3, 8], batch_size=4, seed=0)
    assert r["max_abs_dlogit_past"] == 0.0 and r["benefit"] == 0.0


class _BagModel:
    """A planted leaker: at every position, logit 5 for each token id present in `visible`
    positions of the window (the whole window, or the prefix ≤ t when causal)."""

    def __init__(self, V, causal):
        self.cfg = type("C", (), {"vocab_size": V})()
        self.causal = causal

    def __call__(self, x):
        B, T = x.shape
        onehot = torch.nn.functional.one_hot(x, self.cfg.vocab_size).float()
        seen = onehot.cummax(dim=1).values if self.causal else onehot.amax(dim=1, keepdim=True).expand(B, T, -1)
        return type("Out", (), {"logits": 5.0 * seen})()


def test_benefit_of_the_true_future_known_answers():
    """A model that reads the whole window predicts its targets better with the true future
    (benefit < 0); the same mechanism over the prefix has no benefit and no structural leak."""
    from ncn.analysis.leakprobe import probe_model

    x, y = _windows(n=8, T=16, V=32)
    leak = probe_model(_BagModel(32, causal=False), x, y, [4, 10], batch_size=3, seed=1)
    assert leak["benefit"] < -0.3 and leak["max_abs_dlogit_past"] == 5.0
    clean = probe_model(_BagModel(32, causal=True), x, y, [4, 10], batch_size=3, seed=1)
    assert clean["benefit"] == 0.0 and clean["max_abs_dlogit_past"] == 0.0


def test_leak_probe_needs_two_windows_and_valid_cuts():
    from ncn.analysis.leakprobe import cut_positions, probe_model

    assert cut_positions(16, [0.25, 0.5, 0.75, 0.99]) == [3, 7, 11, 14]  # t ≤ T - 2: a future exists
    assert cut_positions(32, [0.5, 0.5]) == [15]
    x, y = _windows(n=1)
    with pytest.raises(NCNError, match="2 held-out windows"):
        probe_model(_tiny("causal"), x, y, [3], batch_size=1, seed=0)


# -- block skipping: the random control ------------------------------------------------------------------
def _fixed_gates(model, gamma_of):
    """Make the model's γ a fixed function of (token id, position): gamma_of(ids) -> (B, T) in (0, 1);
    g = 1, β = 1 from z = the target init."""
    from ncn.model import signal_bias_init

    base = signal_bias_init(0.5)

    def raw(tok, emb, causal_pool=None, cache=None, control=None):
        ids = raw.ids
        B, T = ids.shape
        z = base.repeat(B, T, model.cfg.n_layer, 1).clone()
        z[..., 2] = torch.logit(gamma_of(ids).float()).unsqueeze(-1).expand(B, T, model.cfg.n_layer)
        return z

    forward = model.forward

    def fwd(idx, *a, **k):
        raw.ids = idx
        return forward(idx, *a, **k)

    model._raw_signals = raw
    model.forward = fwd
    with torch.no_grad():  # a FFN that matters: skipping it changes the loss
        model.tok_emb.weight.mul_(50.0)  # (tied) logits far from uniform
        for b in model.blocks:
            b.ffn.up.weight.mul_(20.0)
            b.ffn.down.weight.mul_(20.0)
    return model


def _hash_u(ids):
    """A fixed pseudo-random number in [0, 1) per (token id, position), unrelated to the FFN."""
    pos = torch.arange(ids.size(1)).expand_as(ids)
    return ((ids * 7919 + pos * 104729) % 1000).double() / 1000.0


def test_random_gates_do_not_beat_random_skipping():
    """γ ≈ 0.5 everywhere and which tokens fall below ε = 0.5 is arbitrary: the gate's skip is one
    more random draw, so its loss lies within the random control's spread."""
    from ncn.analysis.skip import skip_model

    model = _fixed_gates(_tiny("causal"), lambda ids: 0.5 + 0.002 * (_hash_u(ids) - 0.5))
    x, y = _windows(n=12)
    df = skip_model(model, x, y, 4, [0.5], draws=12, seed=0).set_index("eps")
    r = df.loc[0.5]
    assert 0.3 < r["skip_frac"] < 0.7
    assert r["loss_random_sd"] > 0 and r["delta_random"] > 0.01  # skipping half the FFNs costs
    assert abs(r["loss"] - r["loss_random"]) < 3 * r["loss_random_sd"]


def test_a_gate_that_closes_where_the_ffn_is_scaled_down_beats_random_skipping():
    """γ = 0.02 on a fixed half of the tokens (their FFN already counts 2%), 0.98 elsewhere:
    skipping the closed half costs almost nothing, skipping as many at random costs a lot."""
    from ncn.analysis.skip import skip_model

    model = _fixed_gates(_tiny("causal"), lambda ids: torch.where(_hash_u(ids) < 0.5, 0.02, 0.98).double())
    x, y = _windows(n=12)
    r = skip_model(model, x, y, 4, [0.5], draws=6, seed=0).set_index("eps").loc[0.5]
    assert 0.3 < r["skip_frac"] < 0.7
    assert r["delta_loss"] < r["delta_random"] - 5 * r["loss_random_sd"]
    assert abs(r["delta_loss"]) < 0.2 * r["delta_random"]


def test_random_mask_keeps_the_count_per_layer_and_is_seeded():
    from ncn.analysis.skip import random_mask

    closed = torch.zeros(3, 5, 2, dtype=torch.bool)
    closed[0, :4, 0] = True
    closed[:, :, 1] = True
    m1 = random_mask(closed, torch.Generator().manual_seed(1))
    m2 = random_mask(closed, torch.Generator().manual_seed(1))
    assert torch.equal(m1, m2)
    assert m1[..., 0].sum() == 4 and m1[..., 1].all()
    assert not torch.equal(m1, random_mask(closed, torch.Generator().manual_seed(2)))


def test_skip_choice_uses_an_absolute_tolerance_in_nats():
    """Dense loss 4.5: 0.03 nats is within 1% (0.045) but not within 0.01 nats."""
    from ncn.analysis.skip import choice

    rows = []
    for seed in (0, 1):
        for eps, d in ((0.0, 0.0), (0.1, 0.005), (0.2, 0.03), (0.3, 0.2)):
            rows.append({"variant": "causal", "size": "s", "seed": seed, "eps": eps, "loss": 4.5 + d, "delta_loss": d,
                         "delta_random": 2 * d, "skip_frac": eps, "ffn_flops_saved": eps})
    df = pd.DataFrame(rows)
    assert choice(df, pd.DataFrame(), "causal", "s", 0.01)["eps"] == 0.1
    assert choice(df, pd.DataFrame(), "causal", "s", 0.05)["eps"] == 0.2
    c = choice(df, pd.DataFrame(), "causal", "s", 0.0)
    assert c["eps"] == 0.0 and c["n_seeds"] == 2 and math.isnan(c["wall_ratio"])
    assert choice(df, pd.DataFrame(), "causal", "s", 0.01)["delta_random"] == pytest.approx(0.01)


def test_measure_table_names_and_tolerance():
    from ncn.analysis.skip import MEASURE, measure_table

    df = pd.DataFrame({"variant": "causal", "size": "s", "seed": 0, "eps": [0.0, 0.5], "tokens": 10,
                       "loss": [4.0, 4.02], "loss_dense": 4.0, "delta_loss": [0.0, 0.02], "skip_frac": [0.0, 0.4],
                       "delta_random": [0.0, 0.1],
                       "loss_random": [4.0, 4.1], "loss_random_sd": [0.0, 0.01], "n_random": 3})
    m = measure_table(df, 0.01)
    assert list(m.columns) == MEASURE
    assert list(m["loss_dense"]) == [4.0, 4.0] and list(m["within_tolerance"]) == [1, 0]
    assert m["skip_minus_random"].iloc[1] == pytest.approx(-0.08)


# -- the trace: position matching, minimal pairs, branch ratio, frequencies ----------------------------------
def _word_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for t in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(t) for w in [w[0]]})
    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_controls_are_matched_to_the_twists_probe_position_and_pairs_mark_the_divergence(tmp_path):
    from ncn.analysis.trace import plan_sentences

    a = {"trace_sentences": ["Timmy wanted an apple . He looked in the box , but it was empty ."],
         "control_sentences": ["Tom had a ball , but he wanted a kite .", "It rained , but they played .",
                               "One two three four five six seven eight nine ten eleven twelve , but no ."],
         "control_leadins": ["Oh .", "The sun was up .", "It was a nice day ."],
         "pair_sentences": ["Timmy wanted an apple . He looked in the box , and it was full ."],
         "n_valid_sentences": 0, "probe_word": "but"}
    tok = _word_tokenizer(a["trace_sentences"] + a["control_sentences"] + a["control_leadins"] + a["pair_sentences"])
    sents = plan_sentences({"analysis": a}, tmp_path, tok, {"eot_id": 0}, 64)
    kinds = [s.kind for s in sents]
    assert kinds == ["trace", "control", "control", "pair"]  # the 14-word control cannot be matched
    P = sents[0].probe
    assert P == 12 and all(s.probe == P for s in sents if s.kind == "control")
    assert all(s.pieces[s.probe] == "but" for s in sents if s.kind != "pair")
    assert sents[1].text.endswith("Tom had a ball , but he wanted a kite .") and sents[1].text != a["control_sentences"][0]
    pair = sents[-1]
    assert pair.probe == P and pair.pieces[P] == "and" and pair.ids[:P] == sents[0].ids[:P]


def test_branch_ratio_is_the_ffn_branch_over_the_stream():
    """Layer 0: doubling W_down doubles ‖g·γ·FFN‖ and leaves the stream before it unchanged."""
    from ncn.analysis.trace import trace_sentence

    model = _tiny("causal")
    ids = [0, 5, 9, 3, 7]
    sig, surprisal, ratio = trace_sentence(model, ids)
    assert ratio.shape == (5, 2) and (ratio > 0).all() and np.isnan(surprisal[0])
    with torch.no_grad():
        model.blocks[0].ffn.down.weight.mul_(2.0)
    sig2, _, ratio2 = trace_sentence(model, ids)
    np.testing.assert_allclose(ratio2[:, 0], 2 * ratio[:, 0], rtol=1e-5)
    np.testing.assert_array_equal(sig2, sig)  # the signals do not depend on the trunk


def test_log_freq_counts_the_train_split(tmp_path):
    from ncn.analysis.trace import unigram_log_freq

    np.array([1, 1, 1, 2, 0, 1], dtype=np.uint16).tofile(tmp_path / "train.bin")
    meta = {"dtype": "uint16", "vocab_size": 4, "train": {"file": "train.bin"}}
    lf = unigram_log_freq(tmp_path, meta)
    np.testing.assert_allclose(np.exp(lf), np.array([2, 5, 2, 1]) / 10)  # (count + 1) / (6 + 4)


# -- brain scans: the mean over seeds --------------------------------------------------------------------------
def _scan_rows(seed, g):
    rows = []
    for pos in range(3):
        for layer in range(2):
            rows.append({"variant": "causal", "size": "s", "seed": seed, "sentence_id": 0, "kind": "trace", "pos": pos,
                         "token_id": 10 + pos, "token": f"t{pos}", "layer": layer, "g": g + pos, "beta": 1.0,
                         "gamma": 0.5 * layer})
    return pd.DataFrame(rows)


def test_brainscan_shows_the_mean_over_seeds():
    from ncn.analysis.brainscan import matrices, seed_mean

    both = pd.concat([_scan_rows(0, 1.0), _scan_rows(1, 1.5)], ignore_index=True)
    mats, labels = matrices(seed_mean(both))
    np.testing.assert_allclose(mats["g"], [[1.25, 2.25, 3.25]] * 2)
    assert labels == ["t0", "t1", "t2"] and mats["gamma"][1, 0] == 0.5
    other = _scan_rows(1, 1.5).assign(token_id=99)
    with pytest.raises(NCNError, match="different tokens"):
        seed_mean(pd.concat([_scan_rows(0, 1.0), other]))


# -- the leak table ------------------------------------------------------------------------------------------
def test_leak_table_structural_benefit_and_mismatch_apart():
    from ncn.analysis.leak import leak_table

    cfg = {"variants": ["none", "asrun", "causal"], "sizes": ["s"], "size_defs": {"s": {"n_layer": 2, "d_model": 8,
           "d_ff": 16}}, "analysis": {"confidence": 0.95}}
    measure = pd.DataFrame({"variant": ["asrun", "asrun", "causal", "causal"], "size": "s", "seed": [0, 1, 0, 1],
                            "max_abs_dlogit_past": [0.3, 0.5, 0.0, 0.0], "benefit": [-0.1, -0.2, 0.0, 0.0]})
    runs = pd.DataFrame({"variant": ["asrun", "asrun"], "size": "s", "seed": [0, 1], "heldout_loss": [3.0, 3.1],
                         "heldout_loss_prefix_pool": [3.5, 3.4]})
    t = leak_table(runs, measure, cfg).set_index("variant")
    assert t.loc["asrun", "max_abs_dlogit_past"] == 0.5 and t.loc["causal", "max_abs_dlogit_past"] == 0.0
    assert t.loc["asrun", "benefit_mean"] == pytest.approx(-0.15) and t.loc["asrun", "benefit_ci_high"] < 0.9
    assert t.loc["asrun", "leak_mean"] == pytest.approx(-0.4)  # full − prefix: the mismatch column
    assert math.isnan(t.loc["causal", "leak_mean"]) and t.loc["causal", "benefit_ci_low"] == 0.0
