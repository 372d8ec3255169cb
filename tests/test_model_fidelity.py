"""The model's fidelity options (issue 13 item 7): dropout_layout, ncn_after_dropout, pool_bias.

Off (the default) each computes bitwise what the model computed before it existed: checked
against `reference_forward`, a plain re-statement of the documented forward (dropout draws in the
documented order, same RNG), which also states what each option does when on. Tiny configs."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import ncn.model as M
from ncn.errors import NCNError
from ncn.model import ModelConfig, Transformer, load_model, match_params, model_payload, signal_map
from ncn.variants import names, spec

torch.set_num_threads(1)

P = 0.25  # a dropout large enough that every mask differs
OPTIONS = {"dropout_layout": "original", "ncn_after_dropout": True, "pool_bias": True}
CONTROLLED = [v for v in names() if spec(v).controller and not spec(v).control]


def tiny(ncn="causal", **kw):
    base = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=48, dropout=P,
                ncn=ncn, ncn_hidden=16)
    return ModelConfig(**{**base, **kw})


def make(ncn="causal", seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(tiny(ncn, **kw))


def batch(seed=1, B=3, T=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (B, T), generator=g), torch.randint(0, 50, (B, T), generator=g)


def reference_forward(m, idx, targets, original=False, after_dropout=False):
    """The model's forward written out, with every dropout draw in place and order: embeddings;
    per layer the attention probabilities (SDPA), the attention output (twice if `original`),
    the FFN's inner activations (if `original`) and its output. The NCN reads the embeddings
    before embedding dropout, or (`after_dropout`) the trunk's dropped tensor."""
    cfg, sp = m.cfg, m.cfg.spec
    drop = lambda t: F.dropout(t, cfg.dropout, training=m.training)  # noqa: E731
    B, T = idx.shape
    tok = m.tok_emb(idx)
    emb = tok + m.pos_emb(torch.arange(T))
    x = drop(emb) if after_dropout else None
    if after_dropout and m.controller is not None and not sp.positions:
        tok = drop(tok)
    ncn_in = (x if after_dropout else emb) if sp.positions else tok
    if m.controller is not None:
        sig = signal_map(m.controller(ncn_in, causal=sp.pool == "prefix"), cfg.beta_max)
    else:
        sig = None if m.static_z is None else signal_map(m.static_z.view(1, 1, cfg.n_layer, 3), cfg.beta_max)
    x = drop(emb) if x is None else x
    H, hd = cfg.n_head, cfg.d_model // cfg.n_head
    for l, b in enumerate(m.blocks):
        q, k, v = b.attn.qkv(b.norm1(x)).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        if sig is not None:
            g, beta, gamma = (sig[:, :, l, i : i + 1] for i in range(3))
            q = q * beta.unsqueeze(1)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=cfg.dropout if m.training else 0.0, is_causal=True)
        y = y.transpose(1, 2)
        if sig is not None:
            y = y * g.unsqueeze(-1)
        a = drop(b.attn.proj(y.reshape(B, T, cfg.d_model)))
        x = x + (drop(a) if original else a)
        h = F.gelu(b.ffn.up(b.norm2(x)))
        f = drop(b.ffn.down(drop(h) if original else h))
        x = x + f if sig is None else torch.addcmul(x, g * gamma, f)
    logits = m.lm_head(m.norm_f(x))
    # the model's own CPU cross-entropy kernel (torch's to float rounding, tests/test_model.py), so
    # that the comparison below can be bitwise: what it checks is the dropout layout
    ce = M.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    return logits, ce + m._reg(sig)


def _run(m, fn, seed=7):
    """Loss, logits and every parameter's gradient of one train-mode step of fn() under `seed`."""
    m.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits, loss = fn()
    loss.backward()
    return logits.detach(), loss.detach(), [None if p.grad is None else p.grad.clone() for p in m.parameters()]


def _same(a, b):
    (la, sa, ga), (lb, sb, gb) = a, b
    assert torch.equal(la, lb) and torch.equal(sa, sb)
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(ga, gb))


# 1. off: the defaults, bitwise as before, and the records unchanged ------------------------------


def test_defaults_are_off_and_left_out_of_the_records():
    cfg = tiny()
    assert (cfg.dropout_layout, cfg.ncn_after_dropout, cfg.pool_bias) == ("single", False, False)
    assert not set(OPTIONS) & set(cfg.as_dict())  # model.pt, config.json, fingerprints: as before
    on = dataclasses.replace(cfg, **OPTIONS)
    assert {k: on.as_dict()[k] for k in OPTIONS} == OPTIONS
    assert ModelConfig(**cfg.as_dict()) == cfg and ModelConfig(**on.as_dict()) == on


@pytest.mark.parametrize("variant", names())
def test_off_is_bitwise_the_documented_single_layout(variant):
    """Train mode, dropout on: logits, loss and every gradient equal the reference's, bit for bit."""
    kw = {"control_dim": 2} if spec(variant).control else {}
    m = make(variant, **kw).train()
    idx, tgt = batch()
    _same(_run(m, lambda: (lambda o: (o.logits, o.loss))(m(idx, tgt))),
          _run(m, lambda: reference_forward(m, idx, tgt)))


