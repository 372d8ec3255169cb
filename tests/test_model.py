"""The model's contracts (issue 2): causality, init, phasic vs tonic, iso-parameter baseline,
KV cache, regulariser, block skipping, loading. Tiny configs, one thread, seconds."""

import dataclasses

import pytest
import torch

import ncn.model as M
from ncn.errors import NCNError
from ncn.model import SIGNAL_NAMES, ModelConfig, Transformer, load_model, match_params
from ncn.variants import names

VARIANTS = names()

torch.set_num_threads(1)

NCN_VARIANTS = ("asrun", "causal", "tonic", "static")
GATED = ("asrun", "causal", "tonic")  # per-token γ


def tiny(ncn, **kw):
    base = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64, dropout=0.0,
                ncn=ncn, ncn_hidden=16)
    base.update(kw)
    return ModelConfig(**base)


def make(ncn, seed=0, lively=False, **kw):
    """A tiny model. lively=True scales up the NCN and attention weights so that signals vary
    strongly across tokens and attention is far from uniform (at init both are nearly constant,
    which would hide cache, causality or wiring bugs)."""
    torch.manual_seed(seed)
    model = Transformer(tiny(ncn, **kw)).eval()
    if lively:
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight.mul_(10.0)
            if model.controller is not None:
                model.controller.pool.query.mul_(100.0)
                model.controller.fc1.weight.mul_(5.0)
                model.controller.fc2.weight.mul_(20.0)
            if model.static_z is not None:
                model.static_z.add_(torch.randn_like(model.static_z))
    return model


@pytest.fixture(params=["cumulative", "chunked", "sdpa"])
def pool_impl(request, monkeypatch):
    """Every prefix-pool implementation must satisfy the causal contracts. The chunk is shrunk
    to 5 so that T = 16 spans several chunks and a padded last one."""
    monkeypatch.setattr(M, "PREFIX_POOL_IMPL", request.param)
    monkeypatch.setattr(M, "POOL_CHUNK", 5)
    return request.param


# 1. causality --------------------------------------------------------------------------------


def _perturb_after(idx, t, vocab):
    other = idx.clone()
    other[:, t + 1 :] = (other[:, t + 1 :] + 1 + torch.arange(other.size(1) - t - 1)) % vocab
    assert (other[:, t + 1 :] != idx[:, t + 1 :]).all()
    return other


@pytest.mark.parametrize("variant", ["none", "causal", "tonic", "static"])
def test_causality(variant, pool_impl):
    model = make(variant, lively=True)
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (2, 16))
    t = 6
    a = model(idx, return_signals=True)
    b = model(_perturb_after(idx, t, 50), return_signals=True)
    torch.testing.assert_close(a.logits[:, : t + 1], b.logits[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a.logits[:, t + 1 :], b.logits[:, t + 1 :], atol=1e-4)  # the test can see a change
    if variant != "none":
        torch.testing.assert_close(a.signals[:, : t + 1], b.signals[:, : t + 1], atol=1e-6, rtol=0)


def test_asrun_leaks_the_future_and_causal_pool_removes_it(pool_impl):
    """Documents the original's leak: asrun pools over the whole window, so the future changes
    the signals and logits at earlier positions. causal_pool=True (the audit) removes it."""
    model = make("asrun", lively=True)
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (2, 16))
    other = _perturb_after(idx, 6, 50)
    a, b = model(idx, return_signals=True), model(other, return_signals=True)
    assert (a.signals[:, :7] - b.signals[:, :7]).abs().max() > 1e-5
    assert (a.logits[:, :7] - b.logits[:, :7]).abs().max() > 1e-6
    a, b = model(idx, return_signals=True, causal_pool=True), model(other, return_signals=True, causal_pool=True)
    torch.testing.assert_close(a.signals[:, :7], b.signals[:, :7], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.logits[:, :7], b.logits[:, :7], atol=1e-6, rtol=0)


def _naive_prefix_pool(scores, v):
    T = scores.size(1)
    out = [torch.einsum("bth,bthd->bhd", torch.softmax(scores[:, : t + 1].double(), dim=1), v[:, : t + 1].double())
           for t in range(T)]
    return torch.stack(out, dim=1)


POOL_CASES = [(16, 4), (13, 4), (7, 32), (30, 7), (1, 4)]


