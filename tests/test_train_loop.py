"""The training loop against its specification (issue 17): what the model is really fed, the lr
really set, the decay groups, grad accumulation, and the window count.

A spy wraps `ncn.train.make_optimizer` (the one place that sees both the model and the optimizer)
and records every forward's (inputs, targets), and at every optimizer step the lr of each group
and the gradients. Expected values come from the specification, computed here independently of
`ncn.batches` and `ncn.train`: the windows of a torch.randperm seeded by the run's seed, nanoGPT's
warmup-then-cosine schedule written out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_train import make_data, read_log, run_train, tiny_config

T = 16  # tiny_config's block_size


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


class Spy:
    def __init__(self):
        self.fed: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x, y) of every forward, in order
        self.lrs: list[list[float]] = []  # per optimizer step: the lr of each param group
        self.grads: list[dict[str, torch.Tensor]] = []  # per optimizer step: the gradients it applies
        self.groups: list[tuple[float, set[str]]] = []  # (weight_decay, parameter names) per group


@pytest.fixture
def spy(monkeypatch):
    import ncn.train

    real, s = ncn.train.make_optimizer, Spy()

    def make_optimizer(model, tc, fused):
        opt = real(model, tc, fused)
        names = {id(p): n for n, p in model.named_parameters()}
        s.groups = [(g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in opt.param_groups]

        def on_forward(module, args, kwargs):
            s.fed.append((args[0].detach().cpu().clone(), args[1].detach().cpu().clone()))

        def on_step(optimizer, args, kwargs):
            s.lrs.append([g["lr"] for g in optimizer.param_groups])
            s.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

        model.register_forward_pre_hook(on_forward, with_kwargs=True)
        opt.register_step_pre_hook(on_step)
        return opt

    monkeypatch.setattr(ncn.train, "make_optimizer", make_optimizer)
    return s


def expected_windows(data, seed: int, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows start .. start+count-1 of the order: x = tokens [k*T, k*T+T), y = the next token of each."""
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64)
    n_win = (len(tokens) - 1) // T
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n_win, generator=gen) for _ in range(start // n_win + count // n_win + 2)])
    ks = order[start:start + count].tolist()
    x = torch.tensor(np.stack([tokens[k * T:k * T + T] for k in ks]))
    y = torch.tensor(np.stack([tokens[k * T + 1:k * T + T + 1] for k in ks]))
    return x, y


# ---- batches -------------------------------------------------------------------------------------


def test_get_windows_targets_are_the_inputs_shifted_by_one():
    from ncn.batches import get_windows

    tokens = np.arange(100, 120, dtype=np.uint16)
    x, y = get_windows(tokens, torch.tensor([2, 0]), 4)
    assert x.tolist() == [[108, 109, 110, 111], [100, 101, 102, 103]]
    assert y.tolist() == [[109, 110, 111, 112], [101, 102, 103, 104]]
    assert x.dtype == y.dtype == torch.int64


def test_n_windows_at_an_exact_multiple_of_the_context():
    from ncn.batches import get_windows, n_windows

    # window k needs tokens k*T .. k*T+T (the last as a target): 16 tokens hold 3 windows of 4, not 4
    assert [n_windows(n, 4) for n in (4, 5, 8, 9, 16, 17)] == [0, 1, 1, 2, 3, 4]
    tokens = np.arange(16, dtype=np.uint16)
    x, y = get_windows(tokens, torch.tensor([n_windows(16, 4) - 1]), 4)
    assert x.tolist() == [[8, 9, 10, 11]] and y.tolist() == [[9, 10, 11, 12]]
    assert y.shape == (1, 4)  # the last window is whole


# ---- what the loop feeds the model ---------------------------------------------------------------

GA_TRAIN = {"tokens": 5 * 2 * 2 * T, "micro_batch": 2, "grad_accum": 2, "ckpt_every": 10}


def test_the_loop_feeds_the_permutation_in_order_without_overlap(data, tmp_path, spy):
    """Micro-batch m of step k is windows ((k-1)*ga + m)*mb .. +mb of the seeded permutation: each
    window once per epoch, none skipped, none drawn twice."""
    cfg = tiny_config(tmp_path, train=GA_TRAIN)
    run_train(cfg, tmp_path / "run", data, seed=3)
    ga, mb, steps = 2, 2, 5
    assert len(spy.fed) == steps * ga
    for i, (x, y) in enumerate(spy.fed):  # forwards run step-major, micro-batch m ascending
        step, m = divmod(i, ga)
        want_x, want_y = expected_windows(data, 3, (step * ga + m) * mb, mb)
        assert torch.equal(x, want_x), (step + 1, m)
        assert torch.equal(y, want_y), (step + 1, m)
        assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one


def test_the_lr_set_at_each_step_is_the_schedule(data, tmp_path, spy):
    """Step k runs at lr_at(k-1): warmup lr*(k)/(warmup+1) for k <= warmup, then cosine to min_lr."""
    lr, min_lr, warmup, steps = 3e-3, 3e-4, 2, 20  # tiny_config's
    cfg = tiny_config(tmp_path, train={"decay_all": False})
    run_train(cfg, tmp_path / "run", data)

    def by_hand(k):
        it = k - 1
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        return min_lr + 0.5 * (1 + math.cos(math.pi * (it - warmup) / (steps - warmup))) * (lr - min_lr)

    assert len(spy.lrs) == steps
    assert all(len(set(g)) == 1 and len(g) == 2 for g in spy.lrs)  # both decay groups, one lr
    set_lr = [g[0] for g in spy.lrs]
    assert set_lr[:3] == pytest.approx([1e-3, 2e-3, 3e-3], rel=1e-12)
    assert set_lr == pytest.approx([by_hand(k) for k in range(1, steps + 1)], rel=1e-12)
    assert set_lr[-1] > min_lr  # the last step is one short of the end of the cosine
    for row in read_log(tmp_path / "run"):  # and the log records the lr that was set
        assert float(row["lr"]) == pytest.approx(set_lr[int(row["step"]) - 1], rel=1e-12)


def test_the_original_schedule_starts_at_zero_and_ends_at_min_lr(data, tmp_path, spy):
    """lr_schedule "original": step k runs at it = k - 1 with lr*it/warmup during warmup (step 1 at
    lr 0), then a cosine whose last step (it = steps - 1) is min_lr exactly."""
    lr, min_lr, warmup, steps = 3e-3, 3e-4, 2, 20  # tiny_config's
    cfg = tiny_config(tmp_path, train={"lr_schedule": "original"})
    run_train(cfg, tmp_path / "run", data)

    def by_hand(k):
        it = k - 1
        if it < warmup:
            return lr * it / warmup
        return min_lr + 0.5 * (1 + math.cos(math.pi * (it - warmup) / (steps - 1 - warmup))) * (lr - min_lr)

    set_lr = [g[0] for g in spy.lrs]
    assert len(set_lr) == steps and set_lr[:3] == pytest.approx([0.0, 1.5e-3, 3e-3], abs=1e-15)
    assert set_lr == pytest.approx([by_hand(k) for k in range(1, steps + 1)], rel=1e-12, abs=1e-15)
    assert set_lr[-1] == pytest.approx(min_lr, rel=1e-12)  # the floor is reached, at the last step
    assert all(a >= b for a, b in zip(set_lr[2:], set_lr[3:]))  # monotone after the warmup


def test_weight_decay_groups_without_decay_all(data, tmp_path, spy):
    """decay_all false: matrices are decayed; embeddings, norms and biases are not."""
    cfg = tiny_config(tmp_path, train={"decay_all": False, "tokens": 2 * 4 * T, "weight_decay": 0.1})
    run_train(cfg, tmp_path / "run", data)
    by_wd = {wd: names for wd, names in spy.groups}
    assert set(by_wd) == {0.1, 0.0}
    decayed, kept = by_wd[0.1], by_wd[0.0]
    assert {"blocks.0.attn.qkv.weight", "blocks.1.ffn.down.weight", "controller.fc1.weight"} <= decayed
    assert {"tok_emb.weight", "pos_emb.weight", "norm_f.weight", "blocks.0.norm1.weight",
            "controller.fc1.bias", "controller.fc2.bias"} <= kept
    assert not decayed & kept
    for name in decayed:
        assert not name.endswith("bias") and "norm" not in name and "emb" not in name, name

    run_train(tiny_config(tmp_path, "all.yaml", train={"decay_all": True, "tokens": 2 * 4 * T}),
              tmp_path / "all", data)
    assert [wd for wd, _ in spy.groups] == [0.1]  # one group, every parameter decayed (the schema's 0.1)


@pytest.mark.parametrize("variant", ["none", "causal"])
def test_grad_accumulation_equals_one_big_batch(data, tmp_path, spy, variant):
    """grad_accum 2 x micro_batch 2 applies the gradient of one batch of 4 (no dropout, no clipping)."""
    common = {"tokens": 4 * T, "grad_clip": 0.0}
    big = tiny_config(tmp_path, "big.yaml", model={"dropout": 0.0}, train={**common, "micro_batch": 4, "grad_accum": 1})
    acc = tiny_config(tmp_path, "acc.yaml", model={"dropout": 0.0}, train={**common, "micro_batch": 2, "grad_accum": 2})
    run_train(big, tmp_path / "big", data, variant=variant)
    run_train(acc, tmp_path / "acc", data, variant=variant)
    (g_big,), (g_acc,) = spy.grads[:1], spy.grads[1:]
    assert torch.equal(torch.cat([x for x, _ in spy.fed[:1]]), torch.cat([x for x, _ in spy.fed[1:]]))
    assert g_big.keys() == g_acc.keys() and len(g_big) > 5
    for name in g_big:
        assert torch.allclose(g_acc[name], g_big[name], rtol=1e-4, atol=1e-7), name


# ---- the recorded batch-order hash ---------------------------------------------------------------


def fed_chain(fed: list[tuple[torch.Tensor, torch.Tensor]], ga: int) -> str:
    """The specified hash: per step, sha256(previous digest || sha256(x || y) of each micro-batch)."""
    import hashlib

    h = b""
    for i in range(0, len(fed), ga):
        parts = [hashlib.sha256(x.numpy().astype("<i8").tobytes() + y.numpy().astype("<i8").tobytes()).digest()
                 for x, y in fed[i:i + ga]]
        h = hashlib.sha256(h + b"".join(parts)).digest()
    return h.hex()


def test_batch_order_hash_is_over_the_token_ids_fed(data, tmp_path, spy):
    cfg = tiny_config(tmp_path, train=GA_TRAIN)
    m = run_train(cfg, tmp_path / "run", data, seed=3)
    assert len(spy.fed) == 5 * 2
    assert m["batch_order_sha256"] == fed_chain(spy.fed, ga=2)


@pytest.mark.parametrize("how", ["swap two micro-batches", "reverse the windows of one micro-batch"])
def test_a_broken_order_changes_the_hash(data, tmp_path, monkeypatch, how):
    """The same windows in another order (the intended order untouched) must give another hash."""
    import ncn.train

    cfg = tiny_config(tmp_path, train=GA_TRAIN)
    good = run_train(cfg, tmp_path / "good", data, seed=3)
    real = ncn.train.draw_batch

    def broken(run, order, step, m):
        if step != 2:
            return real(run, order, step, m)
        if how.startswith("swap"):
            return real(run, order, step, 1 - m)
        x, y = real(run, order, step, m)
        return x.flip(0), y.flip(0)

    monkeypatch.setattr(ncn.train, "draw_batch", broken)
    bad = run_train(cfg, tmp_path / "bad", data, seed=3)
    assert bad["batch_order_sha256"] != good["batch_order_sha256"]


@pytest.mark.parametrize("variant", ["causal", "tonic", "asrun", "static", "none"])
def test_signal_offsets_share_the_no_decay_group(variant):
    """decay_all false: the controller's output bias and static's constants are the same kind of
    parameter (a constant offset of the raw signals z), so neither is decayed (issue 13 item 8)."""
    from test_train import train_config

    from ncn.model import ModelConfig, Transformer
    from ncn.train import make_optimizer

    model = Transformer(ModelConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, d_model=16, d_ff=32,
                                    ncn=variant, ncn_hidden=8))
    opt = make_optimizer(model, train_config(decay_all=False, weight_decay=0.1), fused=False)
    names = {id(p): n for n, p in model.named_parameters()}
    wd = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd.keys() == set(names.values())
    offsets = {"causal": "controller.fc2.bias", "tonic": "controller.fc2.bias", "asrun": "controller.fc2.bias",
               "static": "static_z", "none": None}[variant]
    assert [names[id(p)] for p in model.signal_offsets()] == ([offsets] if offsets else [])
    if offsets:
        assert wd[offsets] == 0.0
    assert wd["blocks.1.ffn.up.weight"] == 0.1 and wd["tok_emb.weight"] == 0.0


