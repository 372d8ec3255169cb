"""ncn.optim.AdamW is torch.optim.AdamW on the CPU, bit for bit, without importing torch._dynamo;
its state dicts interchange with torch's (a checkpoint of either loads into the other)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ncn.optim import AdamW


def model_and_groups(seed: int):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8),
                            torch.nn.Linear(8, 11))
    decay = [p for p in m.parameters() if p.dim() >= 2]
    keep = [p for p in m.parameters() if p.dim() < 2]
    return m, [{"params": decay, "weight_decay": 0.1}, {"params": keep, "weight_decay": 0.0}]


def train(m, opt, steps: int, start: int = 0, lrs=None):
    for k in range(start, start + steps):
        g = torch.Generator().manual_seed(k)
        x = torch.randint(0, 11, (4, 5), generator=g)
        for group in opt.param_groups:
            group["lr"] = (lrs or [3e-3, 1e-2, 5e-4])[k % 3]
        loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), x.roll(1, 1).flatten())
        loss.backward()
        if k == 2:
            m[1].bias.grad = None  # a parameter without a gradient in one step is skipped, as torch skips it
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.95)])
def test_matches_torch_adamw_bitwise(betas):
    a, ga = model_and_groups(0)
    b, gb = model_and_groups(0)
    train(a, AdamW(ga, lr=1e-3, betas=betas), 12)
    train(b, torch.optim.AdamW(gb, lr=1e-3, betas=betas), 12)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_a_different_update_is_caught():
    """The comparison above can fail: another eps moves the parameters off torch's."""
    a, ga = model_and_groups(0)
    b, gb = model_and_groups(0)
    train(a, AdamW(ga, lr=1e-3, eps=1e-6), 3)
    train(b, torch.optim.AdamW(gb, lr=1e-3), 3)
    assert not all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("first, second", [(AdamW, torch.optim.AdamW), (torch.optim.AdamW, AdamW)])
def test_state_dicts_interchange_with_torch(first, second):
    """Resume: 5 steps with one class, state dict, 5 more with the other = 10 steps of torch's."""
    ref, gr = model_and_groups(1)
    train(ref, torch.optim.AdamW(gr, lr=1e-3), 10)
    m, g = model_and_groups(1)
    opt = first(g, lr=1e-3)
    train(m, opt, 5)
    sd = opt.state_dict()
    assert sorted(sd["state"]) == list(range(len(list(m.parameters()))))
    opt2 = second(g, lr=1e-3)
    opt2.load_state_dict(sd)
    train(m, opt2, 5, start=5)
    for (name, pa), pb in zip(m.named_parameters(), ref.parameters()):
        assert torch.equal(pa, pb), name


def test_state_dict_of_another_layout_is_refused():
    m, g = model_and_groups(0)
    opt = AdamW(g)
    with pytest.raises(ValueError, match="param groups of sizes"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})


def test_training_job_start_does_not_import_dynamo():
    """What this class is for: building and stepping the optimizer leaves torch._dynamo unimported
    (torch.optim.AdamW imports it on construction)."""
    code = ("import sys, torch\nfrom ncn.optim import AdamW\nm = torch.nn.Linear(4, 4)\n"
            "opt = AdamW(m.parameters())\nm(torch.ones(2, 4)).sum().backward()\n"
            "torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)\nopt.step()\n"
            "a = 'torch._dynamo' in sys.modules\ntorch.optim.AdamW(m.parameters())\n"
            "print(a, 'torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_zero_grad_and_step_hooks_as_torch():
    m, g = model_and_groups(0)
    opt, seen = AdamW(g), []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append((o, args, kwargs)))
    m(torch.tensor([[1, 2]])).sum().backward()
    opt.step()
    assert seen == [(opt, (), {})]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_defaults_fill_every_group_and_a_plain_list_is_one_group():
    m, _ = model_and_groups(0)
    opt = AdamW(m.parameters(), lr=0.5, betas=(0.8, 0.9), eps=1e-5, weight_decay=0.2)
    (group,) = opt.param_groups
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.5, (0.8, 0.9), 1e-5, 0.2)
    assert group["params"] == list(m.parameters())
    assert torch.optim.AdamW(m.parameters()).state_dict()["param_groups"][0].keys() == opt.state_dict()["param_groups"][0].keys()


def test_defaults_are_torchs():
    m, _ = model_and_groups(0)
    mine, theirs = AdamW(m.parameters()).param_groups[0], torch.optim.AdamW(m.parameters()).param_groups[0]
    assert {k: mine[k] for k in ("lr", "betas", "eps", "weight_decay")} == \
           {k: theirs[k] for k in ("lr", "betas", "eps", "weight_decay")}


def test_three_groups_index_their_parameters_in_order():
    m, _ = model_and_groups(0)
    ps = list(m.parameters())
    opt = AdamW([{"params": ps[:1]}, {"params": ps[1:3]}, {"params": ps[3:]}])
    ref = torch.optim.AdamW([{"params": ps[:1]}, {"params": ps[1:3]}, {"params": ps[3:]}])
    assert [g["params"] for g in opt.state_dict()["param_groups"]] == \
           [g["params"] for g in ref.state_dict()["param_groups"]]


def test_loaded_state_takes_the_parameters_dtype_and_is_a_copy():
    """A state dict saved in another precision (float64 moments, a float64 step) loads as torch
    loads it (the moments in the parameters' dtype, the step as saved); and later steps never write into
    the loaded dict (a checkpoint held in memory stays as saved)."""
    m, g = model_and_groups(0)
    opt = AdamW(g)
    m(torch.tensor([[1, 2]])).sum().backward()
    opt.step()
    sd = opt.state_dict()
    sd64 = {"param_groups": sd["param_groups"],
            "state": {i: {k: v.double() for k, v in s.items()} for i, s in sd["state"].items()}}
    kept = {i: {k: v.clone() for k, v in s.items()} for i, s in sd64["state"].items()}
    ref = torch.optim.AdamW(g)
    ref.load_state_dict(sd64)
    opt2 = AdamW(g)
    opt2.load_state_dict(sd64)
    for p in opt2.state:
        for k, v in opt2.state[p].items():
            assert v.dtype == ref.state[p][k].dtype, k
        assert opt2.state[p]["exp_avg"].dtype == p.dtype and opt2.state[p]["step"].dtype == torch.float64
    same = {"param_groups": sd["param_groups"],  # same dtype and device: nothing forces a copy
            "state": {i: {k: v.clone() for k, v in s.items()} for i, s in sd["state"].items()}}
    kept32 = {i: {k: v.clone() for k, v in s.items()} for i, s in same["state"].items()}
    opt3 = AdamW(g)
    opt3.load_state_dict(same)
    m(torch.tensor([[3, 4]])).sum().backward()
    opt2.step()
    opt3.step()
    for loaded, saved in ((sd64, kept), (same, kept32)):
        for i, s in loaded["state"].items():
            for k, v in s.items():
                assert torch.equal(v, saved[i][k]), (i, k)
