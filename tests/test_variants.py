"""The variant registry (ncn.variants, issue 11): one entry per variant, read by the model, the
config check, the workflow and the analysis; a new variant without new mechanism is one entry."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from ncn import variants
from ncn.config import load_schema, model_config, validate
from ncn.errors import NCNError
from ncn.model import ModelConfig, Transformer
from ncn.variants import REGISTRY, VariantSpec

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
NEW = "causal_nopos"  # a causal pool over token embeddings only, with the per-token term


def test_schema_enums_equal_the_registry():
    props = load_schema()["properties"]  # the file as written, before the validator fills in the registry
    assert props["variants"]["items"]["enum"] == list(variants.names())
    assert props["ncn_reference"]["enum"] == variants.ncn_names()
    assert props["ncn_reference"]["default"] == variants.PRIMARY


def test_registry_is_well_formed():
    assert list(REGISTRY) == ["none", "asrun", "causal", "tonic", "static", "control"]  # the tables' order
    assert [v for v, s in REGISTRY.items() if s.is_baseline] == [variants.baseline()] == ["none"]
    assert [v for v, s in REGISTRY.items() if s.sees_future] == ["asrun"]
    assert variants.PRIMARY in variants.ncn_names()
    for name, s in REGISTRY.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name  # safe in wildcard_constraints and file names
        assert re.fullmatch(r"#[0-9a-f]{6}", s.colour) and s.label and s.description, name
    assert len({s.colour for s in REGISTRY.values()}) == len(REGISTRY)
    assert variants.spoken_list() == "none, asrun, causal, tonic, static or control"
    assert variants.control_names() == ["control"] and variants.control_names(["causal", "none"]) == []


def test_helpers():
    assert variants.ncn_names(["static", "none", "asrun"]) == ["static", "asrun"]
    assert variants.primary(["none", "tonic", "causal"]) == "causal"
    assert variants.primary(["none", "tonic", "asrun"]) == "tonic"
    assert variants.primary(["none"]) is None
    assert sorted(["static", "bogus", "none", "asrun"], key=variants.order) == ["none", "asrun", "static", "bogus"]
    with pytest.raises(NCNError, match="unknown variant 'bogus' .one of none, asrun, causal, tonic, static"):
        variants.spec("bogus")


@pytest.mark.parametrize("kw, culprit", [
    (dict(pool="global"), "pool"),
    (dict(init="random"), "init"),
    (dict(pool="prefix", static=True), "static"),
    (dict(positions=True), "need a pool"),
    (dict(control=True), "need a pool"),
])
def test_inconsistent_flags_are_refused(kw, culprit):
    with pytest.raises(NCNError, match=culprit):
        VariantSpec(**kw)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_model_follows_the_flags(name):
    s = REGISTRY[name]
    model = Transformer(ModelConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, d_model=16, d_ff=32, ncn=name))
    assert (model.controller is not None) == s.controller
    assert (model.static_z is not None) == s.static
    if s.controller:
        assert model.controller.per_token == s.per_token
        bias = model.controller.fc2.bias.view(2, 3)
        assert bool((bias == 0).all()) == (s.init == "zeroed")


# -- a new variant is one registry entry ---------------------------------------------------------


@pytest.fixture
def new_variant(monkeypatch):
    monkeypatch.setitem(REGISTRY, NEW, VariantSpec(
        pool="prefix", positions=False, per_token=True, init="target", label="causal, no positions",
        colour="#66a61e", description="a causal pool over token embeddings only"))
    return NEW


def _tiny(name, lively=False, pool_weighs=False):
    """A tiny model. At init its signals are nearly constant and its pool nearly a plain mean (which
    is order-blind whatever the input), so: lively scales up the controller (signals vary strongly
    across tokens); pool_weighs scales up the pool (its weights and values depend on the input)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64,
                                    ncn=name, ncn_hidden=16)).eval()
    c = model.controller
    with torch.no_grad():
        scales = {}
        if lively:
            scales = {c.pool.query: 100.0, c.fc1.weight: 5.0, c.fc2.weight: 20.0}
        if pool_weighs:
            scales = {c.pool.query: 10.0, c.pool.kv.weight: 30.0, c.pool.proj.weight: 30.0, c.fc2.weight: 5.0}
        for p, k in scales.items():
            p.mul_(k)
    return model


def test_new_entry_builds_and_its_flags_take_effect(new_variant):
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (2, 16))
    t = 9
    shuffled = idx.clone()
    shuffled[:, :t] = idx[:, torch.randperm(t)]
    future = idx.clone()
    future[:, t + 1:] = (idx[:, t + 1:] + 1) % 50
    for name, order_blind in ((new_variant, True), ("causal", False)):
        model = _tiny(name, lively=True)
        sig = model(idx, return_signals=True).signals
        # a prefix pool: the future never reaches position t
        torch.testing.assert_close(sig[:, : t + 1], model(future, return_signals=True).signals[:, : t + 1],
                                   atol=1e-6, rtol=0)
        # without positions, reordering the prefix leaves position t's signals unchanged; with them it does not
        model = _tiny(name, pool_weighs=True)
        diff = (model(idx, return_signals=True).signals[:, t] - model(shuffled, return_signals=True).signals[:, t])
        assert (diff.abs().max() < 1e-6) if order_blind else (diff.abs().max() > 1e-4), (name, diff.abs().max())
    # init "target": g = 1, β = 1, γ = gate_init on average at init
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64,
                                    ncn=new_variant, gate_init=0.9))
    means = model(idx, return_signals=True).signals.mean(dim=(0, 1, 2))
    torch.testing.assert_close(means, torch.tensor([1.0, 1.0, 0.9]), atol=0.01, rtol=0)


def test_new_entry_trains_one_step(new_variant):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=32, d_ff=64,
                                    ncn=new_variant, ncn_hidden=16)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 50, (4, 16))
    out = model(idx, torch.roll(idx, -1, dims=1))
    assert torch.isfinite(out.loss) and out.reg > 0
    out.loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"controller.pool.query", "controller.fc2.bias", "controller.fc1.weight"} <= moved


def test_new_entry_passes_config_validation(new_variant):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg.update(variants=["none", new_variant], ncn_reference=new_variant)
    validate(cfg)
    ncn = model_config(cfg, new_variant, "xs", 64)
    base = model_config(cfg, "none", "xs", 64)
    assert ncn.ncn == new_variant and base.ncn == "none" and base.d_ff > ncn.d_ff  # matched to the new reference
    from ncn.analysis.plots import variant_colour, variant_label
    from ncn.analysis.rules import claim_variants
    from ncn.analysis.runs import ncn_variants, primary_ncn

    assert ncn_variants(cfg) == [new_variant] and primary_ncn(cfg) == new_variant == claim_variants(cfg)[0]
    assert (variant_colour(new_variant), variant_label(new_variant)) == ("#66a61e", "causal, no positions")
    # ...and an unregistered name is still refused by the same check
    cfg["variants"] = ["none", "causal_typo"]
    with pytest.raises(NCNError, match="causal_typo"):
        validate(cfg)
