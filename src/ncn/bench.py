"""`ncn bench`: speed benchmarks. Tables, never asserts (see bench/README.md).

  model    training-step and evaluation speed of every variant and of a textbook GPT of the same
           shape (bench/reference_gpt.py), at d256/L6/T256 and at every size of a profile, with
           the ratios to the reference and to `none`, and MFU against a GEMM peak measured in the
           same rounds. Everything that is compared is interleaved: one step of each model (and
           one GEMM) per round, medians over rounds, so a slow spell of a shared machine hits
           every model alike.
  startup  process start -> first training step and last step -> exit of a real `ncn train`
           job (a subprocess), plus the import costs (`python -X importtime`).
  stages   per-stage wall time of a Snakemake run from its `benchmark:` TSV files, and the
           Snakemake overhead (the wall time in which no job ran).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from ncn.errors import NCNError
from ncn.fileio import read_csv_rows, write_csv_rows

ROOT = Path(__file__).resolve().parents[2]
BASE_SHAPE = "d256/L6/T256"
MODEL_COLUMNS = [
    "shape", "variant", "d_model", "n_layer", "n_head", "d_ff", "seq_len", "batch", "vocab_size", "n_params",
    "step_s_median", "step_s_min", "tokens_per_s", "ratio_to_reference", "ratio_to_none", "ratio_to_none_paired",
    "ratio_to_none_lo", "ratio_to_none_hi", "ratio_to_reference_paired", "ratio_to_reference_lo", "ratio_to_reference_hi",
    "train_flops_per_token", "mfu", "eval_batch", "eval_tokens_per_s", "eval_ratio_to_reference", "eval_mfu",
    "gemm_flops_per_s", "device", "dtype", "threads", "steps", "pool_impl", "torch", "peak_flops_per_s", "clock",
    "processes",
]
# every timed round (<out>_rounds.csv): phase "train" (the models' steps and the GEMM) or "eval"
ROUND_COLUMNS = ["shape", "phase", "variant", "round", "seconds"]
# pooled over processes (--processes): the median of the processes' values (step_s_min: their minimum)
PROCESS_MEDIANS = ["step_s_median", "tokens_per_s", "ratio_to_reference", "ratio_to_none", "mfu",
                   "eval_tokens_per_s", "eval_ratio_to_reference", "eval_mfu", "gemm_flops_per_s", "peak_flops_per_s"]


# ---- model: shapes and models -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int
    seq_len: int


def parse_shape(spec: str, size_defs: dict) -> Shape:
    """A size name of the config (s, m, paper18m, ...) or 'd256/L6/T256[/H8][/F1024]'
    (default heads d/32, default d_ff 4d)."""
    if spec in size_defs:
        sd = size_defs[spec]
        return Shape(spec, sd["d_model"], sd["n_layer"], sd["n_head"], sd["d_ff"], sd["block_size"])
    parts = dict((p[0], p[1:]) for p in spec.split("/") if p)
    if not {"d", "L", "T"} <= set(parts) or not all(v.isdigit() for v in parts.values()) or set(parts) - set("dLTHF"):
        raise NCNError(f"--shapes: '{spec}' is neither a size of the config ({', '.join(size_defs)}) nor "
                       f"d<d_model>/L<layers>/T<context>[/H<heads>][/F<d_ff>], e.g. {BASE_SHAPE}")
    d = int(parts["d"])
    return Shape(spec, d, int(parts["L"]), int(parts.get("H", max(1, d // 32))), int(parts.get("F", 4 * d)),
                 int(parts["T"]))


def bench_script(name: str):
    """bench/<name>.py as a module (a file of the source checkout, not of the installed package)."""
    path = ROOT / "bench" / f"{name}.py"
    if not path.exists():
        raise NCNError(f"{path} not found: the benchmark scripts live in the repository's bench/ folder; run "
                       "`ncn bench` from a source checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"ncn_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_module():
    """bench/reference_gpt.py: the textbook GPT that `ncn bench model` times beside every variant."""
    return bench_script("reference_gpt")


def variant_names() -> tuple[list[str], str, str]:
    """(every variant, the baseline, the primary NCN whose iso-parameter twin the baseline is)."""
    from ncn import variants as V

    return list(V.names()), V.baseline(), V.PRIMARY


def build_models(shape: Shape, a) -> dict:
    """reference (with the baseline's d_ff), the baseline (match_params of the primary NCN: its
    iso-parameter twin), then the other variants asked for."""
    import ncn.model as M

    _, base, primary = variant_names()
    kw = dict(vocab_size=a.vocab, block_size=shape.seq_len, n_layer=shape.n_layer, n_head=shape.n_head,
              d_model=shape.d_model, d_ff=shape.d_ff, dropout=0.0)
    base_cfg = M.match_params(M.ModelConfig(ncn=primary, **kw))
    ref = reference_module().ReferenceGPT(a.vocab, shape.seq_len, shape.n_layer, shape.n_head, shape.d_model,
                                          base_cfg.d_ff)
    models = {"reference": ref, base: M.Transformer(base_cfg)}
    models.update({v: M.Transformer(M.ModelConfig(ncn=v, **kw)) for v in a.variants if v != base})
    return models


def loss_of(out):
    return out[1] if isinstance(out, tuple) else out.loss  # the reference returns (logits, loss)


def logits_of(out):
    return out[0] if isinstance(out, tuple) else out.logits


def flops_per_token(model, shape: Shape, train: bool) -> int:
    """6·N + 12·L·d·T (training) or 2·N + 4·L·d·T (forward): N = parameters less the position
    embedding (the tied token embedding counts once, as the head's matmul); the attention term
    counts the full T×T scores and weighted sums (PaLM's convention). bench/README.md."""
    n = sum(p.numel() for p in model.parameters()) - model.pos_emb.weight.numel()
    attn = 4 * shape.n_layer * shape.d_model * shape.seq_len
    return 6 * n + 3 * attn if train else 2 * n + attn


# ---- model: timing ------------------------------------------------------------------------------


def device_setup(a):
    """(device, autocast context factory, synchronize) for --device/--dtype."""
    import torch

    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NCNError("--device cuda, but torch sees no CUDA device (use --device cpu)")
    if a.dtype == "bf16":
        autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return dev, autocast, sync


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def timed(fn, sync, clock=time.perf_counter) -> float:
    sync()
    t0 = clock()
    fn()
    sync()
    return clock() - t0


def gemm_closure(a, dev):
    """One square matmul of --gemm-n in the benchmark's dtype: (closure, FLOPs per call)."""
    import torch

    n = a.gemm_n or (8192 if dev.type == "cuda" else 1024)
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    x, y = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    return (lambda: torch.mm(x, y)), 2 * n**3


def interleave(closures: dict, rounds: int, warmup: int, sync, desc: str, clock=time.perf_counter):
    """{name: [seconds per round]}: every closure once per round (in order), `warmup` untimed rounds first."""
    from ncn.progress import bar

    times: dict[str, list[float]] = {k: [] for k in closures}
    for r in bar(range(warmup + rounds), desc=desc, leave=False):
        for k, fn in closures.items():
            t = timed(fn, sync, clock)
            if r >= warmup:
                times[k].append(t)
    return times


def train_closures(models: dict, a, dev, autocast) -> dict:
    import torch

    idx = torch.randint(0, a.vocab, (a.batch, next(iter(models.values())).pos_emb.num_embeddings), device=dev)
    targets = torch.roll(idx, -1, dims=1)

    def make(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_of(model(idx, targets))
            loss.backward()
            opt.step()
        return step

    return {k: make(m.train()) for k, m in models.items()}


def eval_closures(models: dict, a, dev, autocast) -> dict:
    import torch
    import torch.nn.functional as F

    T = next(iter(models.values())).pos_emb.num_embeddings
    idx = torch.randint(0, a.vocab, (a.eval_batch, T), device=dev)
    targets = torch.roll(idx, -1, dims=1)

    def make(model):
        def forward():
            with torch.inference_mode(), autocast():
                logits = logits_of(model(idx)).float()
                F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum").item()
        return forward

    return {k: make(m.eval()) for k, m in models.items()}


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median: the order statistics (x_(k), x_(n+1-k))
    with the largest k whose coverage, by the binomial(n, 1/2) count below the median, is >= level.
    None when n is too small for any such k (n < 6 at 95%)."""
    n, xs = len(xs), sorted(xs)
    below = lambda k: sum(math.comb(n, i) for i in range(k)) / 2**n  # noqa: E731  P(Binom(n, 1/2) < k)
    ks = [k for k in range(1, n // 2 + 1) if 1 - 2 * below(k) >= level]
    return (xs[ks[-1] - 1], xs[n - ks[-1]]) if ks else None


def paired_ratio(times: dict, k: str, base: str) -> tuple:
    """(median, 95% CI low, high) of the per-round ratios t_k / t_base: the rounds are interleaved, so
    each round pairs the two under the same machine state. The CI is ("", "") with too few rounds."""
    ratios = [t / b for t, b in zip(times[k], times[base])]
    ci = median_ci(ratios)
    return (round(statistics.median(ratios), 4), *((round(ci[0], 4), round(ci[1], 4)) if ci else ("", "")))


def target_verdict(lo, hi, target: float, unit: str = "rounds") -> str:
    """met (the interval lies at or under the target), not met (above it), undecided (it straddles);
    no interval: too few `unit` (rounds, or processes with --processes)."""
    if lo == "":
        return f"too few {unit} for an interval"
    return "met" if hi <= target else "not met" if lo > target else "undecided"


def sibling(out, suffix: str) -> Path:
    """<out>'s companion table: model.csv -> model<suffix>.csv."""
    return Path(out).with_name(Path(out).stem + suffix + ".csv")


def round_rows(shape: Shape, phase: str, times: dict) -> list[dict]:
    return [dict(shape=shape.name, phase=phase, variant=k.lstrip("_"), round=i, seconds=round(t, 6))
            for k, ts in times.items() for i, t in enumerate(ts, 1)]


def bench_shape(shape: Shape, a, rounds: list | None = None) -> list[dict]:
    """Rows of one shape: training steps (and one GEMM) interleaved, then evaluation forwards. Every
    timed round goes to `rounds` (ROUND_COLUMNS) when given."""
    import torch

    import ncn.model as M

    dev, autocast, sync = device_setup(a)
    base = variant_names()[1]
    torch.manual_seed(0)
    models = {k: m.to(dev) for k, m in build_models(shape, a).items()}
    gemm, gemm_flops = gemm_closure(a, dev)
    clock = CLOCKS[a.clock]
    train_t = interleave({**train_closures(models, a, dev, autocast), "_gemm": gemm}, a.steps, a.warmup, sync,
                         f"train {shape.name}", clock)
    eval_t = interleave(eval_closures(models, a, dev, autocast), a.steps, a.warmup, sync, f"eval {shape.name}", clock)
    if rounds is not None:
        rounds += round_rows(shape, "train", train_t) + round_rows(shape, "eval", eval_t)
    gemm = gemm_flops / statistics.median(train_t.pop("_gemm"))
    peak = a.peak_flops or gemm
    med = {k: statistics.median(v) for k, v in train_t.items()}
    emed = {k: statistics.median(v) for k, v in eval_t.items()}
    rows = []
    for k, model in models.items():
        tok_s, etok_s = a.batch * shape.seq_len / med[k], a.eval_batch * shape.seq_len / emed[k]
        rows.append(dict(
            shape=shape.name, variant=k, d_model=shape.d_model, n_layer=shape.n_layer, n_head=shape.n_head,
            d_ff=getattr(model, "cfg", models[base].cfg).d_ff, seq_len=shape.seq_len,
            batch=a.batch, vocab_size=a.vocab, n_params=sum(p.numel() for p in model.parameters()),
            step_s_median=round(med[k], 5), step_s_min=round(min(train_t[k]), 5), tokens_per_s=round(tok_s, 1),
            ratio_to_reference=round(med[k] / med["reference"], 4), ratio_to_none=round(med[k] / med[base], 4),
            **dict(zip(("ratio_to_none_paired", "ratio_to_none_lo", "ratio_to_none_hi"), paired_ratio(train_t, k, base))),
            **dict(zip(("ratio_to_reference_paired", "ratio_to_reference_lo", "ratio_to_reference_hi"),
                       paired_ratio(train_t, k, "reference"))),
            train_flops_per_token=flops_per_token(model, shape, True),
            mfu=round(tok_s * flops_per_token(model, shape, True) / peak, 4), eval_batch=a.eval_batch,
            eval_tokens_per_s=round(etok_s, 1), eval_ratio_to_reference=round(emed[k] / emed["reference"], 4),
            eval_mfu=round(etok_s * flops_per_token(model, shape, False) / peak, 4),
            gemm_flops_per_s=round(gemm), peak_flops_per_s=round(peak), device=dev.type, dtype=a.dtype,
            threads=a.threads, steps=a.steps, pool_impl=M.PREFIX_POOL_IMPL, torch=torch.__version__, clock=a.clock,
            processes=1,
        ))
    return rows


def format_model_table(rows) -> str:
    head = (f"{'shape':<14} {'variant':<9} {'params':>9} {'step s':>8} {'tokens/s':>9} {'× ref':>6} {'× none':>7} "
            f"{'MFU':>6} {'eval tok/s':>10} {'eval MFU':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:<14} {r['variant']:<9} {r['n_params']:>9} {r['step_s_median']:>8.4f} "
                     f"{r['tokens_per_s']:>9.0f} {r['ratio_to_reference']:>6.3f} {r['ratio_to_none']:>7.3f} "
                     f"{r['mfu']:>6.1%} {r['eval_tokens_per_s']:>10.0f} {r['eval_mfu']:>8.1%}")
    return "\n".join(lines)


def model_targets(rows) -> list[str]:
    """The issue's speed targets, read off the table (printed, never asserted)."""
    _, base, primary = variant_names()
    out = []
    for r in rows:
        for who, of, col, target in ((base, "reference", "ratio_to_reference", 1.00), (primary, base, "ratio_to_none", 1.05)):
            if r["variant"] == who:
                lo, hi = r[f"{col}_lo"], r[f"{col}_hi"]
                ci = f" [{lo:.3f}, {hi:.3f}]" if lo != "" else ""
                k = int(r["processes"])
                what = "per-round paired ratio" if k == 1 else f"median of {k} processes' paired ratios"
                verdict = target_verdict(lo, hi, target, "rounds" if k == 1 else "processes")
                out.append(f"{r['shape']}: {who} / {of}: {what} {r[f'{col}_paired']:.3f}{ci} (95%), "
                           f"ratio of medians {r[col]:.3f} (target <= {target:.2f}: {verdict})")
    b = [r for r in rows if r["shape"] == BASE_SHAPE and r["variant"] == base]
    if b:
        out.append(f"{BASE_SHAPE}: training MFU of {base} {b[0]['mfu']:.1%} of {b[0]['peak_flops_per_s'] / 1e9:.1f} "
                   f"GFLOP/s (the measured GEMM: {b[0]['gemm_flops_per_s'] / 1e9:.1f}; goal >= 60%)")
    return out


def main_model(a) -> int:
    import torch

    from ncn.config import load_config

    for name in ("steps", "threads", "batch", "eval_batch", "processes"):
        if getattr(a, name) < 1:
            raise NCNError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.warmup < 0:
        raise NCNError(f"--warmup must be >= 0, got {a.warmup}")
    if a.clock == "cpu" and (a.threads != 1 or a.device != "cpu"):
        raise NCNError("--clock cpu (the thread's CPU time) measures a step only with --threads 1 on --device cpu")
    import ncn.model as M

    known = variant_names()[0]
    a.variants = a.variants or known
    bad = [v for v in a.variants if v not in known]
    if bad:
        raise NCNError(f"--variants: unknown {', '.join(bad)} (one of {', '.join(known)})")
    torch.set_num_threads(a.threads)
    M.PREFIX_POOL_IMPL = a.pool_impl
    cfg = load_config(a.config)
    shapes = [parse_shape(s, cfg["size_defs"]) for s in (a.shapes or [BASE_SHAPE, *cfg["sizes"]])]
    print(f"{a.device} {a.dtype}, {a.threads} thread(s), batch {a.batch} (eval {a.eval_batch}), vocab {a.vocab}, "
          f"pool {a.pool_impl}, {a.clock} clock, median of {a.steps} interleaved rounds; reference = "
          "bench/reference_gpt.py", flush=True)
    if a.processes > 1:
        rows = pool_processes(run_processes(a, shapes))
        write_csv_rows(a.out, MODEL_COLUMNS, rows)
        print(f"\nover {a.processes} processes (medians; ratio intervals over the processes' paired ratios):")
        print(format_model_table(rows))
    else:
        rows, rounds = [], []
        for shape in shapes:  # the table grows shape by shape (a long run on a busy machine keeps what it has)
            rows += bench_shape(shape, a, rounds)
            write_csv_rows(a.out, MODEL_COLUMNS, rows)
            write_csv_rows(sibling(a.out, "_rounds"), ROUND_COLUMNS, rounds)
            print(format_model_table([r for r in rows if r["shape"] == shape.name]), flush=True)
    print("\n".join(model_targets(rows)))
    print(f"wrote {a.out}")
    return 0


def run_processes(a, shapes: list[Shape]) -> list[dict]:
    """The bench run `a.processes` times over, each time in a fresh `ncn bench model` process; their
    rows (a `process` column added) also go to <out>_processes.csv, and their rounds to
    <out>_rounds.csv. Rounds inside one process share its memory layout and thread placement, and a
    ratio can differ between processes by more than its in-process interval (bench/README.md), so
    the process is the unit that repeats."""
    opts = {"--config": a.config, "--steps": a.steps, "--warmup": a.warmup, "--threads": a.threads,
            "--clock": a.clock, "--batch": a.batch, "--eval-batch": a.eval_batch, "--vocab": a.vocab,
            "--device": a.device, "--dtype": a.dtype, "--gemm-n": a.gemm_n, "--peak-flops": a.peak_flops,
            "--pool-impl": a.pool_impl}
    args = [str(x) for k, v in opts.items() if v is not None for x in (k, v)]
    args += ["--shapes", *[s.name for s in shapes], "--variants", *a.variants]
    rows, rounds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(1, a.processes + 1):
            print(f"-- process {k}/{a.processes}", flush=True)
            out = Path(tmp) / f"p{k}.csv"
            rc = subprocess.run([sys.executable, "-m", "ncn.cli", "bench", "model", *args, "--out", str(out)],
                                env=_env()).returncode
            if rc:
                raise NCNError(f"--processes: process {k} of {a.processes} exited with {rc} (its output is above)")
            rows += [{**r, "process": k} for r in read_csv_rows(out)]
            rounds += [{**r, "process": k} for r in read_csv_rows(sibling(out, "_rounds"))]
    write_csv_rows(sibling(a.out, "_processes"), MODEL_COLUMNS + ["process"], rows)
    write_csv_rows(sibling(a.out, "_rounds"), ROUND_COLUMNS + ["process"], rounds)
    return rows


def pool_processes(rows: list[dict]) -> list[dict]:
    """One row per (shape, variant) from per-process rows: the median over processes of each
    PROCESS_MEDIANS column, the least step_s_min, and each paired ratio as the median of the
    processes' own paired medians, with a distribution-free 95% interval over those (median_ci:
    6 processes at least, else no interval and no verdict)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["variant"]), []).append(r)
    out = []
    for rs in groups.values():
        row = {c: rs[0].get(c, "") for c in MODEL_COLUMNS}
        for c in PROCESS_MEDIANS:
            row[c] = round(statistics.median(float(r[c]) for r in rs), 5)
        row["step_s_min"] = min(float(r["step_s_min"]) for r in rs)
        row["n_params"], row["processes"] = int(rs[0]["n_params"]), len(rs)
        for name in ("ratio_to_none", "ratio_to_reference"):
            xs = [float(r[f"{name}_paired"]) for r in rs]
            ci = median_ci(xs)
            row[f"{name}_paired"] = round(statistics.median(xs), 4)
            row[f"{name}_lo"], row[f"{name}_hi"] = (round(ci[0], 4), round(ci[1], 4)) if ci else ("", "")
        out.append(row)
    return out


# ---- startup: a real `ncn train` job, timed from outside and from inside -------------------------

# Run as `python -c PROBE <ncn args>`: `ncn.probe` stamps the first forward (step 1 begins) and every
# optimizer step; the parent stamps the process start and its exit. Each stamp is (wall, CPU
# seconds of the process): on a shared machine the CPU seconds are the steadier measure. A job that
# runs in a fork of the pipeline's server (NCN_BENCH_PROBE=child) is stamped there, from the fork on.
PROBE = r"""
import atexit, json, os, sys, time
T = {"interpreter": (time.time(), time.process_time())}
if os.environ.get("NCN_BENCH_PROBE") == "child":
    atexit.register(lambda: print("NCN_BENCH_TIMES " + json.dumps(T), file=sys.stderr, flush=True))
else:
    import torch
    from ncn.probe import install, now
    T["torch_imported"] = now()
    install(T)
from ncn.cli import run
run()  # what the `ncn` script runs
"""
PHASES = {  # name -> (from stamp, to stamp); "start" and "exit" are the parent's
    "start_to_first_step": ("start", "first_forward"),
    "interpreter_start": ("start", "interpreter"),
    "import_torch": ("interpreter", "torch_imported"),
    "torch_to_first_step": ("torch_imported", "first_forward"),
    "start_to_fork": ("start", "forked"),
    "fork_to_first_step": ("forked", "first_forward"),
    "first_step": ("first_forward", "first_step_done"),
    "training": ("first_forward", "last_step_done"),
    "last_step_to_exit": ("last_step_done", "exit"),
    "last_step_to_atexit": ("last_step_done", "atexit"),
    "total": ("start", "exit"),
}
# the cases whose job belongs to a pipeline with a server: the job runs in a fork of the server (its
# MLflow work in another), or in its own process (only its MLflow work in a fork)
SERVED_CASES = {"mlflow_server": {"NCN_BENCH_PROBE": "child"}, "mlflow_server_own_process": {"NCN_FORK_JOBS": "0"}}
STARTUP_COLUMNS = ["case", "what", "seconds_median", "seconds_min", "cpu_s_median", "repeats", "note"]


def _env() -> dict:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else "")}


def _ncn(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "ncn.cli", *args], env=_env(), capture_output=True, text=True)
    if r.returncode:
        raise NCNError(f"`ncn {' '.join(args)}` failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    return r.stdout


def startup_inputs(a, work: Path) -> tuple[dict[str, Path], Path]:
    """({case: config JSON}, data folder): the config with MLflow on (a fresh store, created
    untimed), logging in the job ("mlflow") or in a pipeline with `ncn mlflow-serve`
    (`SERVED_CASES`, `serve_pipeline`), and off; the data: --data, else built from the config
    (ncn data ...) in `work`."""
    from ncn.config import load_config
    from ncn.fileio import write_json

    cfg = load_config(a.config)
    cfg["mlflow"] = {**cfg["mlflow"], "enabled": True, "tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}
    cases = {"mlflow": work / "mlflow.json", **{c: work / "mlflow.json" for c in SERVED_CASES},
             "no_mlflow": work / "no_mlflow.json"}
    write_json(cases["mlflow"], cfg)
    write_json(cases["no_mlflow"], {**cfg, "mlflow": {**cfg["mlflow"], "enabled": False}})
    _ncn("mlflow-init", "--config", str(cases["mlflow"]), "--out", str(work / "mlflow.ready"))
    data = Path(a.data) if a.data else work / "data"
    if not a.data:
        c = str(cases["no_mlflow"])
        _ncn("data", "fetch", "--config", c, "--out", str(data))
        _ncn("data", "tokenizer", "--config", c, "--data", str(data), "--out", str(data / "tokenizer.json"))
        _ncn("data", "tokenize", "--config", c, "--data", str(data), "--tokenizer", str(data / "tokenizer.json"),
             "--out", str(data))
    return cases, data


def serve_pipeline(config: Path, work: Path) -> tuple[dict, int]:
    """A pipeline run with its MLflow server (`ncn mlflow-init --serve`, the server watching this
    process): (the job's environment, the server's pid)."""
    ready = work / "served" / "mlflow.ready"
    out = _ncn("mlflow-init", "--config", str(config), "--out", str(ready), "--serve")
    if "(pid " not in out:
        raise NCNError(f"`ncn mlflow-init --serve` started no server: {out.strip()[-800:]}")
    return {"NCN_MLFLOW_PIPELINE": str(ready)}, int(out.split("(pid ")[1].split(",")[0])


def children_cpu_s(pid: int) -> float:
    """CPU seconds of a process's children that it has reaped (/proc/PID/stat cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def time_train_job(config: Path, data: Path, out: Path, a, env: dict | None = None) -> dict[str, tuple[float, float]]:
    """One `ncn train` subprocess (`env` added to its environment) -> {phase: (wall s, CPU s)} (PHASES)."""
    import resource

    from ncn.config import load_config

    cfg = load_config(config)
    size = a.size or cfg["sizes"][0]
    variant = a.variant or variant_names()[2]
    cmd = [sys.executable, "-c", PROBE, "train", "--config", str(config), "--variant", variant, "--size", size,
           "--seed", "0", "--out", str(out), "--data", str(data), "--threads", str(a.threads)]
    cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_CHILDREN))  # noqa: E731
    c0, t = cpu(), {"start": (time.time(), 0.0)}
    r = subprocess.run(cmd, env={**_env(), **(env or {})}, capture_output=True, text=True)
    t["exit"] = (time.time(), cpu() - c0)
    stamps = [line for line in r.stderr.splitlines() if line.startswith("NCN_BENCH_TIMES ")]
    if r.returncode or not stamps:
        raise NCNError(f"the timed `ncn train` failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    for line in stamps:  # one line, or two: the job's process and its fork in the server
        t.update(json.loads(line.split(" ", 1)[1]))
    if "forked" in t:  # the fork's CPU (its stamps count from the fork) is not the parent's child
        t["exit"] = (t["exit"][0], t["exit"][1] + t["atexit"][1])
    return {k: (t[b][0] - t[f][0], t[b][1] - t[f][1]) for k, (f, b) in PHASES.items() if f in t and b in t}


def import_costs(module: str, top: int = 8) -> tuple[float, list[tuple[str, float]]]:
    """(wall seconds of `python -c "import module"`, [(package, seconds)]): -X importtime's self
    times summed per top-level package (torch, numpy, mlflow, sqlalchemy, ...), largest first."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=_env(),
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise NCNError(f"`import {module}` failed: {r.stderr.strip()[-800:]}")
    per_package: dict[str, float] = {}
    for line in r.stderr.splitlines():  # "import time:  self [us] | cumulative | name"
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            package = m.group(2).split(".")[0]
            per_package[package] = per_package.get(package, 0.0) + int(m.group(1)) / 1e6
    return wall, sorted(per_package.items(), key=lambda x: -x[1])[:top]


def startup_rows(a, work: Path) -> list[dict]:
    cases, data = startup_inputs(a, work)
    served, server = serve_pipeline(cases["mlflow_server"], work)
    cpu0 = children_cpu_s(server)
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for i in range(a.repeats):  # the cases interleaved, a fresh run folder each time
        for case, config in cases.items():
            env = {**served, **SERVED_CASES[case]} if case in SERVED_CASES else None
            runs[case].append(time_train_job(config, data, work / "runs" / f"{case}{i}", a, env))
    server_cpu = (children_cpu_s(server) - cpu0) / a.repeats
    _ncn("mlflow-end", "--ready", served["NCN_MLFLOW_PIPELINE"], "--results", str(work / "served"))
    rows = []
    for case, results in runs.items():
        for what in PHASES:
            xs = [r[what] for r in results if what in r]
            if xs:
                wall = [x[0] for x in xs]
                rows.append(dict(case=case, what=what, seconds_median=round(statistics.median(wall), 3),
                                 seconds_min=round(min(wall), 3),
                                 cpu_s_median=round(statistics.median(x[1] for x in xs), 3), repeats=len(xs),
                                 note=""))
    rows.append(dict(case="mlflow_server*", what="server_children_cpu", seconds_median="", seconds_min="",
                     cpu_s_median=round(server_cpu, 3), repeats=a.repeats,
                     note="mean CPU s of the server's forks per repeat of the served cases: both jobs' MLflow "
                     "work and the forked job (whose CPU is also in its total)"))
    for module in a.imports:
        wall, top = import_costs(module)
        rows.append(dict(case=f"import {module}", what="python -c (whole process)", seconds_median=round(wall, 3),
                         seconds_min=round(wall, 3), cpu_s_median="", repeats=1,
                         note="-X importtime: self time summed per package"))
        rows += [dict(case=f"import {module}", what=name, seconds_median=round(s, 3), seconds_min=round(s, 3),
                      cpu_s_median="", repeats=1, note="") for name, s in top]
    return rows


def main_startup(a) -> int:
    if a.repeats < 1:
        raise NCNError(f"--repeats must be at least 1, got {a.repeats}")
    with tempfile.TemporaryDirectory(prefix="ncn-bench-startup-") as tmp:
        rows = startup_rows(a, Path(tmp))
    print(f"{'case':<22} {'what':<26} {'median s':>9} {'min s':>7} {'CPU s':>7}")
    for r in rows:
        print(f"{r['case']:<22} {r['what']:<26} {r['seconds_median']!s:>9} {r['seconds_min']!s:>7} "
              f"{r['cpu_s_median']!s:>7}")
    write_csv_rows(a.out, STARTUP_COLUMNS, rows)
    print(f"wrote {a.out}")
    return 0


# ---- stages: a Snakemake run's benchmark files -> wall time per stage -----------------------------

# first folder of results/benchmarks/<...>.tsv -> stage (anything else: "other")
STAGE_OF = {"data": "data", "mlflow_init": "train", "train": "train", "evaluate": "evaluate",
            "generate": "evaluate", "analysis": "analysis", "paper": "paper"}
STAGES = ("data", "train", "evaluate", "analysis", "paper", "other")
STAGE_COLUMNS = ["stage", "jobs", "job_s", "cpu_s", "busy_s", "max_rss_mb", "fork_cpu_s", "fork_max_rss_mb", "note"]
# the server's forks (ncn.trackserver's ledger, kind or forked stage) -> stage
STAGE_OF_FORK = {"train": "train", "tracker": "train", "evaluate": "evaluate", "log_eval": "evaluate",
                 "generate": "evaluate", "analyze": "analysis"}
FORKED_NOTE = ("cpu_s, max_rss_mb: the jobs' own processes (a forked job's: only its waiting process); fork_cpu_s, "
               "fork_max_rss_mb: the forks of the pipeline's server that ran these jobs and their MLflow work "
               "(logs/forks.tsv; RSS with the server's shared pages)")


def read_benchmarks(folder: Path, skip: str = "timing") -> list[dict]:
    """One dict per TSV (its last row): stage, s, cpu_s, rss, end (the file's mtime: Snakemake
    writes it when the job ends) and start = end - s."""
    jobs = []
    for path in sorted(folder.rglob("*.tsv")):
        rel = path.relative_to(folder)
        first = rel.parts[0].removesuffix(".tsv")
        if first == skip:
            continue
        lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
        if len(lines) < 2 or lines[0][0] != "s":
            raise NCNError(f"{path}: not a Snakemake benchmark file (expected a header starting with 's')")
        row = dict(zip(lines[0], lines[-1]))
        num = lambda k: float(row[k]) if row.get(k, "NA") not in ("NA", "-", "") else 0.0  # noqa: E731
        end = path.stat().st_mtime
        jobs.append(dict(stage=STAGE_OF.get(first, "other"), job=str(rel), s=num("s"), cpu_s=num("cpu_time"),
                         rss=num("max_rss"), start=end - num("s"), end=end))
    return jobs


def union_seconds(intervals) -> float:
    """Length of the union of [start, end] intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            total += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (0.0 if cur_e is None else cur_e - cur_s)


def snakemake_run_start(log_dir: Path) -> float | None:
    """Start of the newest Snakemake run: the time in its log's name (.snakemake/log/
    2026-11-30T080735.790707.snakemake.log, local time), or None."""
    stamps = []
    for p in Path(log_dir).glob("*.snakemake.log"):
        with contextlib.suppress(ValueError):
            stamps.append(datetime.strptime(p.name.split(".snakemake")[0], "%Y-%m-%dT%H%M%S.%f").timestamp())
    return max(stamps) if stamps else None


def read_forks(path: Path | None) -> list[dict]:
    """The server's forks (ncn.trackserver's ledger): one dict each with stage, end, cpu_s, rss. No
    ledger (no server, MLflow off): none."""
    from ncn.trackserver import read_ledger

    if path is None or not Path(path).is_file():
        return []
    forks = []
    for row in read_ledger(path):
        try:
            end, cpu, rss = float(row["end_unix"]), float(row["cpu_s"]), float(row["max_rss_mb"])
        except (KeyError, ValueError):
            continue  # the header again, or a row cut short when the disk filled
        forks.append(dict(stage=STAGE_OF_FORK.get(row["stage"], "other"), end=end, cpu_s=cpu, rss=rss))
    return forks


def forks_of(forks: list[dict], jobs: list[dict], slack_s: float = 1.0) -> list[dict]:
    """The forks that served these jobs: a fork of a job's stage that ended inside the job (a forked
    job's process exits after its fork; its MLflow child ends before it). An earlier run's fork of a
    job run again since is not counted: its job's benchmark file is gone."""
    return [f for f in forks if any(j["stage"] == f["stage"] and j["start"] - slack_s <= f["end"] <= j["end"] + slack_s
                                    for j in jobs)]


def _fork_cells(forks: list[dict]) -> dict:
    return dict(fork_cpu_s=round(sum(f["cpu_s"] for f in forks), 2) if forks else "",
                fork_max_rss_mb=round(max(f["rss"] for f in forks), 1) if forks else "")


def stage_rows(jobs: list[dict], run_start: float | None, forks: list[dict] = ()) -> list[dict]:
    rows = []
    for stage in STAGES:
        js = [j for j in jobs if j["stage"] == stage]
        if js:
            rows.append(dict(stage=stage, jobs=len(js), job_s=round(sum(j["s"] for j in js), 2),
                             cpu_s=round(sum(j["cpu_s"] for j in js), 2),
                             busy_s=round(union_seconds((j["start"], j["end"]) for j in js), 2),
                             max_rss_mb=round(max(j["rss"] for j in js), 1),
                             **_fork_cells(forks_of(forks, js)),
                             note=FORKED_NOTE if stage in ("train", "evaluate", "analysis") else ""))
    this = [j for j in jobs if run_start is None or j["end"] >= run_start]
    if not this:
        return rows
    start = min([j["start"] for j in this] + ([run_start] if run_start else []))
    wall = max(j["end"] for j in this) - start
    busy = union_seconds((j["start"], j["end"]) for j in this)
    since = "the Snakemake log's start" if run_start else "the first job's start (no .snakemake/log found)"
    rows.append(dict(stage="all_jobs", jobs=len(this), job_s=round(sum(j["s"] for j in this), 2),
                     cpu_s=round(sum(j["cpu_s"] for j in this), 2), busy_s=round(busy, 2),
                     max_rss_mb=round(max(j["rss"] for j in this), 1), **_fork_cells(forks_of(forks, this)),
                     note="jobs of the latest run"))
    rows.append(dict(stage="snakemake_overhead", jobs="", job_s="", cpu_s="", busy_s=round(wall - busy, 2),
                     max_rss_mb="", note="wall time in which no job ran (DAG, scheduling, gaps)"))
    rows.append(dict(stage="wall", jobs="", job_s="", cpu_s="", busy_s=round(wall, 2), max_rss_mb="",
                     note=f"from {since} to the last job's end"))
    return rows


def main_stages(a) -> int:
    folder = Path(a.benchmarks)
    if not folder.is_dir():
        raise NCNError(f"--benchmarks {folder}: no such folder (a Snakemake run writes results/benchmarks/)")
    jobs = read_benchmarks(folder)
    if not jobs:
        raise NCNError(f"--benchmarks {folder}: no benchmark .tsv files in it")
    run_start = snakemake_run_start(Path(a.snakemake_log)) if a.snakemake_log else None
    rows = stage_rows(jobs, run_start, read_forks(a.forks))
    print(f"{'stage':<20} {'jobs':>5} {'job s':>9} {'busy s':>9} {'CPU s':>9} {'forks CPU s':>12}")
    for r in rows:
        print(f"{r['stage']:<20} {r['jobs']!s:>5} {r['job_s']!s:>9} {r['busy_s']!s:>9} {r['cpu_s']!s:>9} "
              f"{r.get('fork_cpu_s', '')!s:>12}")
    write_csv_rows(a.out, STAGE_COLUMNS, rows)
    print(f"wrote {a.out}")
    return 0


# ---- the command line ---------------------------------------------------------------------------


def _model_parser(sub) -> None:
    m = sub.add_parser("model", help="training and evaluation speed of every variant and of a textbook GPT")
    m.add_argument("--out", default="results/bench/model.csv", help="CSV to write; every timed round's seconds "
                   "go to <out>_rounds.csv (default: %(default)s)")
    m.add_argument("--config", default=str(ROOT / "config" / "default.yaml"),
                   help="profile whose sizes are timed (default: config/default.yaml)")
    m.add_argument("--shapes", nargs="+", help=f"sizes of --config or d<d>/L<layers>/T<context>[/H<heads>]"
                   f"[/F<d_ff>] (default: {BASE_SHAPE} and every size of --config)")
    m.add_argument("--variants", nargs="+", help="variants to time (default: all); the baseline always is")
    m.add_argument("--steps", type=int, default=10, help="timed rounds (default: %(default)s)")
    m.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    m.add_argument("--processes", type=int, default=1, help="run the whole bench this many times, each in a fresh "
                   "process, and judge the ratios over the processes (6 or more for a 95%% interval; "
                   "per-process rows go to <out>_processes.csv) (default: %(default)s)")
    m.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    m.add_argument("--clock", default="wall", choices=list(CLOCKS), help="wall, or cpu: the thread's CPU time, "
                   "steadier on a shared machine (needs --threads 1) (default: %(default)s)")
    m.add_argument("--batch", type=int, default=16, help="training batch (default: %(default)s)")
    m.add_argument("--eval-batch", type=int, default=64, help="evaluation batch (default: %(default)s)")
    m.add_argument("--vocab", type=int, default=4096, help="vocabulary (default: %(default)s)")
    m.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    m.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="fp32, or bf16 autocast")
    m.add_argument("--gemm-n", type=int, help="side of the peak-FLOP/s matmul (default: 1024 CPU, 8192 CUDA)")
    m.add_argument("--peak-flops", type=float, help="MFU against this FLOP/s (a datasheet peak) instead of the "
                   "measured GEMM")
    m.add_argument("--pool-impl", default="auto", choices=["auto", "cumulative", "chunked", "sdpa"],
                   help="causal prefix pool: auto (the model's choice: cumulative on the CPU, chunked under "
                   "autocast and on CUDA), O(T) cumulative sums, O(T·C) chunked prefix softmax, or O(T²) SDPA "
                   "(default: %(default)s)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ncn bench", description=__doc__.split("\n\n")[0] + " Tables, never asserts; "
                                "compare ratios taken in one run (bench/README.md).")
    sub = p.add_subparsers(dest="what", required=True, metavar="what")
    _model_parser(sub)
    s = sub.add_parser("startup", help="process start -> first step, last step -> exit of a smoke `ncn train`")
    s.add_argument("--out", default="results/bench/startup.csv", help="CSV to write (default: %(default)s)")
    s.add_argument("--config", default=str(ROOT / "config" / "smoke.yaml"), help="profile (default: config/smoke.yaml)")
    s.add_argument("--data", help="tokenized data folder (default: built from --config in a temporary folder)")
    s.add_argument("--size", help="size to train (default: the config's first)")
    s.add_argument("--variant", help="variant to train (default: the primary NCN, causal)")
    s.add_argument("--threads", type=int, default=1, help="torch threads of the job (default: %(default)s)")
    s.add_argument("--repeats", type=int, default=3, help="jobs per case (default: %(default)s)")
    s.add_argument("--imports", nargs="*", default=["ncn.train", "torch._dynamo", "ncn.evaluate", "mlflow.tracking"],
                   help="modules whose import cost to break down (default: %(default)s)")
    g = sub.add_parser("stages", help="per-stage wall time of a Snakemake run from its benchmark files")
    g.add_argument("--benchmarks", default="results/benchmarks", help="folder of benchmark TSVs (default: %(default)s)")
    g.add_argument("--snakemake-log", default=".snakemake/log",
                   help="Snakemake's log folder: the newest log names the run's start (default: %(default)s)")
    g.add_argument("--forks", help="the pipeline server's ledger of its forks (results/<profile>/logs/forks.tsv): "
                   "their CPU and RSS, which a forked job's benchmark file lacks (default: none)")
    g.add_argument("--out", default="results/timing/stages.csv", help="CSV to write (default: %(default)s)")
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    return {"model": main_model, "startup": main_startup, "stages": main_stages}[a.what](a)