def test_reference_is_sensitive_to_the_dropout_order():
    """The bitwise check can fail: the original layout's extra draws give other numbers."""
    m = make("causal").train()
    idx, tgt = batch()
    a = _run(m, lambda: reference_forward(m, idx, tgt))
    b = _run(m, lambda: reference_forward(m, idx, tgt, original=True))
    assert not torch.equal(a[0], b[0])


# 2. dropout_layout "original" -------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["none", "causal", "static"])
def test_original_layout_is_the_documented_one(variant):
    m = make(variant, dropout_layout="original").train()
    idx, tgt = batch()
    _same(_run(m, lambda: (lambda o: (o.logits, o.loss))(m(idx, tgt))),
          _run(m, lambda: reference_forward(m, idx, tgt, original=True)))


def _count_dropout(m, idx, monkeypatch):
    """(dropout modules, dropout applications in one forward, SDPA calls with each dropout_p)."""
    mods = [x for x in m.modules() if isinstance(x, torch.nn.Dropout)]
    calls, sdpa = [], []
    hooks = [x.register_forward_hook(lambda mod, i, o: calls.append(mod.p)) for x in mods]
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        sdpa.append(kw.get("dropout_p", 0.0))
        return real(*a, **kw)

    monkeypatch.setattr(M.F, "scaled_dot_product_attention", spy)
    m(idx)
    for h in hooks:
        h.remove()
    return len(mods), calls, sdpa


@pytest.mark.parametrize("layout, per_layer", [("single", 2), ("original", 4)])
def test_dropout_applications_per_layout(layout, per_layer, monkeypatch):
    """single: embeddings + (attention output, FFN output) per layer; original: + a second
    attention-output drop and the FFN's inner drop. Both: SDPA dropout_p = dropout in train mode."""
    m = make("causal", dropout_layout=layout).train()
    idx, _ = batch()
    n_mods, calls, sdpa = _count_dropout(m, idx, monkeypatch)
    L = m.cfg.n_layer
    assert n_mods == 1 + per_layer * L and calls == [P] * (1 + per_layer * L)
    assert sdpa == [P] * L
    assert [type(x).__name__ for x in m.blocks[0].ffn.children()].count("Dropout") == per_layer // 2
    m.eval()
    assert _count_dropout(m, idx, monkeypatch)[2] == [0.0] * L  # no attention dropout in eval


def test_original_layout_changes_training_only():
    """Same weights (Dropout has none): eval outputs equal; train-mode outputs differ."""
    single, orig = make("causal"), make("causal", dropout_layout="original")
    assert single.state_dict().keys() == orig.state_dict().keys()
    orig.load_state_dict(single.state_dict())
    idx, tgt = batch()
    with torch.no_grad():
        assert torch.equal(single.eval()(idx).logits, orig.eval()(idx).logits)
        single.train(), orig.train()
        torch.manual_seed(3)
        a = single(idx).logits
        torch.manual_seed(3)
        assert not torch.equal(a, orig(idx).logits)


def test_bad_dropout_layout_is_a_user_error():
    with pytest.raises(NCNError, match="dropout_layout"):
        tiny(dropout_layout="double")


# 3. ncn_after_dropout ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", CONTROLLED)
def test_ncn_after_dropout_is_the_documented_forward(variant):
    m = make(variant, ncn_after_dropout=True).train()
    idx, tgt = batch()
    _same(_run(m, lambda: (lambda o: (o.logits, o.loss))(m(idx, tgt))),
          _run(m, lambda: reference_forward(m, idx, tgt, after_dropout=True)))


def _ncn_and_trunk_inputs(m, idx, seed=5):
    got = {}
    h1 = m.controller.register_forward_pre_hook(lambda mod, a: got.__setitem__("ncn", a[0]))
    h2 = m.blocks[0].register_forward_pre_hook(lambda mod, a: got.__setitem__("trunk", a[0]))
    torch.manual_seed(seed)
    with torch.no_grad():
        m(idx, return_signals=True)
    h1.remove(), h2.remove()
    return got["ncn"], got["trunk"]


def test_ncn_after_dropout_changes_the_ncn_input_only_in_train_mode():
    before, after = make("causal"), make("causal", ncn_after_dropout=True)
    after.load_state_dict(before.state_dict())
    idx, _ = batch()
    with torch.no_grad():
        emb = before.tok_emb(idx) + before.pos_emb(torch.arange(idx.size(1)))
    for m in (before, after):  # eval: the NCN reads the embeddings either way
        ncn_in, trunk_in = _ncn_and_trunk_inputs(m.eval(), idx)
        assert torch.equal(ncn_in, emb) and torch.equal(trunk_in, emb)
    ncn_b, trunk_b = _ncn_and_trunk_inputs(before.train(), idx)
    ncn_a, trunk_a = _ncn_and_trunk_inputs(after.train(), idx)
    assert torch.equal(ncn_b, emb)  # default: before dropout
    assert torch.equal(ncn_a, trunk_a) and not torch.equal(ncn_a, emb)  # on: the trunk's dropped tensor
    assert (ncn_a == 0).float().mean() > 0.1
    assert torch.equal(trunk_a, trunk_b)  # the trunk's mask is the same draw either way


