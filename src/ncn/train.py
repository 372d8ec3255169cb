"""`ncn train`: train one (variant, size, seed) run; deterministic, resumable, tracked.

    ncn train --config C --variant V --size S --seed N --out RUN [--data results/data] [--threads T]
    torchrun --nproc_per_node=N -m ncn.cli train ...        (DDP: gloo on CPU, NCCL on GPU)

Outputs in RUN: model.pt, metrics.json (its `finished` flag marks the run done; written
last), train_log.csv, config.json (the resolved settings and the data folder used), ckpt/,
and mlflow_run.json (which MLflow run to continue). model.pt, metrics.json and train_log.csv
are written atomically at the end; while training, the log grows in train_log.partial.csv.

Determinism. `torch.manual_seed(seed)` before the model is built fixes the init; the data
order is a permutation of the training windows from a generator seeded by the seed alone
(`ncn.batches`), the same for every variant, and its sha256 goes into metrics.json. On CPU
(fp32, a fixed --threads) two runs of one command give bitwise-identical metrics.

Resuming. A checkpoint (`ncn.checkpoint`) holds model, optimizer, step (the LR schedule is a
function of the step), all RNG states, the data cursor and the log rows so far. Re-running
the same command in RUN resumes from the newest good checkpoint, and everything but the
timing keys (`TIMING_KEYS`) of metrics.json ends bitwise identical to an uninterrupted run
(with the same --threads: the reduction order of a CPU matmul depends on it).

DDP. The global batch of a step is grad_accum micro-batches of micro_batch windows, whatever
the number of processes N: rank r runs micro-batches r, r+N, r+2N, ... of the step
(grad_accum must be divisible by N), each loss scaled by 1/(grad_accum/N), and DDP's
gradient average over ranks then equals the single-process gradient. Rank 0 writes
checkpoints, logs, metrics and MLflow; checkpoints are the same in any N (resume a 2-process
run in 1 process). Dropout masks differ between ranks (rank r>0 reseeds from seed, step, r).

Faults for tests: NCN_FAULT_NAN_AT_STEP=k poisons the loss of step k with NaN;
NCN_FAULT_KILL_AT_STEP=k sends SIGKILL to the process after step k (and its checkpoint);
NCN_FAULT_STEP_DELAY_S=x sleeps x seconds after every step (the numbers are unchanged), so a
test can kill a tiny run from outside between two checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from ncn.batches import WindowOrder, get_windows, n_windows
from ncn.checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from ncn.config import load_config, model_config, size_def, train_settings
from ncn.data import load_meta, open_split
from ncn.errors import NCNError
from ncn.fileio import atomic_path, read_json, write_csv_rows, write_json
from ncn.runs import TIMING_KEYS, pick_device, run_config as read_run_config  # noqa: F401 (ncn.train.TIMING_KEYS)
from ncn.variants import spec, spoken_list

log = logging.getLogger("ncn.train")

PARTIAL_LOG = "train_log.partial.csv"
BASE_COLUMNS = ["step", "tokens", "loss", "ce", "reg", "lr", "tokens_per_s"]
# train settings that do not change the numbers: a checkpoint made with other values still fits
_NOT_IN_FINGERPRINT = ("ckpt_every", "keep_checkpoints", "device", "compile")


# ---- small pieces ------------------------------------------------------------------------------


def signal_columns(variant: str, n_layer: int) -> list[str]:
    from ncn.model import SIGNAL_NAMES

    if spec(variant).is_baseline:
        return []
    return [f"{s}_{stat}_l{l}" for s in SIGNAL_NAMES for l in range(n_layer) for stat in ("mean", "std")]


def signal_stats(signals: torch.Tensor) -> dict[str, float]:
    """Per-layer mean and (population) std over every token of the batch, per signal."""
    from ncn.model import SIGNAL_NAMES

    s = signals.detach().float().flatten(0, 1)  # (B*T, n_layer, 3)
    mean, std = s.mean(dim=0), s.std(dim=0, correction=0)
    out = {}
    for i, name in enumerate(SIGNAL_NAMES):
        for l in range(s.size(1)):
            out[f"{name}_mean_l{l}"] = mean[l, i].item()
            out[f"{name}_std_l{l}"] = std[l, i].item()
    return out


def lr_at(it: int, s: dict, total_steps: int) -> float:
    """Linear warmup over warmup_steps, then cosine decay to min_lr at the last step (nanoGPT)."""
    lr, min_lr, warmup = s["lr"], s["min_lr"], s["warmup_steps"]
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if total_steps <= warmup:
        return lr
    ratio = (it - warmup) / (total_steps - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def make_optimizer(model: nn.Module, s: dict, fused: bool) -> torch.optim.AdamW:
    """AdamW. decay_all=True decays every parameter (as the original did); otherwise norms,
    biases and embeddings (1-D tensors and nn.Embedding weights) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if s["decay_all"]:
        groups = [{"params": params, "weight_decay": s["weight_decay"]}]
    else:
        emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        decay = [p for p in params if p.dim() >= 2 and id(p) not in emb]
        keep = [p for p in params if not (p.dim() >= 2 and id(p) not in emb)]
        groups = [{"params": decay, "weight_decay": s["weight_decay"]}, {"params": keep, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=s["lr"], betas=(s["beta1"], s["beta2"]), **kw)


def _scalar(x, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().double().reshape(())
    return torch.tensor(float(x or 0.0), dtype=torch.float64, device=device)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as dist

    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    local = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


# ---- the run -----------------------------------------------------------------------------------


def _check_finished_settings(cfg: dict, variant: str, size: str, run_dir: Path, source: str) -> None:
    """A finished run is left alone only if it was trained with the settings `cfg` asks for
    (model shape, context, and the train settings that change the numbers); otherwise
    "nothing to do" would pass off the old model as the one the config describes."""
    rc = read_run_config(run_dir)
    if rc is None or "model_config" not in rc or "train" not in rc:
        return
    size_def(cfg, size)  # names the defined sizes if `size` is not one
    want_model = dataclasses.asdict(model_config(cfg, variant, size, int(rc["model_config"]["vocab_size"])))
    want_train = {k: v for k, v in train_settings(cfg, size).items() if k not in _NOT_IN_FINGERPRINT}
    have_train = {k: v for k, v in rc["train"].items() if k not in _NOT_IN_FINGERPRINT}
    plain = lambda x: json.loads(json.dumps(x))  # noqa: E731 - tuples vs lists, as stored
    diffs = [f"model.{k} {plain(rc['model_config'].get(k))} in the run, {v} asked"
             for k, v in plain(want_model).items() if plain(rc["model_config"].get(k)) != v]
    diffs += [f"train.{k} {have_train.get(k)} in the run, {v} asked"
              for k, v in plain(want_train).items() if plain(have_train.get(k)) != v]
    if diffs:
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise NCNError(f"{run_dir} is already finished but was trained with other settings than {source}: "
                       f"{'; '.join(diffs[:4])}{more}. Delete {run_dir} (or choose another --out) to train "
                       f"with these settings")


def train(cfg: dict, variant: str, size: str, seed: int, run_dir: Path, data_dir: Path, threads: int = 1,
          config_source: str = "the config") -> dict | None:
    """Train (or resume, or skip a finished) run; returns metrics.json's content."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    identity = {"variant": variant, "size": size, "seed": seed}
    if metrics_path.exists():
        done = read_json(metrics_path)
        if done.get("finished"):
            theirs = {k: done.get(k) for k in identity}
            if theirs != identity:
                raise NCNError(f"{run_dir} holds a finished run of {theirs}, not {identity}; choose another --out")
            _check_finished_settings(cfg, variant, size, run_dir, config_source)
            print(f"ncn train: {run_dir} is already finished (metrics.json); nothing to do", file=sys.stderr)
            return done

    spec(variant)  # names the registered variants if `variant` is not one
    size_def(cfg, size)  # names the defined sizes if `size` is not one
    torch.set_num_threads(threads)
    s = train_settings(cfg, size)
    meta = load_meta(data_dir)
    tokens = open_split(data_dir, "train", meta)
    mcfg = model_config(cfg, variant, size, int(meta["vocab_size"]))
    T, mb, ga = mcfg.block_size, s["micro_batch"], s["grad_accum"]
    tokens_per_step = mb * T * ga
    n_train = int(len(tokens))
    budget = s["tokens"] if s["tokens"] is not None else s["epochs"] * n_train
    steps = max(1, math.ceil(budget / tokens_per_step))
    n_win = n_windows(n_train, T)
    if n_win < mb:
        raise NCNError(f"{data_dir}: the training stream has {n_win} windows of {T} tokens, fewer than "
                       f"micro_batch {mb}; use more data or a smaller size")

    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    if ga % world:
        raise NCNError(f"train.grad_accum {ga} is not divisible by the {world} DDP processes; "
                       f"each process runs grad_accum/N micro-batches of the same global batch")
    d = init_distributed(s["device"])
    try:
        return _train(cfg, s, meta, tokens, mcfg, identity, run_dir, data_dir, threads, d,
                      steps, tokens_per_step, n_train, n_win)
    finally:
        if d.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(cfg, s, meta, tokens, mcfg, identity, run_dir, data_dir, threads, d: Dist,
           steps, tokens_per_step, n_train, n_win):
    from ncn.model import Transformer
    from ncn.tracking import Tracker

    variant, size, seed = identity["variant"], identity["size"], identity["seed"]
    T, mb, ga = mcfg.block_size, s["micro_batch"], s["grad_accum"]
    device = pick_device(s["device"], d.local_rank)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ckpt_dir = run_dir / "ckpt"

    run_config = {
        **identity, "profile": cfg["profile"], "data_dir": str(Path(data_dir).resolve()),
        "tokenizer_sha256": meta.get("tokenizer_sha256"), "model_config": dataclasses.asdict(mcfg),
        "train": s, "steps": steps, "tokens_per_step": tokens_per_step, "config": cfg,
    }
    fingerprint = hashlib.sha256(json.dumps({
        **identity, "model_config": run_config["model_config"], "steps": steps, "n_train": n_train,
        "tokenizer_sha256": run_config["tokenizer_sha256"],
        "train": {k: v for k, v in s.items() if k not in _NOT_IN_FINGERPRINT},
    }, sort_keys=True).encode()).hexdigest()

    # -- model and optimizer: the init depends on the seed only ----------------------------------
    torch.manual_seed(seed)
    raw_model = Transformer(mcfg).to(device)
    optimizer = make_optimizer(raw_model, s, fused=cuda)
    n_params, n_params_ne = raw_model.num_params(), raw_model.num_params(non_embedding=True)

    # -- resume --------------------------------------------------------------------------------
    ckpt_path = None
    if d.main:
        ckpt, ckpt_path = load_latest(ckpt_dir)
        if ckpt is not None and ckpt.get("fingerprint") != fingerprint:
            if any(ckpt.get(k) != v for k, v in identity.items()):
                raise NCNError(f"{ckpt_path} belongs to run {({k: ckpt.get(k) for k in identity})}, not {identity}; "
                               "choose another --out")
            stale = run_dir / "ckpt.stale"
            log.warning("checkpoints in %s were made with another config or data; moved to %s, starting from scratch",
                        ckpt_dir, stale)
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(ckpt_dir, stale)
            ckpt, ckpt_path = None, None
        if ckpt is None and ckpt_dir.exists() and any(ckpt_dir.glob("step_*.pt")):
            log.warning("no usable checkpoint in %s; starting from scratch", ckpt_dir)
    if d.world > 1:
        import torch.distributed as dist

        box = [str(ckpt_path) if ckpt_path else None]
        dist.broadcast_object_list(box, src=0)
        if not d.main and box[0]:
            ckpt = torch.load(box[0], map_location="cpu", weights_only=True)
        elif not d.main:
            ckpt = None
    start_step, rows, recent, since_row = 0, [], [], []
    reg_init, wall_before, resumes = None, 0.0, []
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_step, rows = ckpt["step"], ckpt["log_rows"]
        recent, since_row = ckpt["recent"], ckpt["since_row"]
        reg_init, wall_before = ckpt["reg_init"], ckpt["wall_time_s"]
        resumes = list(ckpt["resumed_at_steps"]) + [start_step]
        if d.main:
            log.info("resuming from %s (step %d of %d)", ckpt_path, start_step, steps)
    if d.rank > 0:  # dropout masks of other ranks: their own stream, a function of (seed, step, rank)
        torch.manual_seed(hash((seed, start_step, d.rank)) % (2**63))

    model: nn.Module = raw_model
    if s["compile"] and cuda:
        model = torch.compile(model)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[d.local_rank] if cuda else None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    columns = BASE_COLUMNS + signal_columns(variant, mcfg.n_layer)
    tracker = Tracker(cfg, run_dir, enabled=d.main)
    if d.main:
        write_json(run_dir / "config.json", run_config)
        # the live log is train_log.partial.csv (restarted from what the checkpoint knew); the
        # train_log.csv output is written atomically at the end, like model.pt and metrics.json
        write_csv_rows(run_dir / PARTIAL_LOG, columns, rows)
        tracker.start(run_config, n_params, n_params_ne, resumed=ckpt is not None)
        tracker.add_rows(rows)
        if start_step == 0:
            log.info("%s-%s-s%d: %d params (%d non-embedding), %d steps of %d tokens, device %s, %d thread(s), "
                     "%d process(es)", variant, size, seed, n_params, n_params_ne, steps, tokens_per_step,
                     device, threads, d.world)
    ckpt = None  # free the memory

    order = WindowOrder(seed, n_win)
    local_micro = list(range(d.rank, ga, d.world))
    nan_at, kill_at = _env_int("NCN_FAULT_NAN_AT_STEP"), _env_int("NCN_FAULT_KILL_AT_STEP")
    step_delay = float(os.environ.get("NCN_FAULT_STEP_DELAY_S") or 0.0)
    model.train()
    t_session = time.perf_counter()
    t_row, tokens_row = t_session, 0
    bar = None
    if d.main:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start_step, desc=f"train {variant}-{size}-s{seed}", unit="step",
                   file=sys.stderr, dynamic_ncols=True)
    csv_file = open(run_dir / PARTIAL_LOG, "a", newline="", encoding="utf-8") if d.main else None
    writer = csv.DictWriter(csv_file, fieldnames=columns, lineterminator="\n") if csv_file else None
    try:
        for step in range(start_step + 1, steps + 1):
            lr = lr_at(step - 1, s, steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            want_signals = not mcfg.spec.is_baseline and (step == 1 or step % s["signal_every"] == 0)
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, ce, reg summed over micro-batches
            stats = {}
            for j, m in enumerate(local_micro):
                pos = ((step - 1) * ga + m) * mb
                x, y = get_windows(tokens, order.indices(pos, mb), T)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = j == len(local_micro) - 1
                sync = model.no_sync() if d.world > 1 and not last else contextlib.nullcontext()
                with sync:
                    with autocast():
                        out = model(x, y, return_signals=want_signals and m == 0)
                    loss = out.loss
                    if nan_at == step:
                        loss = loss * float("nan")
                    (loss / len(local_micro)).backward()
                sums += torch.stack([_scalar(loss, device), _scalar(out.ce, device), _scalar(out.reg, device)])
                if want_signals and m == 0:
                    stats = signal_stats(out.signals)
            if d.world > 1:
                import torch.distributed as dist

                dist.all_reduce(sums)
            loss_v, ce_v, reg_v = (sums / ga).tolist()
            if not math.isfinite(loss_v):
                raise NCNError(
                    f"loss is {loss_v} at step {step} (lr {lr:.3g}); training stopped. The last good checkpoint "
                    f"({_latest_name(ckpt_dir)}) is kept; lower train.lr or check the data, then rerun"
                )
            if s["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), s["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            if reg_init is None:
                reg_init = reg_v
            recent = (recent + [[loss_v, ce_v, reg_v]])[-s["log_every"]:]
            since_row.append([loss_v, ce_v, reg_v])
            tokens_row += tokens_per_step
            if step == 1 or step % s["log_every"] == 0 or bool(stats) or step == steps:
                now = time.perf_counter()
                row = {"step": step, "tokens": step * tokens_per_step,
                       "loss": _mean([r[0] for r in since_row]), "ce": _mean([r[1] for r in since_row]),
                       "reg": _mean([r[2] for r in since_row]), "lr": lr,
                       "tokens_per_s": round(tokens_row / max(now - t_row, 1e-9), 1), **stats}
                since_row, t_row, tokens_row = [], now, 0
                rows.append(row)
                if writer:
                    writer.writerow(row)
                    csv_file.flush()
                    tracker.add_rows([row])
            if bar is not None:
                bar.update(1)
                el = time.perf_counter() - t_session
                bar.set_postfix(loss=f"{loss_v:.4f}", tok_s=f"{(step - start_step) * tokens_per_step / max(el, 1e-9):.0f}")
            if step % s["ckpt_every"] == 0 or step == steps:
                if d.main:
                    save_checkpoint(ckpt_dir, step, {
                        **identity, "fingerprint": fingerprint, "step": step, "cursor": step * ga * mb,
                        "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                        "log_rows": rows, "recent": recent, "since_row": since_row, "reg_init": reg_init,
                        "wall_time_s": wall_before + time.perf_counter() - t_session,
                        "resumed_at_steps": resumes,
                    }, keep=s["keep_checkpoints"])
                    tracker.flush()
            if kill_at == step:
                os.kill(os.getpid(), signal.SIGKILL)
            if step_delay:
                time.sleep(step_delay)
    except BaseException:
        if d.main:
            tracker.fail()
        raise
    finally:
        if bar is not None:
            bar.close()
        if csv_file:
            csv_file.close()

    if not d.main:
        return None
    wall = wall_before + time.perf_counter() - t_session
    # after a resume without new steps (killed after the final checkpoint), the time comes from it
    final = [_mean([r[i] for r in recent]) for i in range(3)]
    with atomic_path(run_dir / "model.pt") as tmp:
        torch.save({"model_config": dataclasses.asdict(mcfg), "state_dict": raw_model.state_dict(), **identity,
                    "tokenizer_sha256": meta.get("tokenizer_sha256"), "step": steps,
                    "tokens": steps * tokens_per_step}, tmp)
    write_csv_rows(run_dir / "train_log.csv", columns, rows)
    (run_dir / PARTIAL_LOG).unlink(missing_ok=True)
    metrics = {
        **identity, "profile": cfg["profile"], "steps": steps, "tokens": steps * tokens_per_step,
        "epochs": steps * tokens_per_step / n_train, "tokens_per_step": tokens_per_step,
        "final_loss": final[0], "final_ce": final[1], "final_reg": final[2],
        "reg_init": reg_init, "reg_final": final[2],
        "n_params": n_params, "n_params_non_embedding": n_params_ne,
        "batch_order_sha256": order.sha256(steps * ga * mb),
        "device": device.type, "dtype": "bfloat16" if cuda else "float32",
        "wall_time_s": round(wall, 3), "tokens_per_s": round(steps * tokens_per_step / max(wall, 1e-9), 1),
        "resumed_at_steps": resumes, "finished": True,
    }
    write_json(run_dir / "metrics.json", metrics)  # last: its finished flag marks the run done
    tracker.finish(metrics, [run_dir / "metrics.json", run_dir / "config.json", run_dir / "train_log.csv"])
    log.info("finished: %d steps, final loss %.4f, %.0f tokens/s", steps, final[0], metrics["tokens_per_s"])
    return metrics


def _latest_name(ckpt_dir: Path) -> str:
    from ncn.checkpoint import list_checkpoints

    found = list_checkpoints(ckpt_dir)
    return str(found[0][1]) if found else "none yet"


def setup_logging() -> None:
    root = logging.getLogger("ncn")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
        root.setLevel(logging.INFO)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn train",
        description="Train one (variant, size, seed) run into --out: model.pt, metrics.json, train_log.csv, "
        "config.json and ckpt/. The seed fixes the init and the data order (the same for every variant). "
        "Re-running the same command resumes from the newest good checkpoint, with final metrics "
        "bitwise identical to an uninterrupted run; a finished run is left alone. Under "
        "'torchrun --nproc_per_node=N -m ncn.cli train ...' it trains with DDP on the same global batch.",
    )
    p.add_argument("--config", required=True, help="pipeline config (YAML or the resolved JSON)")
    p.add_argument("--variant", required=True, help=spoken_list())
    p.add_argument("--size", required=True, help="a name in the config's size_defs, e.g. xs")
    p.add_argument("--seed", required=True, type=int, help="fixes the init and the data order")
    p.add_argument("--out", required=True, help="run folder, e.g. results/runs/causal/xs/seed0")
    p.add_argument("--data", default="results/data", help="tokenized data folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s); "
                   "bitwise resume needs the same value")
    a = p.parse_args(argv)
    if a.threads < 1:
        raise NCNError(f"--threads must be at least 1, got {a.threads}")
    setup_logging()
    cfg = load_config(a.config)
    train(cfg, a.variant, a.size, a.seed, Path(a.out), Path(a.data), threads=a.threads, config_source=a.config)
    return 0
