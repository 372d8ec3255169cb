"""The bare pool (scores, values -> pooled; forward + backward), fec2fc3's chunked pool with its hand-written
backward against this session's cumulative pool, 1 thread, CPU clock, 20 interleaved rounds after 4 warm-up ones,
at the third session's shapes T 128 / D 32 and T 512 / D 128 (batch 16, 2 heads). Run from the repository root."""
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "src")
import torch  # noqa: E402

import ncn.model as M  # noqa: E402

path = Path(tempfile.mkdtemp()) / "model_old.py"
path.write_text(subprocess.run(["git", "show", "fec2fc3:src/ncn/model.py"], capture_output=True, text=True,
                               check=True).stdout)
spec = importlib.util.spec_from_file_location("model_old", path)
O = sys.modules["model_old"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(O)
torch.set_num_threads(1)
torch.manual_seed(0)
for T, D in ((128, 32), (512, 128)):
    s = (3 * torch.randn(16, T, 2)).requires_grad_()
    v = torch.randn(16, T, 2, D, requires_grad=True)
    g = torch.randn(16, T, 2, D)
    fns = {"chunked (fec2fc3)": lambda: O.prefix_softmax_pool(s, v), "cumulative": lambda: M.prefix_softmax_pool(s, v)}
    t = {k: [] for k in fns}
    for r in range(24):
        for k, f in fns.items():
            t0 = time.thread_time()
            f().backward(g)
            if r >= 4:
                t[k].append(time.thread_time() - t0)
    print(f"T {T} D {D}: " + ", ".join(f"{k} {statistics.median(x) * 1e3:.2f} ms" for k, x in t.items()))
