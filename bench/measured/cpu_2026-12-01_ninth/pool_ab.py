"""A/B of the pool change tried in the ninth session and not kept (pool_inplace.patch: the prefix pool's exp
chains in place outside autograd, its masks made once) in one process: `causal` training steps with the
patched pool internals and with those of 42add60 (the model then and now), interleaved with `none`; and the
pool alone, with and without autograd. Paired per-round ratios. Run from the repository root of a checkout
before f5aae90 (2026-12-02): since then ncn.model's pool no longer calls the two names this script swaps, and
both arms would run the same (cumulative) pool."""
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

HERE = Path(__file__).parent


def load_model_source(name: str, patch: Path | None):
    """42add60's src/ncn/model.py, with `patch` applied, as a module of its own."""
    path = Path(tempfile.mkdtemp()) / "model.py"
    path.write_text(subprocess.run(["git", "show", "42add60:src/ncn/model.py"], capture_output=True, text=True,
                                   check=True).stdout)
    if patch is not None:
        subprocess.run(["patch", "-s", str(path), str(patch)], check=True)
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--rounds", type=int, default=30)
p.add_argument("--size", default="s", help="a size of config/default.yaml")
p.add_argument("--steps", type=int, default=3, help="training steps per closure call")
a0 = p.parse_args()
torch.set_num_threads(a0.threads)
torch.manual_seed(0)
OLD, NEW = load_model_source("model_old", None), load_model_source("model_new", HERE / "pool_inplace.patch")


def use(m):  # the Transformer's pool calls these two through ncn.model's globals
    M._prefix_pool_forward, M._PrefixPoolFn = m._prefix_pool_forward, m._PrefixPoolFn


shape = bench.parse_shape(a0.size, load_config("config/default.yaml")["size_defs"])
a = argparse.Namespace(vocab=4096, batch=16, variants=["causal"])
models = bench.build_models(shape, a)
del models["reference"]
steps = bench.train_closures(models, a, torch.device("cpu"), bench.contextlib.nullcontext)
B, T, H, D = 16, shape.seq_len, shape.n_head, shape.d_model // shape.n_head
s = torch.randn(B, T, H, requires_grad=True)
v = torch.randn(B, T, H, D, requires_grad=True)
g = torch.randn(B, T, H, D)


def closure(m, body):
    def run():
        use(m)
        body()
        use(OLD)
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


cl = {"none": closure(OLD, train(steps["none"])), "causal_new": closure(NEW, train(steps["causal"])),
      "causal_old": closure(OLD, train(steps["causal"])), "pool_new": closure(NEW, pool),
      "pool_old": closure(OLD, pool), "ipool_new": closure(NEW, inference_pool), "ipool_old": closure(OLD, inference_pool)}
t = bench.interleave(cl, a0.rounds, 3, lambda: None, "A/B")
for k in cl:
    print(f"{k:12s} median {statistics.median(t[k]) * 1e3:9.2f} ms")
for k, base in [("causal_new", "none"), ("causal_old", "none"), ("causal_new", "causal_old"),
                ("pool_new", "pool_old"), ("ipool_new", "ipool_old")]:
    print(f"{k}/{base}: {bench.paired_ratio(t, k, base)}")
