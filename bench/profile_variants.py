"""Where the step time of `causal` over `none`, and of `none` over the textbook reference, goes.

    .venv/bin/python bench/profile_variants.py [--shapes s l] [--threads 1] [--cpu-clock] [--profiler]

For each shape (sizes of --config or d<d>/L<layers>/T<context>, as `ncn bench model`):
  1. whole training steps (forward + backward + AdamW) of reference, none and causal, interleaved;
  2. the pieces that differ, each timed forward + backward (interleaved, medians) and multiplied
     by how often one step runs it: the norms (RMSNorm vs LayerNorm), the controller's pool
     (its Linears and the prefix softmax), its head, signal_map, the regulariser, the signal
     plumbing of a block (a block with signals minus one without), the FFN that `none` has wider;
  3. proposed replacements for ncn.model, timed the same way, with their largest deviation from
     the current code (forward bitwise where stated): a custom-backward RMSNorm, the pool's key
     folded into its query (no key projection), the gain folded into the residual add, the
     chunked prefix pool (two chunk sizes), the SDPA pool;
  4. with --profiler, torch.profiler's self CPU time per op and step for the three models.
--cpu-clock times with the thread's CPU clock (use it with --threads 1 on a shared machine).
Writes --out (default results/bench/profile.csv). Never asserts.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from ncn.allocator import keep_freed_memory

keep_freed_memory()  # as `ncn` does, before torch's import: the timed steps run with the pipeline's malloc

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ncn.model as M  # noqa: E402
from ncn import bench  # noqa: E402
from ncn.config import load_config  # noqa: E402
from ncn.fileio import write_csv_rows  # noqa: E402

COLUMNS = ["shape", "part", "item", "ms", "per_step", "ms_per_step", "share_of_none_step", "max_abs_diff", "note"]


# ---- proposed replacements for ncn.model (measured here; the lead decides) ---------------------


class RMSNormFn(torch.autograd.Function):
    """nn.RMSNorm with a hand-written backward: forward bitwise equal (same ops, same order)."""

    @staticmethod
    def forward(ctx, x, w, eps):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        xh = x * r
        ctx.save_for_backward(xh, r, w)
        return xh * w

    @staticmethod
    def backward(ctx, g):
        xh, r, w = ctx.saved_tensors
        gw = (g * xh).reshape(-1, xh.size(-1)).sum(0)
        gx = g * w
        return r * (gx - xh * (gx * xh).mean(-1, keepdim=True)), gw, None


def pool_folded(pool, e):
    """PrefixPool.forward(e, causal=True) with the key folded into the query: scores = e·(W_kᵀq)/√hd
    per head, so the key projection (half of pool.kv) is never computed. Same parameters."""
    B, T, d = e.shape
    H, hd = pool.n_heads, pool.head_dim
    wk, wv = pool.kv.weight[:d], pool.kv.weight[d:]
    qk = torch.einsum("hjd,hj->hd", wk.view(H, hd, d), pool.query) / math.sqrt(hd)  # (H, d)
    v = F.linear(e, wv).view(B, T, H, hd)
    return pool.proj(M.prefix_softmax_pool(e @ qk.t(), v).reshape(B, T, d))


def block_gain_folded(blk, x, sig):
    """Block.forward with signals, the gain applied in the residual add (addcmul) instead of as
    a separate multiply inside attention: x + g·proj(y) instead of x + proj(g·y)."""
    g, beta, gamma = sig[..., 0:1], sig[..., 1:2], sig[..., 2:3]
    x = torch.addcmul(x, g, blk.attn(blk.norm1(x), beta, None))
    return torch.addcmul(x, g * gamma, blk.ffn(blk.norm2(x)))


# ---- timing -------------------------------------------------------------------------------------


def clock(a):
    return time.thread_time if a.cpu_clock else time.perf_counter


def interleaved_ms(fns: dict, a, rounds: int) -> dict[str, float]:
    now = clock(a)
    times = {k: [] for k in fns}
    for r in range(rounds + 2):
        for k, f in fns.items():
            t0 = now()
            f()
            if r >= 2:
                times[k].append(now() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def fwd_bwd(fn, *inputs):
    def run():
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
    return run


def pool_with(pool, e, impl, chunk):
    def run():
        before = M.PREFIX_POOL_IMPL, M.POOL_CHUNK
        M.PREFIX_POOL_IMPL, M.POOL_CHUNK = impl, chunk
        try:
            pool(e, causal=True).sum().backward()
        finally:
            M.PREFIX_POOL_IMPL, M.POOL_CHUNK = before
    return run


def whole_steps(shape, a) -> dict[str, float]:
    ba = argparse.Namespace(vocab=a.vocab, batch=a.batch, variants=["causal"])
    models = bench.build_models(shape, ba)
    steps = bench.train_closures(models, ba, torch.device("cpu"), bench.contextlib.nullcontext)
    return interleaved_ms(steps, a, a.rounds)


def pieces(shape, a):
    """{item: (fn, per step)} of the causal model's extra work and its counterparts."""
    kw = dict(vocab_size=a.vocab, block_size=shape.seq_len, n_layer=shape.n_layer, n_head=shape.n_head,
              d_model=shape.d_model, d_ff=shape.d_ff)
    causal = M.Transformer(M.ModelConfig(ncn="causal", **kw))
    none = M.Transformer(M.match_params(M.ModelConfig(ncn="causal", **kw)))
    B, T, d, L = a.batch, shape.seq_len, shape.d_model, shape.n_layer
    x = torch.randn(B, T, d, requires_grad=True)
    ctrl, blk = causal.controller, causal.blocks[0]
    z = ctrl(x, causal=True).detach().requires_grad_()
    sig = M.signal_map(z, 4.0).detach().requires_grad_()
    rms, ln = torch.nn.RMSNorm(d, eps=1e-6), torch.nn.LayerNorm(d)
    return {
        "trunk norm: nn.RMSNorm": (fwd_bwd(rms, x), 2 * L + 1),
        "trunk norm: nn.LayerNorm (reference)": (fwd_bwd(ln, x), 2 * L + 1),
        "pool: kv Linear d->2d": (fwd_bwd(ctrl.pool.kv, x), 1),
        "pool: the module (auto: cumulative)": (pool_with(ctrl.pool, x, "auto", 32), 1),
        "pool: out Linear d->d": (fwd_bwd(ctrl.pool.proj, x), 1),
        "controller head (RMSNorm, fc1, tanh, fc2)": (fwd_bwd(ctrl.head, x, x), 1),
        "signal_map": (fwd_bwd(M.signal_map, z, 4.0), 1),
        "regulariser": (fwd_bwd(causal._reg, sig), 1),
        "block with signals": (fwd_bwd(lambda h: blk(h, sig[:, :, 0])[0], x), L),
        "block without signals": (fwd_bwd(lambda h: blk(h)[0], x), L),
        "FFN of none (wider)": (fwd_bwd(none.blocks[0].ffn, x), L),
        "FFN of causal": (fwd_bwd(blk.ffn, x), L),
    }, (causal, x, sig, rms)


