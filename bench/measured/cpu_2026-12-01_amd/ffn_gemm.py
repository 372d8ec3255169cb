"""The FFN's GEMMs at the widths of size s: none's iso-parameter d_ff 322 against causal's 256, and
their FLOP rate (1 thread, fp32, forward + both backward products, median of 50)."""
from ncn.allocator import keep_freed_memory

keep_freed_memory()
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)
N, d = 16 * 128, 64  # tokens of a bench step at s, d_model
for f in (256, 320, 322, 336, 384):
    x, w, g = torch.randn(N, d), torch.randn(f, d), torch.randn(N, f)
    ts = []
    for i in range(60):
        t = time.thread_time()
        x @ w.t()  # forward
        g @ w  # d input
        g.t() @ x  # d weight
        ts.append(time.thread_time() - t)
    s = statistics.median(ts[10:])
    print(f"d_ff {f}: {s * 1e3:.3f} ms, {3 * 2 * N * d * f / s / 1e9:.1f} GFLOP/s")
