"""A/B of the tenth session's prefix pool (cumulative sums against position 0's score, rows past POOL_SPREAD
pooled by chunks; PREFIX_POOL_IMPL "auto") against fec2fc3's (chunked, hand-written backward) in one process:
`causal` training steps with each, interleaved with `none`; and the pool alone, with and without autograd.
Paired per-round ratios. Run from the repository root at the commit that landed the change."""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "src")
import torch  # noqa: E402

import ncn.model as M  # noqa: E402
from ncn import bench  # noqa: E402
from ncn.config import load_config  # noqa: E402


def load_model_source(name: str, rev: str):
    """src/ncn/model.py at `rev` as a module of its own."""
    path = Path(tempfile.mkdtemp()) / "model.py"
    path.write_text(subprocess.run(["git", "show", f"{rev}:src/ncn/model.py"], capture_output=True, text=True,
                                   check=True).stdout)
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--rounds", type=int, default=30)
p.add_argument("--size", default="s", help="a size of config/default.yaml")
p.add_argument("--steps", type=int, default=3, help="training steps per closure call")
p.add_argument("--batch", type=int, default=16)
a0 = p.parse_args()
torch.set_num_threads(a0.threads)
torch.manual_seed(0)
OLD, NEW = load_model_source("model_old", "fec2fc3"), M


shape = bench.parse_shape(a0.size, load_config("config/default.yaml")["size_defs"])
a = argparse.Namespace(vocab=4096, batch=a0.batch, variants=["causal"])
models = bench.build_models(shape, a)
del models["reference"]
steps = bench.train_closures(models, a, torch.device("cpu"), bench.contextlib.nullcontext)
B, T, H, D = a0.batch, shape.seq_len, 2, shape.d_model // 2  # the NCN pool has 2 heads
s = torch.randn(B, T, H, requires_grad=True)
v = torch.randn(B, T, H, D, requires_grad=True)
g = torch.randn(B, T, H, D)
pools = {"old": OLD.prefix_softmax_pool, "new": NEW.prefix_softmax_pool}  # PrefixPool.forward calls M's


def closure(which, body):
    def run():
        M.prefix_softmax_pool = pools[which]
        body()
        M.prefix_softmax_pool = pools["new"]
    return run


def train(fn):
    return lambda: [fn() for _ in range(a0.steps)]


def pool():
    for _ in range(20):
        M.prefix_softmax_pool(s, v).backward(g)


def inference_pool():
    with torch.inference_mode():
        for _ in range(20):
            M.prefix_softmax_pool(s, v)


cl = {"none": closure("new", train(steps["none"])), "causal_new": closure("new", train(steps["causal"])),
      "causal_old": closure("old", train(steps["causal"])), "pool_new": closure("new", pool),
      "pool_old": closure("old", pool), "ipool_new": closure("new", inference_pool),
      "ipool_old": closure("old", inference_pool)}
t = bench.interleave(cl, a0.rounds, 3, lambda: None, "A/B")
print(f"size {a0.size}, {a0.threads} threads, batch {B}, pool D {D}, {a0.rounds} rounds of {a0.steps} steps")
for k in cl:
    print(f"{k:12s} median {statistics.median(t[k]) * 1e3:9.2f} ms")
for k, base in [("causal_new", "none"), ("causal_old", "none"), ("causal_new", "causal_old"),
                ("pool_new", "pool_old"), ("ipool_new", "ipool_old")]:
    print(f"{k}/{base}: {bench.paired_ratio(t, k, base)}")
