"""Where a GPU training step of reference, none and causal goes: launches, kernel time, compile.

    python bench/gpu_profile.py --device cuda --out DIR [--case SHAPE BATCH VOCAB ...] [--compile]
    python bench/gpu_profile.py --device cpu  --out DIR --case d32/L2/T32 2 256   (plumbing check)

For each case (a shape as `ncn bench model` takes it, its batch and vocabulary), under bf16
autocast with the bench's own models and AdamW steps (ncn.bench):
  1. eager step time of every model, interleaved medians;
  2. torch.profiler over a few steps of each: kernels launched per step, the summed kernel time
     per step (the GPU's busy time), so wall / kernel time says how launch-bound a step is, and
     the top ops by self device time (DIR/profile_<case>_<model>.txt);
  3. with --compile, the same steps under torch.compile (compile time apart; each --compile-mode,
     e.g. reduce-overhead for CUDA graphs) and dynamo's graph breaks: causal/none there;
  4. the loss's fp32 cast: ncn.model.cross_entropy (logits.float(), then F.cross_entropy) against
     F.cross_entropy on the autocast logits (which autocast also runs in fp32), timed in `none`.
Writes DIR/gpu_profile.csv and prints a table. Never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

import ncn.model as M
from ncn import bench
from ncn.config import load_config
from ncn.fileio import write_csv_rows

COLUMNS = ["case", "model", "mode", "step_ms", "ratio_to_none", "kernels_per_step", "kernel_ms_per_step",
           "busy_share", "compile_s", "note"]


def timings(steps: dict, rounds: int, sync) -> dict:
    """{name: median seconds}: every closure once per round, interleaved, two untimed rounds first."""
    return {k: statistics.median(v) for k, v in bench.interleave(steps, rounds, 2, sync, "time").items()}


def profile(step, n: int, sync, dev) -> tuple[int, float, str]:
    """(kernels per step, kernel ms per step, top-ops table) of `n` profiled steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step()
        sync()
    kern = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kern) / 1e3
    key = "self_device_time_total" if kern else "self_cpu_time_total"
    return len(kern) // n, busy / n, prof.key_averages().table(sort_by=key, row_limit=18)


def fp32_ce_free(logits, targets):
    """F.cross_entropy on the autocast logits: autocast runs it in fp32 without our explicit cast."""
    return F.cross_entropy(logits, targets, ignore_index=-1)


def run_case(spec: list[str], a, dev, sync) -> list[dict]:
    shape_s, batch, vocab = spec[0], int(spec[1]), int(spec[2])
    shape = bench.parse_shape(shape_s, load_config(a.config)["size_defs"])
    ba = types.SimpleNamespace(vocab=vocab, batch=batch, variants=["none", "causal"])
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)  # noqa: E731
    torch.manual_seed(0)
    models = {k: m.to(dev) for k, m in bench.build_models(shape, ba).items()}
    steps = bench.train_closures(models, ba, dev, autocast)
    med = timings(steps, a.rounds, sync)
    rows, tag = [], shape_s.replace("/", "")
    for k, step in steps.items():
        n_k, busy, table = profile(step, a.profile_steps, sync, dev)
        (a.out / f"profile_{tag}_{k}.txt").write_text(table)
        rows.append(dict(case=shape_s, model=k, mode="eager", step_ms=round(med[k] * 1e3, 3),
                         ratio_to_none=round(med[k] / med["none"], 4), kernels_per_step=n_k,
                         kernel_ms_per_step=round(busy, 3), busy_share=round(busy / (med[k] * 1e3), 3)))
    ce = M.cross_entropy
    try:  # 4. the explicit fp32 cast of the logits, in `none`
        M.cross_entropy = fp32_ce_free
        t = timings({"none": steps["none"]}, a.rounds, sync)["none"]
    finally:
        M.cross_entropy = ce
    rows.append(dict(case=shape_s, model="none", mode="eager, F.cross_entropy on autocast logits",
                     step_ms=round(t * 1e3, 3), ratio_to_none=round(t / med["none"], 4)))
    if a.compile:
        rows += compiled_rows(shape_s, models, ba, dev, autocast, sync, a)
    return rows


