"""`ncn bench model`: forward+backward speed of every variant against the iso-parameter baseline.

The steps of the variants are interleaved (one step of each, round after round) and the median
step time is reported, so a slow spell on a shared machine hits every variant alike rather than
whichever happened to run then. A benchmark prints a table; it never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import ncn.model as M
from ncn.errors import NCNError
from ncn.fileio import write_csv_rows
from ncn.progress import bar

COLUMNS = ["variant", "d_ff", "n_params", "step_s_median", "step_s_min", "tokens_per_s", "ratio_to_none",
           "pool_impl", "threads", "steps", "batch", "seq_len", "d_model", "n_layer", "n_head", "vocab_size",
           "torch"]


def bench_configs(a) -> dict[str, M.ModelConfig]:
    """Every NCN variant at the given size, plus "none" = match_params of "causal" (its baseline)."""
    kw = dict(vocab_size=a.vocab, block_size=a.seq_len, n_layer=a.n_layer, n_head=a.n_head,
              d_model=a.d_model, d_ff=a.d_ff, dropout=0.0)
    cfgs = {v: M.ModelConfig(ncn=v, **kw) for v in a.variants if v != "none"}
    cfgs = {"none": M.match_params(M.ModelConfig(ncn="causal", **kw)), **cfgs}
    return cfgs


def train_step(model, idx, targets):
    model.zero_grad(set_to_none=True)
    out = model(idx, targets)
    out.loss.backward()


def bench_model(a) -> list[dict]:
    torch.set_num_threads(a.threads)
    M.PREFIX_POOL_IMPL = a.pool_impl
    cfgs = bench_configs(a)
    torch.manual_seed(0)
    models = {v: M.Transformer(c).train() for v, c in cfgs.items()}
    idx = torch.randint(0, a.vocab, (a.batch, a.seq_len))
    targets = torch.roll(idx, -1, dims=1)
    for _ in range(a.warmup):
        for model in models.values():
            train_step(model, idx, targets)
    times: dict[str, list[float]] = {v: [] for v in models}
    for _ in bar(range(a.steps), desc="bench rounds"):
        for v, model in models.items():
            t0 = time.perf_counter()
            train_step(model, idx, targets)
            times[v].append(time.perf_counter() - t0)
    base = statistics.median(times["none"])
    rows = []
    for v, model in models.items():
        med = statistics.median(times[v])
        rows.append(dict(
            variant=v, d_ff=cfgs[v].d_ff, n_params=model.num_params(), step_s_median=round(med, 5),
            step_s_min=round(min(times[v]), 5), tokens_per_s=round(a.batch * a.seq_len / med, 1),
            ratio_to_none=round(med / base, 4), pool_impl=a.pool_impl, threads=a.threads, steps=a.steps,
            batch=a.batch, seq_len=a.seq_len, d_model=a.d_model, n_layer=a.n_layer, n_head=a.n_head,
            vocab_size=a.vocab, torch=torch.__version__,
        ))
    return rows


def format_table(rows) -> str:
    head = f"{'variant':<8} {'d_ff':>5} {'params':>9} {'step s':>8} {'tokens/s':>9} {'× none':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<8} {r['d_ff']:>5} {r['n_params']:>9} {r['step_s_median']:>8.4f} "
                     f"{r['tokens_per_s']:>9.0f} {r['ratio_to_none']:>7.3f}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ncn bench",
        description="Speed benchmarks. 'model': forward+backward tokens/s of each NCN variant and its "
        "step time relative to \"none\", the iso-parameter baseline of \"causal\" (match_params: same "
        "depth/width, wider FFN). Steps are interleaved across variants; medians are reported. "
        "Numbers on a shared machine vary with its load: compare ratios from one run.",
    )
    sub = p.add_subparsers(dest="what", required=True, metavar="what")
    m = sub.add_parser("model", help="forward+backward speed per variant (default: d_model 256, 6 layers, "
                       "8 heads, d_ff 1024, T 256, batch 16, vocab 4096, fp32 CPU)")
    m.add_argument("--out", default="results/bench/model.csv", help="CSV to write (default: %(default)s)")
    m.add_argument("--steps", type=int, default=10, help="timed rounds, one step per variant each (default: %(default)s)")
    m.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    m.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: %(default)s)")
    m.add_argument("--variants", nargs="+", default=list(M.VARIANTS), choices=M.VARIANTS,
                   help="variants to time; \"none\" (the baseline) is always included")
    m.add_argument("--pool-impl", default=M.PREFIX_POOL_IMPL, choices=["chunked", "sdpa"],
                   help="causal prefix pool: O(T·C) chunked prefix softmax or O(T²) SDPA (default: %(default)s)")
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--seq-len", type=int, default=256)
    m.add_argument("--d-model", type=int, default=256)
    m.add_argument("--n-layer", type=int, default=6)
    m.add_argument("--n-head", type=int, default=8)
    m.add_argument("--d-ff", type=int, default=1024)
    m.add_argument("--vocab", type=int, default=4096)
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    for name in ("steps", "threads", "batch", "seq_len"):
        if getattr(a, name) < 1:
            raise NCNError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.warmup < 0:
        raise NCNError(f"--warmup must be >= 0, got {a.warmup}")
    rows = bench_model(a)
    print(f"fp32 CPU, {a.threads} thread(s), batch {a.batch} × T {a.seq_len}, d_model {a.d_model}, "
          f"{a.n_layer} layers, {a.n_head} heads, d_ff {a.d_ff}, vocab {a.vocab}, pool {a.pool_impl}, "
          f"median of {a.steps} steps")
    print(format_table(rows))
    write_csv_rows(a.out, COLUMNS, rows)
    print(f"wrote {a.out}")
    return 0