# 4. pool_bias ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", names())
def test_pool_bias_adds_two_d_model_parameters_to_a_controller(variant):
    kw = {"control_dim": 2} if spec(variant).control else {}
    n_off, n_on = (M.count_params(tiny(variant, pool_bias=b, **kw)) for b in (False, True))
    assert n_on - n_off == (2 * 32 if spec(variant).controller else 0)
    if spec(variant).controller:
        pool = make(variant, pool_bias=True, **kw).controller.pool
        assert pool.v_bias.numel() == 32 and pool.proj.bias.shape == (32,) and pool.kv.bias is None
        assert not pool.v_bias.any() and not pool.proj.bias.any()  # zero at init, as the original's


@pytest.mark.parametrize("causal, impl", [(False, "chunked"), (True, "chunked"), (True, "sdpa")])
def test_pool_biases_shift_the_pooled_values(causal, impl, monkeypatch):
    """Softmax weights sum to 1, so a value bias c adds proj(c) to every pooled output, and the
    output bias adds itself: pooled_with = pooled_without + W_o c + b_o."""
    monkeypatch.setattr(M, "PREFIX_POOL_IMPL", impl)
    torch.manual_seed(0)
    plain, biased = M.PrefixPool(32, 2), M.PrefixPool(32, 2, bias=True)
    biased.load_state_dict({**plain.state_dict(), "v_bias": torch.randn(2, 16), "proj.bias": torch.randn(32)})
    e = torch.randn(2, 9, 32)
    with torch.no_grad():
        shift = plain.proj(biased.v_bias.reshape(32)) + biased.proj.bias
        torch.testing.assert_close(biased(e, causal), plain(e, causal) + shift, atol=1e-5, rtol=0)


def test_pool_bias_trains_caches_and_loads(tmp_path):
    m = make("causal", pool_bias=True)
    with torch.no_grad():  # non-zero biases, so that a cache or a load that dropped them would show
        m.controller.pool.v_bias.normal_(0, 1.0)
        m.controller.pool.proj.bias.normal_(0, 1.0)
    m.train()
    idx, tgt = batch()
    m(idx, tgt).loss.backward()
    assert m.controller.pool.v_bias.grad.abs().sum() > 0 and m.controller.pool.proj.bias.grad.abs().sum() > 0
    m.eval()
    out_c, lc = m.generate(idx[:, :4], 6, temperature=0, use_cache=True, return_logits=True)
    out_u, lu = m.generate(idx[:, :4], 6, temperature=0, use_cache=False, return_logits=True)
    torch.testing.assert_close(lc, lu, atol=1e-5, rtol=0)
    torch.save(model_payload(m), tmp_path / "model.pt")
    loaded, _ = load_model(tmp_path / "model.pt")
    assert loaded.cfg == m.cfg and torch.equal(loaded(idx).logits, m(idx).logits)


@pytest.mark.parametrize("variant", ["none", "static", "causal", "asrun"])
def test_match_params_with_pool_bias(variant):
    """Matching counts the pool's biases: every variant within 0.5% of the biased reference."""
    ref = tiny("causal", pool_bias=True, d_model=64, n_head=4, d_ff=256, vocab_size=200, block_size=32)
    target = M.count_params(ref)
    out = match_params(dataclasses.replace(ref, ncn=variant), ncn=variant, target=target)
    assert out.pool_bias and abs(M.count_params(out) - target) <= 0.005 * target
    if variant == "causal":
        assert out.d_ff == ref.d_ff
    if variant == "none":  # the target counts the biases, and the baseline is the nearest d_ff to it
        assert target - M.count_params(dataclasses.replace(ref, pool_bias=False)) == 2 * 64
        step = M.count_params(dataclasses.replace(out, d_ff=2)) - M.count_params(dataclasses.replace(out, d_ff=1))
        assert abs(M.count_params(out) - target) <= step / 2


def test_a_config_recorded_before_the_options_existed_means_them_off():
    """A run's config.json written before dropout_layout / ncn_after_dropout / pool_bias existed
    (e.g. a resumed or re-evaluated old run) builds the same ModelConfig as one with them off."""
    from pathlib import Path

    from ncn.config import load_config, model_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "smoke.yaml")
    old = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k not in M.OFF_BY_DEFAULT}}
    for v in ("none", "causal"):
        assert model_config(old, v, "xs", 512) == model_config(cfg, v, "xs", 512)
    cfg["model"]["pool_bias"] = True  # and an option that is on is read, not defaulted
    assert model_config(cfg, "causal", "xs", 512).pool_bias