def test_fused_adamw_and_autocast_follow_the_device():
    """fused=True reaches AdamW (CUDA's fused kernel; torch has a fused CPU AdamW too, so it is
    checkable here); training autocasts to bf16 on CUDA only, never on the CPU."""
    import contextlib
    import warnings

    from test_train import train_config

    from ncn.model import ModelConfig, Transformer
    from ncn.train import _autocast, make_optimizer

    model = Transformer(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, d_model=16, d_ff=32))
    assert make_optimizer(model, train_config(), fused=True).defaults["fused"] is True
    assert not make_optimizer(model, train_config(), fused=False).defaults["fused"]
    assert isinstance(_autocast(torch.device("cpu")), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on a CPU machine
        ac = _autocast(torch.device("cuda"))
    assert isinstance(ac, torch.autocast) and ac.device == "cuda" and ac.fast_dtype == torch.bfloat16


def test_faults_read_their_environment_variables(monkeypatch):
    """The fault hooks the slow tests drive (NCN_FAULT_*, the module docstring): read by name, unset = none."""
    from ncn.train import Faults

    for name in ("NCN_FAULT_NAN_AT_STEP", "NCN_FAULT_KILL_AT_STEP", "NCN_FAULT_STEP_DELAY_S"):
        monkeypatch.delenv(name, raising=False)
    assert Faults.from_env() == Faults(None, None, 0.0)
    monkeypatch.setenv("NCN_FAULT_NAN_AT_STEP", "3")
    monkeypatch.setenv("NCN_FAULT_KILL_AT_STEP", "5")
    monkeypatch.setenv("NCN_FAULT_STEP_DELAY_S", "0.25")
    assert Faults.from_env() == Faults(3, 5, 0.25)


def test_verify_says_why_a_checkpoint_is_unusable(tmp_path):
    """checkpoint.verify: None for a file matching its digest; otherwise the reason the log shows
    when the checkpoint is skipped (no digest: an interrupted save; a wrong digest: corrupt)."""
    import hashlib

    from ncn.checkpoint import verify

    path = tmp_path / "step_000001.pt"
    path.write_bytes(b"weights")
    assert verify(path) == "no .sha256 beside it (interrupted while saving?)"
    digest = tmp_path / "step_000001.pt.sha256"
    digest.write_text(hashlib.sha256(b"weights").hexdigest() + "\n")
    assert verify(path) is None
    path.write_bytes(b"weightz")
    assert verify(path).startswith("sha256 mismatch") and "truncated or corrupt" in verify(path)


def test_cuda_graphs_only_where_they_were_checked(monkeypatch):
    """train.compile_mode reduce-overhead replays CUDA graphs: on a GPU only, and refused with
    gradient accumulation or several processes (measured on an H200: accumulating over replays reads
    overwritten graph outputs). Everything else compiles as asked, or not at all on the CPU."""
    import dataclasses
    import types

    from test_train import train_config

    import ncn.train as T
    from ncn.errors import NCNError

    compiled = []
    monkeypatch.setattr(T.torch, "compile", lambda m, mode: compiled.append(mode) or m)

    def run(device, accum=1, world=1, **tc):
        r = types.SimpleNamespace(tc=dataclasses.replace(train_config(), grad_accum=accum, **tc),
                                  device=torch.device(device), dist=T.Dist(world=world))
        r.graphs = T.Run.graphs.fget(r)
        return r

    graphs = {"compile": True, "compile_mode": "reduce-overhead"}
    model = torch.nn.Linear(2, 2)
    assert run("cuda", **graphs).graphs and not run("cpu", **graphs).graphs
    assert not run("cuda", compile=True).graphs and not run("cuda", compile=False, compile_mode="reduce-overhead").graphs
    assert T._wrap(run("cuda", **graphs), model) is model and compiled == ["reduce-overhead"]
    assert T._wrap(run("cuda", compile=True), model) is model and compiled[-1] == "default"
    assert T._wrap(run("cpu", **graphs), model) is model and len(compiled) == 2  # never on the CPU
    for bad in (run("cuda", accum=2, **graphs), run("cuda", world=2, **graphs)):
        with pytest.raises(NCNError, match="reduce-overhead .* needs train.grad_accum 1 and one process"):
            T._wrap(bad, model)