def max_diff(new, old, x) -> str:
    """'forward <max |new - old|>, input grad <...>' for the same input and upstream gradient."""
    outs, grads = [], []
    for f in (new, old):
        h = x.detach().clone().requires_grad_()
        y = f(h)
        y.backward(torch.ones_like(y))
        outs.append(y.detach())
        grads.append(h.grad)
    return f"forward {(outs[0] - outs[1]).abs().max().item():.2e}, grad {(grads[0] - grads[1]).abs().max().item():.2e}"


def proposals(ctx, shape, a):
    """{item: (fn, per step, max |new - current|)} for the proposed replacements."""
    causal, x, sig, rms = ctx
    pool, blk = causal.controller.pool, causal.blocks[0]
    diffs = {
        "RMSNormFn (custom backward)": max_diff(lambda h: RMSNormFn.apply(h, rms.weight, 1e-6), rms, x),
        "pool with the key folded into the query": max_diff(lambda h: pool_folded(pool, h),
                                                            lambda h: pool(h, causal=True), x),
        "block with the gain in the residual add": max_diff(lambda h: block_gain_folded(blk, h, sig[:, :, 0]),
                                                            lambda h: blk(h, sig[:, :, 0])[0], x),
    }
    L = shape.n_layer
    out = {
        "RMSNormFn (custom backward)": (fwd_bwd(lambda h: RMSNormFn.apply(h, rms.weight, 1e-6), x), 2 * L + 2),
        "nn.RMSNorm (current)": (fwd_bwd(rms, x), 2 * L + 2),
        "pool with the key folded into the query": (fwd_bwd(lambda h: pool_folded(pool, h), x), 1),
        "pool (current: cumulative)": (pool_with(pool, x, "auto", 32), 1),
        "pool, chunked 32 (until 2026-12-02)": (pool_with(pool, x, "chunked", 32), 1),
        "pool, chunked 16": (pool_with(pool, x, "chunked", 16), 1),
        "pool, sdpa": (pool_with(pool, x, "sdpa", 32), 1),
        "block with the gain in the residual add": (fwd_bwd(lambda h: block_gain_folded(blk, h, sig[:, :, 0]), x), L),
        "block with signals (current)": (fwd_bwd(lambda h: blk(h, sig[:, :, 0])[0], x), L),
    }
    return {k: (f, n, diffs.get(k, "")) for k, (f, n) in out.items()}