def compiled_rows(shape_s, models, ba, dev, autocast, sync, a) -> list[dict]:
    """Every model under torch.compile, once per --compile-mode: step time (compile apart), compile
    time and the graph breaks dynamo counted while compiling it."""
    rows = []
    for mode in a.compile_mode:
        try:
            rows += compiled_mode_rows(shape_s, models, ba, dev, autocast, sync, a, mode)
        except Exception as e:  # one mode failing leaves the others' rows (and the eager ones)
            rows.append(dict(case=shape_s, model="all", mode=f"torch.compile ({mode})",
                             note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
    return rows


def compiled_mode_rows(shape_s, models, ba, dev, autocast, sync, a, mode) -> list[dict]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    compiled = {k: torch.compile(m, mode=mode) for k, m in models.items()}
    steps = bench.train_closures(compiled, ba, dev, autocast)
    if mode == "reduce-overhead":  # CUDA graphs: each step's outputs are the graph's buffers
        steps = {k: (lambda f: lambda: (torch.compiler.cudagraph_mark_step_begin(), f()))(f) for k, f in steps.items()}
    first, breaks = {}, {}
    for k, step in steps.items():  # the first calls compile (forward, then backward)
        counters.clear()
        first[k] = bench.timed(step, sync) + bench.timed(step, sync)
        breaks[k] = sum(counters["graph_break"].values())
    med = timings(steps, a.rounds, sync)
    label = "torch.compile" + ("" if mode == "default" else f" ({mode})")
    return [dict(case=shape_s, model=k, mode=label, step_ms=round(med[k] * 1e3, 3),
                 ratio_to_none=round(med[k] / med["none"], 4), compile_s=round(first[k], 1),
                 note=f"graph breaks {breaks[k]}") for k in steps]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, or cpu for the plumbing check (default: %(default)s)")
    p.add_argument("--case", nargs=3, action="append", metavar=("SHAPE", "BATCH", "VOCAB"),
                   help="a shape (d256/L6/T512 or a size of --config), its batch and vocabulary; repeatable "
                   "(default: d256/L6/T512 16 4096 and paper18m 64 50257)")
    p.add_argument("--config", default="config/paper.yaml", help="sizes named by --case (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds (default: %(default)s)")
    p.add_argument("--profile-steps", type=int, default=4, help="profiled steps per model (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="also time every model under torch.compile")
    p.add_argument("--compile-mode", nargs="+", default=["default"],
                   help="torch.compile modes with --compile: default, reduce-overhead (CUDA graphs), "
                   "max-autotune-no-cudagraphs, ... (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("results/gpu_profile"), help="folder (default: %(default)s)")
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.case or [["d256/L6/T512", "16", "4096"], ["paper18m", "64", "50257"]]:
        t0 = time.perf_counter()
        rows += run_case(spec, a, dev, sync)
        write_csv_rows(a.out / "gpu_profile.csv", COLUMNS, rows)
        print(f"{spec[0]}: {time.perf_counter() - t0:.0f} s", flush=True)
    w = max(len(r["mode"]) for r in rows)
    print(f"{'case':14} {'model':10} {'mode':{w}} {'step ms':>8} {'× none':>7} {'kernels':>8} {'kernel ms':>9} "
          f"{'busy':>5} {'compile s':>9}")
    for r in rows:
        print(f"{r['case']:14} {r['model']:10} {r['mode']:{w}} {r['step_ms']:8.2f} {r['ratio_to_none']:7.3f} "
              f"{r.get('kernels_per_step', ''):>8} {r.get('kernel_ms_per_step', ''):>9} {r.get('busy_share', ''):>5} "
              f"{r.get('compile_s', ''):>9} {r.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