def _pool_scores(T, spread, seed):
    """Scores (2, T, 3) and values (2, T, 3, 5). spread 40 crosses POOL_SPREAD part way along
    the rows (the cumulative pool hands those rows to the chunked one); 1000 crosses it at once,
    and exp() of raw scores would overflow."""
    torch.manual_seed(seed)
    scores = torch.randn(2, T, 3)
    if spread == 40.0:  # a slow climb: each row's running max passes s_0 + 30 somewhere in the middle
        scores = scores + torch.linspace(0, spread, T).view(1, T, 1)
    else:
        scores = scores * spread
    return scores, torch.randn(2, T, 3, 5)


@pytest.mark.parametrize("impl", ["cumulative", "chunked"])
@pytest.mark.parametrize("T,chunk", POOL_CASES)
@pytest.mark.parametrize("spread", [1.0, 40.0, 1000.0])
def test_prefix_softmax_pool_matches_naive(T, chunk, spread, impl, monkeypatch):
    monkeypatch.setattr(M, "PREFIX_POOL_IMPL", impl)
    scores, v = _pool_scores(T, spread, T)
    got = M.prefix_softmax_pool(scores, v, chunk=chunk)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), _naive_prefix_pool(scores, v), atol=1e-5, rtol=1e-5)


def test_the_slow_climb_really_mixes_the_two_pools():
    """The known answer behind spread 40: some rows of each sequence stay in the cumulative pool,
    the later ones cross POOL_SPREAD, so both halves of the selection are exercised."""
    scores, _ = _pool_scores(30, 40.0, 30)
    far = (scores - scores[:, :1]).cummax(dim=1).values > M.POOL_SPREAD
    assert far.any() and not far.all() and not far[:, 0].any()