def op_profile(shape, a, top: int = 25) -> list[dict]:
    """torch.profiler: self CPU ms per step of each op, for reference, none and causal."""
    from torch.profiler import ProfilerActivity, profile

    ba = argparse.Namespace(vocab=a.vocab, batch=a.batch, variants=["causal"])
    steps = bench.train_closures(bench.build_models(shape, ba), ba, torch.device("cpu"), bench.contextlib.nullcontext)
    per_op: dict[str, dict[str, float]] = {}
    for name, step in steps.items():
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.rounds):
                step()
        for e in prof.key_averages():
            per_op.setdefault(e.key, {})[name] = e.self_cpu_time_total / a.rounds / 1e3
    ranked = sorted(per_op.items(), key=lambda kv: -max(kv[1].values()))[:top]
    return [dict(shape=shape.name, part="profiler", item=op, ms="", per_step=1,
                 ms_per_step=" ".join(f"{m}={v.get(m, 0.0):.2f}" for m in steps), share_of_none_step="",
                 max_abs_diff="", note="self CPU ms per step: reference, none, causal") for op, v in ranked]


def shape_rows(shape, a) -> list[dict]:
    whole = whole_steps(shape, a)
    none_ms = whole["none"]
    rows = [dict(shape=shape.name, part="step", item=k, ms=round(v, 3), per_step=1, ms_per_step=round(v, 3),
                 share_of_none_step=round(v / none_ms, 4), max_abs_diff="", note="whole training step")
            for k, v in whole.items()]
    table, ctx = pieces(shape, a)
    parts = (("piece", {k: (f, n, "") for k, (f, n) in table.items()}), ("proposal", proposals(ctx, shape, a)))
    for part, items in parts:
        ms = interleaved_ms({k: f for k, (f, _, _) in items.items()}, a, a.rounds)
        rows += [dict(shape=shape.name, part=part, item=k, ms=round(ms[k], 3), per_step=n,
                      ms_per_step=round(ms[k] * n, 3), share_of_none_step=round(ms[k] * n / none_ms, 4),
                      max_abs_diff=diff, note="forward + backward") for k, (_, n, diff) in items.items()]
    return rows + (op_profile(shape, a) if a.profiler else [])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(bench.ROOT / "config" / "default.yaml"))
    p.add_argument("--shapes", nargs="+", default=["s", "l"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-clock", action="store_true", help="time with the thread CPU clock (with --threads 1)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--profiler", action="store_true", help="also torch.profiler's per-op table")
    p.add_argument("--out", default="results/bench/profile.csv")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    sizes = load_config(a.config)["size_defs"]
    rows = [r for s in a.shapes for r in shape_rows(bench.parse_shape(s, sizes), a)]
    print(f"{'shape':<8} {'part':<9} {'item':<44} {'ms':>8} {'×':>3} {'ms/step':>8} {'/ none':>7}  max |diff|")
    for r in rows:
        print(f"{r['shape']:<8} {r['part']:<9} {r['item'][:44]:<44} {r['ms']!s:>8} {r['per_step']!s:>3} "
              f"{r['ms_per_step']!s:>8} {r['share_of_none_step']!s:>7}  {r['max_abs_diff']}")
    write_csv_rows(a.out, COLUMNS, rows)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
