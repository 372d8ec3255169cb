"""Micro-benchmark: the causal prefix pool alone: O(T) cumulative sums, O(T·C) chunked prefix softmax, O(T²) SDPA.

Forward+backward of `PrefixPool(causal=True)` at d_model 256, 2 heads, batch 16, for several
sequence lengths; prints milliseconds per call (median). Used to choose `PREFIX_POOL_IMPL`.
    .venv/bin/python bench/prefix_pool.py [--threads 1] [--reps 10]
"""

import argparse
import statistics
import time

from ncn.allocator import keep_freed_memory

keep_freed_memory()  # as `ncn` does, before torch's import: the timed steps run with the pipeline's malloc

import torch  # noqa: E402

import ncn.model as M  # noqa: E402


def time_pool(pool, e, impl, reps):
    M.PREFIX_POOL_IMPL = impl
    times = []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        pool(e, causal=True).sum().backward()
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    pool = M.PrefixPool(a.d_model, a.heads)
    impls = ("cumulative", "chunked", "sdpa")
    print(f"{'T':>6}" + "".join(f" {i + ' ms':>15}" for i in impls))
    for T in a.lengths:
        e = torch.randn(a.batch, T, a.d_model, requires_grad=True)
        print(f"{T:>6}" + "".join(f" {time_pool(pool, e, i, a.reps):>15.2f}" for i in impls))


if __name__ == "__main__":
    main()