@pytest.mark.parametrize("impl", ["cumulative", "chunked"])
@pytest.mark.parametrize("T,chunk", POOL_CASES)
@pytest.mark.parametrize("spread", [1.0, 40.0, 1000.0])
def test_prefix_softmax_pool_gradients_match_naive(T, chunk, spread, impl, monkeypatch):
    """Both training paths (cumulative: _CumulativePoolFn, a hand-written backward, with autograd
    through the chunked rows it hands over; chunked: autograd) against autograd through the naive
    per-position softmax in float64; and each forward equals its no-grad forward bit for bit."""
    monkeypatch.setattr(M, "PREFIX_POOL_IMPL", impl)
    scores, v = _pool_scores(T, spread, T)
    g = torch.randn(2, T, 3, 5)
    s32, v32 = scores.clone().requires_grad_(), v.clone().requires_grad_()
    out = M.prefix_softmax_pool(s32, v32, chunk=chunk)
    out.backward(g)
    s64, v64 = scores.double().requires_grad_(), v.double().requires_grad_()
    _naive_prefix_pool(s64, v64).backward(g.double())
    torch.testing.assert_close(s32.grad.double(), s64.grad, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(v32.grad.double(), v64.grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert torch.equal(out.detach(), M.prefix_softmax_pool(scores, v, chunk=chunk))


@pytest.mark.parametrize("impl", ["cumulative", "chunked"])
@pytest.mark.parametrize("future", [1.0, 1000.0])
def test_prefix_softmax_pool_is_causal_bit_for_bit(impl, future, monkeypatch):
    """Rows ≤ t do not change by a single bit when the scores and values after t change, not
    even when the future's scores leap far past POOL_SPREAD (future 1000: the cumulative pool
    then pools those later rows by chunks, and must leave the earlier rows as they were); and no
    gradient from rows ≤ t reaches a later position."""
    monkeypatch.setattr(M, "PREFIX_POOL_IMPL", impl)
    monkeypatch.setattr(M, "POOL_CHUNK", 5)
    torch.manual_seed(3)
    T, t = 23, 8
    scores, v = torch.randn(2, T, 3), torch.randn(2, T, 3, 5)
    other_s, other_v = scores.clone(), v.clone()
    other_s[:, t + 1 :] = torch.randn(2, T - t - 1, 3) * future
    other_v[:, t + 1 :] = torch.randn(2, T - t - 1, 3, 5)
    a, b = M.prefix_softmax_pool(scores, v), M.prefix_softmax_pool(other_s, other_v)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the test can see a change
    s, vv = other_s.clone().requires_grad_(), other_v.clone().requires_grad_()
    M.prefix_softmax_pool(s, vv)[:, : t + 1].sum().backward()
    assert (s.grad[:, t + 1 :] == 0).all() and (vv.grad[:, t + 1 :] == 0).all()
    assert s.grad[:, : t + 1].abs().sum() > 0 and vv.grad[:, : t + 1].abs().sum() > 0


@pytest.mark.parametrize("impl", ["cumulative", "chunked"])
def test_prefix_softmax_pool_takes_an_empty_batch(impl, monkeypatch):
    monkeypatch.setattr(M, "PREFIX_POOL_IMPL", impl)
    assert M.prefix_softmax_pool(torch.zeros(0, 7, 3), torch.zeros(0, 7, 3, 5)).shape == (0, 7, 3, 5)


def test_the_cpu_pools_cumulatively_and_autocast_by_chunks():
    """PREFIX_POOL_IMPL "auto": the hand-written cumulative pool on the CPU in fp32; under autocast
    autograd through the chunked pool (as on CUDA), the same values to bf16 rounding."""
    assert M.PREFIX_POOL_IMPL == "auto"
    torch.manual_seed(0)
    scores, v = torch.randn(2, 16, 3, requires_grad=True), torch.randn(2, 16, 3, 5, requires_grad=True)
    out = M.prefix_softmax_pool(scores, v)
    assert "CumulativePoolFn" in type(out.grad_fn).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = M.prefix_softmax_pool(scores.bfloat16(), v.bfloat16())
    assert "CumulativePoolFn" not in type(mixed.grad_fn).__name__
    torch.testing.assert_close(mixed.float(), out, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("impl", ["cumulative", "chunked"])
def test_prefix_pool_implementations_agree(impl, monkeypatch):
    model = make("causal")
    e = torch.randn(3, 16, 32) * 5.0  # wide score range
    with torch.no_grad():
        monkeypatch.setattr(M, "PREFIX_POOL_IMPL", "sdpa")
        ref = model.controller.pool(e, causal=True)
        monkeypatch.setattr(M, "PREFIX_POOL_IMPL", impl)
        fast = model.controller.pool(e, causal=True)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)


def test_block_applies_signals_as_specified():
    """x = x + g·Attn(N(x)) with β·q, then x = x + g·γ·FFN(N(x)), written out by hand."""
    model = make("causal", lively=True, n_layer=1)
    idx = torch.randint(0, 50, (2, 16))
    B, T, C, H = 2, 16, 32, 2
    with torch.no_grad():
        out = model(idx, return_signals=True)
        g, beta, gamma = out.signals[:, :, 0].unbind(-1)  # (B, T) each
        blk = model.blocks[0]
        x = model.tok_emb(idx) + model.pos_emb.weight[:T]
        h = blk.norm1(x)
        q, k, v = (h @ blk.attn.qkv.weight.T).split(C, dim=-1)
        q = q * beta[..., None]
        heads = lambda t: t.view(B, T, H, C // H).transpose(1, 2)  # noqa: E731
        att = heads(q) @ heads(k).transpose(-1, -2) / (C // H) ** 0.5
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        a = (att @ heads(v)).transpose(1, 2).reshape(B, T, C) @ blk.attn.proj.weight.T
        x = x + g[..., None] * a
        f = torch.nn.functional.gelu(blk.norm2(x) @ blk.ffn.up.weight.T) @ blk.ffn.down.weight.T
        x = x + (g * gamma)[..., None] * f
        logits = model.norm_f(x) @ model.tok_emb.weight.T
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    # and the signals matter: with all signals at 1 the logits differ
    assert (out.signals - 1).abs().max() > 0.1


# 2. init -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant,expected",
    [("asrun", (1.0, 0.01 + 0.693147, 0.5)), ("causal", (1.0, 1.0, 0.95)), ("static", (1.0, 1.0, 0.95)),
     ("tonic", (1.0, 1.0, 0.95))],
)
def test_init_signal_means(variant, expected):
    torch.manual_seed(0)
    model = Transformer(tiny(variant, d_model=64, n_layer=4, block_size=32)).eval()
    idx = torch.randint(0, 50, (4, 32))
    with torch.no_grad():
        means = model(idx, return_signals=True).signals.mean(dim=(0, 1, 2))
    for name, got, want in zip(SIGNAL_NAMES, means.tolist(), expected):
        assert abs(got - want) < 0.01, f"{variant}: mean {name} {got:.4f}, expected {want:.4f}"


def test_gate_init_is_respected():
    model = make("causal", gate_init=0.8)
    with torch.no_grad():
        s = model(torch.randint(0, 50, (2, 16)), return_signals=True).signals
    assert abs(s[..., 2].mean().item() - 0.8) < 0.01


# 3. phasic vs tonic ----------------------------------------------------------------------------

WORDS = ["the", "dog", "chased", "cat"]


def _sentence(text):
    return torch.tensor([[WORDS.index(w) for w in text.lower().split()]])


@pytest.mark.parametrize("seed", [0, 1])
def test_tonic_is_order_blind_causal_is_not(seed, pool_impl):
    a, b = _sentence("The dog chased the cat"), _sentence("The cat chased the dog")
    assert sorted(a.tolist()[0]) == sorted(b.tolist()[0]) and not torch.equal(a, b)
    with torch.no_grad():
        tonic = make("tonic", seed=seed, lively=True, vocab_size=len(WORDS))
        sa, sb = tonic(a, return_signals=True).signals[0, -1], tonic(b, return_signals=True).signals[0, -1]
        torch.testing.assert_close(sa, sb, atol=1e-6, rtol=0)
        causal = make("causal", seed=seed, vocab_size=len(WORDS))
        ca, cb = causal(a, return_signals=True).signals[0, -1], causal(b, return_signals=True).signals[0, -1]
    assert (ca - cb).abs().max() > 1e-4


# 4. iso-parameter baseline ---------------------------------------------------------------------

SIZES = {
    "xs": dict(d_model=32, n_layer=2, n_head=2, d_ff=64, block_size=32, vocab_size=512),
    "m": dict(d_model=128, n_layer=4, n_head=4, d_ff=512, block_size=128, vocab_size=4096),
    "l": dict(d_model=256, n_layer=6, n_head=8, d_ff=1024, block_size=256, vocab_size=4096),
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_match_params(variant, size):
    cfg = ModelConfig(dropout=0.0, ncn=variant, **SIZES[size])
    base = match_params(cfg)
    want, got = M.count_params(cfg), M.count_params(base)
    print(f"{size:>2} {variant:>6}: {want} params; baseline d_ff {base.d_ff} -> {got} ({(got - want) / want:+.3%})")
    assert base.ncn == "none"
    assert dataclasses.replace(base, d_ff=cfg.d_ff, ncn=cfg.ncn) == cfg  # only d_ff (and ncn) changed
    assert abs(got - want) <= 0.005 * want
    if variant in GATED and size != "xs":
        assert base.d_ff > cfg.d_ff  # the NCN's parameters are really paid for


def test_num_params_counts_the_real_modules():
    model = make("causal")
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert model.num_params() == M.count_params(model.cfg)
    emb = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    assert model.num_params(non_embedding=True) == model.num_params() - emb
    assert model.lm_head.weight is model.tok_emb.weight  # tied, counted once


# 5. KV cache -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_recompute(variant):
    model = make(variant, lively=True)
    torch.manual_seed(2)
    prompt = torch.randint(0, 50, (2, 5))
    # 5 + 20 > block_size 16: covers incremental steps and the sliding-window re-fill
    out_c, logits_c = model.generate(prompt, 20, temperature=0, use_cache=True, return_logits=True)
    out_u, logits_u = model.generate(prompt, 20, temperature=0, use_cache=False, return_logits=True)
    torch.testing.assert_close(logits_c, logits_u, atol=1e-5, rtol=0)
    assert torch.equal(out_c, out_u)
    assert out_c.shape == (2, 25) and torch.equal(out_c[:, :5], prompt)


def test_cached_signals_are_incremental():
    """The pool's running sums after a prefill + steps equal the parallel prefix pool."""
    model = make("causal", lively=True)
    e = torch.randn(2, 10, 32)
    cache = M.KVCache(model.cfg, 2, "cpu", torch.float32)
    with torch.no_grad():
        z_full = model.controller(e, causal=True)
        z = [model.controller.forward_cached(e[:, :4], cache)]
        z += [model.controller.forward_cached(e[:, t : t + 1], cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(z, dim=1), z_full, atol=1e-5, rtol=0)


def test_sampling_top_k_and_temperature():
    model = make("causal")
    prompt = torch.zeros(1, 1, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    out, logits = model.generate(prompt, 8, temperature=1.0, top_k=1, generator=g, return_logits=True)
    assert torch.equal(out[0, 1:], logits[0].argmax(-1))  # top_k=1 is greedy
    assert model.generate(prompt, 3, temperature=0.7, top_k=5, generator=g).shape == (1, 4)


# 6. regulariser and gradients -------------------------------------------------------------------


@pytest.mark.parametrize("variant", NCN_VARIANTS)
def test_reg_by_hand_and_gradients_reach_every_ncn_parameter(variant):
    model = make(variant, reg_lambda=0.3).train()
    torch.manual_seed(3)
    idx = torch.randint(0, 50, (2, 16))
    out = model(idx, targets=torch.roll(idx, -1, 1), return_signals=True)
    s = out.signals.double()
    hand = 0.0
    for i in range(3):  # λ·Σ_s mean((s − 1)²), written out
        vals = s[..., i].flatten().tolist()
        hand += sum((v - 1.0) ** 2 for v in vals) / len(vals)
    assert out.reg.item() == pytest.approx(0.3 * hand, rel=1e-5)
    assert out.loss.item() == pytest.approx(out.ce.item() + out.reg.item(), rel=1e-6)
    out.loss.backward()
    ncn_params = {n: p for n, p in model.named_parameters() if n.startswith(("controller.", "static_z"))}
    assert ncn_params
    for name, p in ncn_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_none_has_zero_reg_and_no_signals():
    model = make("none")
    out = model(torch.randint(0, 50, (2, 8)), targets=torch.randint(0, 50, (2, 8)), return_signals=True)
    assert out.signals is None and out.reg.item() == 0.0 and out.loss.item() == out.ce.item()


def test_signal_maps():
    z = torch.tensor([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0], [-100.0, -100.0, -100.0]])
    s = M.signal_map(z, beta_max=4.0)
    torch.testing.assert_close(s[0], torch.tensor([1.0, 0.01 + 0.693147, 0.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(s[1], torch.tensor([2.0, 4.0, 1.0]))  # β clamped at beta_max
    torch.testing.assert_close(s[2], torch.tensor([0.0, 0.01, 0.0]))


# block skipping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_skip_eps_zero_is_exact_and_above_one_skips_everything(variant):
    model = make(variant)
    idx = torch.randint(0, 50, (2, 16))
    tgt = torch.roll(idx, -1, 1)
    with torch.no_grad():
        full = model(idx, tgt)
        zero = model(idx, tgt, skip_eps=0.0)
        everything = model(idx, tgt, skip_eps=1.01)
    assert zero.loss.item() == full.loss.item() and zero.skip_frac == 0.0 and full.skip_frac is None
    if variant == "none":
        assert everything.skip_frac == 0.0  # no gate, nothing to skip
        return
    assert everything.skip_frac == 1.0
    # skipping every FFN equals the model with its FFNs removed
    with torch.no_grad():
        for block in model.blocks:
            block.ffn.down.weight.zero_()
        no_ffn = model(idx, tgt)
    torch.testing.assert_close(everything.logits, no_ffn.logits, atol=1e-5, rtol=0)


def test_skip_eps_partial_skips_only_low_gates_and_really_skips():
    model = make("causal", lively=True)  # γ spread across (0, 1)
    idx = torch.randint(0, 50, (2, 16))
    calls = []
    model.blocks[0].ffn.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        sig = model(idx, return_signals=True).signals
        eps = sig[..., 2].median().item()
        out = model(idx, skip_eps=eps)
    want = (sig[..., 2] < eps).float().mean().item()
    assert 0 < out.skip_frac < 1 and out.skip_frac == pytest.approx(want)
    assert calls[-1] == int((sig[:, :, 0, 2] >= eps).sum())  # the FFN saw only the kept rows


def test_static_skips_whole_layers():
    model = make("static")
    with torch.no_grad():
        model.static_z[0, 2] = -5.0  # layer 0: γ ≈ 0.007
        out = model(torch.randint(0, 50, (2, 16)), skip_eps=0.5)
    assert out.skip_frac == pytest.approx(0.5)  # one of two layers


# loading and config -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["none", "causal"])
def test_load_model_round_trip(tmp_path, variant):
    model = make(variant)
    path = tmp_path / "model.pt"
    torch.save(M.model_payload(model, variant=variant, size="xs", seed=0, step=3), path)
    loaded, payload = load_model(path)
    assert payload["step"] == 3 and loaded.cfg == model.cfg and not loaded.training
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx).logits, model(idx).logits, atol=0, rtol=0)
    assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(NCNError, match="not found"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(NCNError, match="bad.pt"):
        load_model(bad)


def test_bad_configs_are_user_errors():
    with pytest.raises(NCNError, match="variant"):
        tiny("phasic")
    with pytest.raises(NCNError, match="n_head"):
        tiny("none", n_head=3)
    with pytest.raises(NCNError, match="block_size"):
        make("none")(torch.zeros(1, 17, dtype=torch.long))


def test_init_is_deterministic():
    a, b = make("causal", seed=5), make("causal", seed=5)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


# ---- the CPU kernels (RMSNorm backward, one-exp cross-entropy): torch's numbers to float rounding


def test_rmsnorm_matches_torch_forward_bitwise_and_gradients_to_rounding():
    torch.manual_seed(0)
    ours, ref = M.RMSNorm(24, eps=1e-6), torch.nn.RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x, g = torch.randn(3, 5, 24) * 3, torch.randn(3, 5, 24)
    (xa, ya), (xb, yb) = [(h, m(h)) for m in (ours, ref) for h in [x.clone().requires_grad_()]]
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    assert not torch.equal(xa.grad, torch.zeros_like(xa.grad))


def test_cross_entropy_matches_torch_with_ignored_targets():
    torch.manual_seed(0)
    z, t = torch.randn(40, 11) * 4, torch.randint(0, 11, (40,))
    t[::7] = -1
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    la = M.cross_entropy(za, t)
    lb = torch.nn.functional.cross_entropy(zb, t, ignore_index=-1)
    (la * 2).backward()
    (lb * 2).backward()
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(za.grad[::7], torch.zeros_like(za.grad[::7]))  # ignored rows get no gradient


def test_cross_entropy_near_zero_loss_is_rounded_at_the_loss_not_at_the_logits():
    # A confident row (target ~9 nats above the rest, all logits shifted by +30: CE is shift-invariant) has a
    # loss ~1e-3 far below ulp(max logit) ≈ 4e-6. In log_softmax's order, (max − z_t) + log Σe, the error is
    # that of log Σe with Σe ≈ 1: about ulp(1) = eps. (max + log Σe) − z_t would round at ulp(39) ≈ 32·eps.
    torch.manual_seed(0)
    eps = torch.finfo(torch.float32).eps
    for _ in range(32):
        z, t = torch.randn(1, 11) + 30.0, torch.randint(0, 11, (1,))
        z[0, t] += 9.0
        exact = torch.nn.functional.cross_entropy(z.double(), t).item()
        assert 1e-5 < exact < 0.1
        assert abs(M.cross_entropy(z, t).item() - exact) <= 2 * eps


# ---- bf16 autocast: the signals (and so the regulariser) and the loss stay fp32


@pytest.mark.parametrize("variant", ["causal", "static"])
def test_signals_and_loss_are_fp32_under_bf16_autocast(variant):
    model = make(variant, lively=True)
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, targets=idx, return_signals=True)
        z = model._raw_signals(model.tok_emb(idx), model.tok_emb(idx) + model.pos_emb(torch.arange(12)))
    assert out.signals.dtype == torch.float32 and out.ce.dtype == torch.float32 and out.reg.dtype == torch.float32
    # the map of the (bf16 or fp32) raw z taken in fp32: exactly what fp32 arithmetic gives on those z
    ref = M.signal_map(z.float(), model.cfg.beta_max).expand_as(out.signals)
    assert torch.equal(out.signals, ref)
    out.loss.backward()  # the mixed-precision graph trains
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("field, ok, bad", [("beta_max", 1.01, 1.0), ("gate_init", 0.999, 1.0), ("gate_init", 0.001, 0.0),
                                            ("dropout", 0.0, 1.0)])
def test_model_config_bounds_are_exactly_the_documented_ones(field, ok, bad):
    """beta_max > 1 (β starts at 1), gate_init in (0, 1), dropout in [0, 1): the edge values."""
    base = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64, ncn="causal")
    dataclasses.replace(base, **{field: ok})  # accepted
    with pytest.raises(NCNError, match=field):
        dataclasses.replace(base, **{field: bad})
