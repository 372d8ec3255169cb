"""A/B of the ninth session's pool change (in place, kept masks) in one process: `causal` training steps with the
new pool internals and with those of 42add60, interleaved with `none`; and the pool alone, with and without
autograd. Paired per-round ratios. Run from the repository root with PYTHONPATH=src."""
import sys, importlib.util, argparse, statistics, time, torch
sys.path.insert(0, "src")
import ncn.model as M
import os, subprocess, tempfile
OLD_PATH = os.path.join(tempfile.mkdtemp(), "model_old.py")
open(OLD_PATH, "w").write(subprocess.run(["git", "show", "42add60:src/ncn/model.py"], capture_output=True, text=True, check=True).stdout)
from ncn import bench
spec = importlib.util.spec_from_file_location("oldmodel", OLD_PATH); OLD = importlib.util.module_from_spec(spec)
sys.modules["oldmodel"] = OLD; spec.loader.exec_module(OLD)
p = argparse.ArgumentParser(); p.add_argument("--threads", type=int, default=2); p.add_argument("--rounds", type=int, default=30)
p.add_argument("--size", default="s"); p.add_argument("--steps", type=int, default=3); a0 = p.parse_args()
torch.set_num_threads(a0.threads); torch.manual_seed(0)
NEW = (M._prefix_pool_forward, M._PrefixPoolFn)
def use(old): M._prefix_pool_forward, M._PrefixPoolFn = (OLD._prefix_pool_forward, OLD._PrefixPoolFn) if old else NEW
shapes = {"s": bench.Shape("s", 64, 2, 2, 256, 128), "m": bench.Shape("m", 96, 3, 3, 384, 128), "l": bench.Shape("l", 128, 4, 4, 512, 128)}
a = argparse.Namespace(vocab=4096, batch=16, variants=["causal"])
models = bench.build_models(shapes[a0.size], a); del models["reference"]
steps = bench.train_closures(models, a, torch.device("cpu"), bench.contextlib.nullcontext)
def wrap(fn, old):
    def run():
        use(old)
        for _ in range(a0.steps): fn()
        use(False)
    return run
B, T, H, D = 16, 128, shapes[a0.size].d_model // 32, 32
s = torch.randn(B, T, H, requires_grad=True); v = torch.randn(B, T, H, D, requires_grad=True); g = torch.randn(B, T, H, D)
def pool(old):
    def run():
        use(old)
        for _ in range(20): M.prefix_softmax_pool(s, v).backward(g)
        use(False)
    return run
def ipool(old):
    def run():
        use(old)
        with torch.inference_mode():
            for _ in range(20): M.prefix_softmax_pool(s, v)
        use(False)
    return run
cl = {"none": wrap(steps["none"], False), "causal_new": wrap(steps["causal"], False), "causal_old": wrap(steps["causal"], True),
      "pool_new": pool(False), "pool_old": pool(True), "ipool_new": ipool(False), "ipool_old": ipool(True)}
t = bench.interleave(cl, a0.rounds, 3, lambda: None, "A/B")
for k in cl: print(f"{k:12s} median {statistics.median(t[k]) * 1e3:9.2f} ms")
for k, base in [("causal_new", "none"), ("causal_old", "none"), ("causal_new", "causal_old"), ("pool_new", "pool_old"), ("ipool_new", "ipool_old")]:
    print(f"{k}/{base}: {bench.paired_ratio(t, k, base)}")
