"""`ncn train`: train one (variant, size, seed) run; deterministic, resumable, tracked.

    ncn train --config C --variant V --size S --seed N --out RUN [--data results/data] [--threads T]
    torchrun --nproc_per_node=N -m ncn.cli train ...        (DDP: gloo on CPU, NCCL on GPU)

Outputs in RUN: model.pt, metrics.json (its `finished` flag marks the run done; written
last), train_log.csv, config.json (the resolved settings and the data folder used), ckpt/,
and mlflow_run.json (which MLflow run to continue). model.pt, metrics.json and train_log.csv
are written atomically at the end; while training, the log grows in train_log.partial.csv.

Determinism. `torch.manual_seed(seed)` before the model is built fixes the init; the data
order is a permutation of the training windows from a generator seeded by the seed alone
(`ncn.batches`), the same for every variant. metrics.json's batch_order_sha256 hashes the
token ids actually fed (`TrainState.add_fed`: a chain over steps of the micro-batches'
`batch_digest`), so it is equal across variants only if they really saw the same batches. On CPU
(fp32, a fixed --threads) two runs of one command give bitwise-identical metrics.

Shape (torchtitan/nanoGPT): `Run` holds what is fixed for the run (its `TrainConfig`, model
config, data, length), `TrainState` what changes and is checkpointed; `train` plans, builds,
resumes (`_resume`), loops (`_loop`: one comment per phase) and finishes (`_finish`).

Resuming. A checkpoint (`ncn.checkpoint`; its payload is `TrainState.state_dict()`) holds
model, optimizer, step (the LR schedule is a function of the step), all RNG states, the data
cursor and the log rows so far. Re-running
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
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ncn.batches import WindowOrder, get_controls, get_windows, n_windows
from ncn.checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from ncn.config import TrainConfig, load_config, model_config, size_def, train_settings
from ncn.data import load_meta, open_split
from ncn.errors import NCNError
from ncn.fileio import atomic_path, read_json, write_csv_rows, write_json
from ncn.optim import AdamW
from ncn.runs import TIMING_KEYS, pick_device, run_config as read_run_config  # noqa: F401 (ncn.train.TIMING_KEYS)
from ncn.variants import spec, spoken_list

log = logging.getLogger("ncn.train")

PARTIAL_LOG = "train_log.partial.csv"
BASE_COLUMNS = ["step", "tokens", "loss", "ce", "reg", "lr", "tokens_per_s"]
# train settings that do not change the numbers: a checkpoint made with other values still fits
_NOT_IN_FINGERPRINT = ("ckpt_every", "keep_checkpoints", "device", "compile", "compile_mode")


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


def lr_at(it: int, tc: TrainConfig, total_steps: int) -> float:
    """The lr of iteration `it` (0-based; step k runs at it = k - 1) of `total_steps`.
    nanogpt: linear warmup lr*(it+1)/(warmup+1), then cosine to min_lr, which it would reach at
    it = total_steps (one past the last). original: warmup lr*it/warmup from 0, then cosine that
    reaches min_lr exactly at the last iteration, it = total_steps - 1."""
    lr, min_lr, warmup = tc.lr, tc.min_lr, tc.warmup_steps
    original = tc.lr_schedule == "original"
    if it < warmup:
        return lr * it / warmup if original else lr * (it + 1) / (warmup + 1)
    end = total_steps - 1 if original else total_steps
    if end <= warmup:
        return lr
    ratio = (it - warmup) / (end - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def make_optimizer(model: nn.Module, tc: TrainConfig, fused: bool) -> torch.optim.AdamW | AdamW:
    """AdamW. decay_all=True decays every parameter (as the original did); otherwise norms,
    biases, embeddings and the signals' constant offsets (1-D tensors, nn.Embedding weights and
    `model.signal_offsets()`: the controller's output bias, static's z) are not decayed.
    fused (CUDA): torch's fused kernel; else ncn.optim.AdamW, torch's CPU update bit for bit
    without the 0.9-1.6 s that constructing a torch.optim optimizer costs a job's start."""
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.decay_all:
        groups = [{"params": params, "weight_decay": tc.weight_decay}]
    else:
        plain = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        plain |= {id(p) for p in model.signal_offsets()}
        decay = [p for p in params if p.dim() >= 2 and id(p) not in plain]
        keep = [p for p in params if not (p.dim() >= 2 and id(p) not in plain)]
        groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    if fused:
        return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=True)
    return AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2))


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


# ---- the run: its fixed facts, and the state a checkpoint holds -------------------------------


@dataclasses.dataclass
class Run:
    """What one run is, fixed for its whole length and rebuilt from the command on a resume."""

    cfg: dict
    tc: TrainConfig
    mcfg: Any  # ncn.model.ModelConfig
    meta: dict
    tokens: np.ndarray  # the train split (memory-mapped)
    identity: dict  # variant, size, seed
    run_dir: Path
    data_dir: Path
    threads: int
    steps: int
    n_train: int  # tokens in the train split
    n_win: int  # training windows (ncn.batches)
    dist: Dist = dataclasses.field(default_factory=Dist)
    device: torch.device = torch.device("cpu")
    labels: np.ndarray | None = None  # per-token story labels (ncn.data.labels) of a variant with control

    @property
    def tokens_per_step(self) -> int:
        return self.tc.micro_batch * self.mcfg.block_size * self.tc.grad_accum

    @property
    def graphs(self) -> bool:
        """Training replays CUDA graphs (torch.compile's reduce-overhead mode on a GPU)."""
        return self.tc.compile and self.tc.compile_mode == "reduce-overhead" and self.device.type == "cuda"

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "ckpt"

    @property
    def columns(self) -> list[str]:
        return BASE_COLUMNS + signal_columns(self.identity["variant"], self.mcfg.n_layer)

    def config_json(self) -> dict:
        """config.json: the resolved settings and the data folder used."""
        return {
            **self.identity, "profile": self.cfg["profile"], "data_dir": str(Path(self.data_dir).resolve()),
            "tokenizer_sha256": self.meta.get("tokenizer_sha256"), "model_config": self.mcfg.as_dict(),
            "train": dataclasses.asdict(self.tc), "steps": self.steps, "tokens_per_step": self.tokens_per_step,
            # provenance: the whole resolved config (a stage slice keeps it in .resolved), so a
            # later `ncn evaluate --run` without --config finds every section it reads
            "config": getattr(self.cfg, "resolved", self.cfg),
        }

    def fingerprint(self) -> str:
        """What a checkpoint must have been made with to be resumed by this run."""
        train = {k: v for k, v in dataclasses.asdict(self.tc).items() if k not in _NOT_IN_FINGERPRINT}
        return hashlib.sha256(json.dumps({
            **self.identity, "state_version": TrainState.VERSION,
            "model_config": self.mcfg.as_dict(), "steps": self.steps,
            "n_train": self.n_train, "tokenizer_sha256": self.meta.get("tokenizer_sha256"), "train": train,
        }, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds. `state_dict()` is the checkpoint payload and
    `load_state_dict()` restores it: the checkpoint layout is written here only."""

    VERSION: ClassVar[int] = 2  # in the fingerprint: a checkpoint of another layout is set aside, not loaded

    model: nn.Module  # the raw model (not DDP- or compile-wrapped)
    optimizer: torch.optim.Optimizer | AdamW
    stamp: dict  # identity and fingerprint: checked before a checkpoint is loaded
    windows_per_step: int  # grad_accum * micro_batch: the data cursor is step * this
    step: int = 0  # steps done
    rows: list = dataclasses.field(default_factory=list)  # train-log rows so far
    recent: list = dataclasses.field(default_factory=list)  # [loss, ce, reg] of the last log_every steps
    since_row: list = dataclasses.field(default_factory=list)  # [loss, ce, reg] since the last row
    reg_init: float | None = None  # reg of the first step
    wall_time_s: float = 0.0  # of the sessions before this one
    resumed_at_steps: list = dataclasses.field(default_factory=list)
    fed_sha256: str = ""  # hash chain over the token ids fed so far (add_fed)
    session_start: float = dataclasses.field(default_factory=time.perf_counter)

    def wall(self) -> float:
        return self.wall_time_s + time.perf_counter() - self.session_start

    def state_dict(self) -> dict:
        return {
            **self.stamp, "step": self.step, "cursor": self.step * self.windows_per_step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng_state(),
            "log_rows": self.rows, "recent": self.recent, "since_row": self.since_row, "reg_init": self.reg_init,
            "wall_time_s": self.wall(), "resumed_at_steps": self.resumed_at_steps, "fed_sha256": self.fed_sha256,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        set_rng_state(sd["rng"])
        self.step, self.rows, self.recent, self.since_row = sd["step"], sd["log_rows"], sd["recent"], sd["since_row"]
        self.reg_init, self.wall_time_s = sd["reg_init"], sd["wall_time_s"]
        self.resumed_at_steps, self.fed_sha256 = list(sd["resumed_at_steps"]), sd["fed_sha256"]
        self.session_start = time.perf_counter()

    def add_fed(self, digests: bytes) -> None:
        """Chain one step's micro-batch digests (batch_digest of m = 0 .. grad_accum-1, in order):
        fed_sha256 = sha256(previous fed_sha256's 32 bytes, or none at step 1 || the digests)."""
        self.fed_sha256 = hashlib.sha256(bytes.fromhex(self.fed_sha256) + digests).hexdigest()

    def add_losses(self, losses: list[float], keep: int) -> None:
        """Book one step's [loss, ce, reg] for the next log row and the final_* metrics."""
        if self.reg_init is None:
            self.reg_init = losses[2]
        self.recent = (self.recent + [list(losses)])[-keep:]
        self.since_row.append(list(losses))

    def take_row(self, step: int, tokens: int, lr: float, tokens_per_s: float, stats: dict) -> dict:
        """The log row of the steps since the last one (their mean losses); appended to `rows`."""
        mean = [_mean([r[i] for r in self.since_row]) for i in range(3)]
        row = {"step": step, "tokens": tokens, "loss": mean[0], "ce": mean[1], "reg": mean[2], "lr": lr,
               "tokens_per_s": tokens_per_s, **stats}
        self.since_row = []
        self.rows.append(row)
        return row


# ---- train: plan, build, resume, loop, finish ----------------------------------------------------


def _check_finished_settings(cfg: dict, variant: str, size: str, run_dir: Path, source: str) -> None:
    """A finished run is left alone only if it was trained with the settings `cfg` asks for
    (model shape, context, and the train settings that change the numbers); otherwise
    "nothing to do" would pass off the old model as the one the config describes."""
    rc = read_run_config(run_dir)
    if rc is None or "model_config" not in rc or "train" not in rc:
        return
    size_def(cfg, size)  # names the defined sizes if `size` is not one
    want_model = model_config(cfg, variant, size, int(rc["model_config"]["vocab_size"])).as_dict()
    want_train = {k: v for k, v in dataclasses.asdict(train_settings(cfg, size)).items()
                  if k not in _NOT_IN_FINGERPRINT}
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


def _finished(cfg: dict, identity: dict, run_dir: Path, source: str) -> dict | None:
    """metrics.json of a finished run of `identity` with these settings, else None."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return None
    done = read_json(metrics_path)
    if not done.get("finished"):
        return None
    theirs = {k: done.get(k) for k in identity}
    if theirs != identity:
        raise NCNError(f"{run_dir} holds a finished run of {theirs}, not {identity}; choose another --out")
    _check_finished_settings(cfg, identity["variant"], identity["size"], run_dir, source)
    print(f"ncn train: {run_dir} is already finished (metrics.json); nothing to do", file=sys.stderr)
    return done


def _plan(cfg: dict, identity: dict, run_dir: Path, data_dir: Path, threads: int) -> Run:
    """The run's settings, data and length, checked before anything is built."""
    variant, size = identity["variant"], identity["size"]
    spec(variant)  # names the registered variants if `variant` is not one
    size_def(cfg, size)  # names the defined sizes if `size` is not one
    tc = train_settings(cfg, size)
    meta = load_meta(data_dir)
    tokens = open_split(data_dir, "train", meta)
    mcfg = model_config(cfg, variant, size, int(meta["vocab_size"]))
    T, mb, ga = mcfg.block_size, tc.micro_batch, tc.grad_accum
    n_train = int(len(tokens))
    budget = tc.tokens if tc.tokens is not None else tc.epochs * n_train
    steps = max(1, math.ceil(budget / (mb * T * ga)))
    n_win = n_windows(n_train, T)
    if n_win < mb:
        raise NCNError(f"{data_dir}: the training stream has {n_win} windows of {T} tokens, fewer than "
                       f"micro_batch {mb}; use more data or a smaller size")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    if ga % world:
        raise NCNError(f"train.grad_accum {ga} is not divisible by the {world} DDP processes; "
                       f"each process runs grad_accum/N micro-batches of the same global batch")
    labels = None
    if mcfg.control_dim:
        from ncn.data.labels import open_labels

        labels = open_labels(data_dir, "train", meta)
    return Run(cfg=cfg, tc=tc, mcfg=mcfg, meta=meta, tokens=tokens, identity=identity, run_dir=run_dir,
               data_dir=data_dir, threads=threads, steps=steps, n_train=n_train, n_win=n_win, labels=labels)


def train(cfg: dict, variant: str, size: str, seed: int, run_dir: Path, data_dir: Path, threads: int = 1,
          config_source: str = "the config") -> dict | None:
    """Train (or resume, or skip a finished) run; returns metrics.json's content."""
    run_dir = Path(run_dir)
    identity = {"variant": variant, "size": size, "seed": seed}
    done = _finished(cfg, identity, run_dir, config_source)
    if done is not None:
        return done
    torch.set_num_threads(threads)
    run = _plan(cfg, identity, run_dir, Path(data_dir), threads)
    run.dist = init_distributed(run.tc.device)
    try:
        return _train(run)
    finally:
        if run.dist.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(run: Run) -> dict | None:
    from ncn.model import Transformer

    run.device = pick_device(run.tc.device, run.dist.local_rank)
    cuda = run.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # the init depends on the seed only
    torch.manual_seed(run.identity["seed"])
    raw_model = Transformer(run.mcfg).to(run.device)
    state = TrainState(raw_model, make_optimizer(raw_model, run.tc, fused=cuda),
                       stamp={**run.identity, "fingerprint": run.fingerprint()},
                       windows_per_step=run.tc.grad_accum * run.tc.micro_batch)
    resumed = _resume(run, state)
    model = _wrap(run, raw_model)
    out = TrainLog(run, state, resumed)
    _loop(run, state, model, out)
    return _finish(run, state, out) if run.dist.main else None


def _latest_checkpoint(run: Run) -> tuple[dict | None, Path | None]:
    """The newest good checkpoint of this run (rank 0). One made with other settings or data is
    moved aside to ckpt.stale; one of another run is refused."""
    ckpt, path = load_latest(run.ckpt_dir)
    if ckpt is not None and ckpt.get("fingerprint") != run.fingerprint():
        identity = run.identity
        if any(ckpt.get(k) != v for k, v in identity.items()):
            raise NCNError(f"{path} belongs to run {({k: ckpt.get(k) for k in identity})}, not {identity}; "
                           "choose another --out")
        stale = run.run_dir / "ckpt.stale"
        log.warning("checkpoints in %s were made with another config, data or checkpoint layout; moved to %s, "
                    "starting from scratch", run.ckpt_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(run.ckpt_dir, stale)
        ckpt, path = None, None
    if ckpt is None and run.ckpt_dir.exists() and any(run.ckpt_dir.glob("step_*.pt")):
        log.warning("no usable checkpoint in %s; starting from scratch", run.ckpt_dir)
    return ckpt, path


def _resume(run: Run, state: TrainState) -> bool:
    """Load the newest good checkpoint into `state` (rank 0 picks it, every rank loads it)."""
    d = run.dist
    ckpt, path = _latest_checkpoint(run) if d.main else (None, None)
    if d.world > 1:
        import torch.distributed as dist

        box = [str(path) if path else None]
        dist.broadcast_object_list(box, src=0)
        if not d.main and box[0]:
            ckpt = torch.load(box[0], map_location="cpu", weights_only=True)
    if ckpt is not None:
        state.load_state_dict(ckpt)
        state.resumed_at_steps.append(state.step)
        if d.main:
            log.info("resuming from %s (step %d of %d)", path, state.step, run.steps)
    if d.rank > 0:  # dropout masks of other ranks: their own stream, a function of (seed, step, rank)
        torch.manual_seed(hash((run.identity["seed"], state.step, d.rank)) % (2**63))
    return ckpt is not None


def _wrap(run: Run, model: nn.Module) -> nn.Module:
    """torch.compile (on GPU, if asked) and DDP (under torchrun)."""
    if run.graphs and (run.tc.grad_accum > 1 or run.dist.world > 1):
        # measured on an H200: accumulating gradients over replays reads a graph's overwritten outputs
        raise NCNError(f"train.compile_mode reduce-overhead (CUDA graphs) needs train.grad_accum 1 and one process, "
                       f"got grad_accum {run.tc.grad_accum} and {run.dist.world} process(es); use compile_mode default "
                       "or a larger micro_batch")
    if run.tc.compile and run.device.type == "cuda":
        model = torch.compile(model, mode=run.tc.compile_mode)
    if run.dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[run.dist.local_rank] if run.device.type == "cuda" else None)
    return model


def _loop(run: Run, state: TrainState, model: nn.Module, out: TrainLog) -> None:
    """The training loop: steps state.step+1 .. run.steps."""
    order = WindowOrder(run.identity["seed"], run.n_win)
    faults = Faults.from_env()
    model.train()
    state.session_start = time.perf_counter()
    try:
        for step in range(state.step + 1, run.steps + 1):
            # schedule: the lr of step k is lr_at(k - 1)
            lr = lr_at(step - 1, run.tc, run.steps)
            for g in state.optimizer.param_groups:
                g["lr"] = lr
            # forward and backward of this rank's micro-batches of the global batch
            sums, stats, fed = _forward_backward(run, model, order, step, faults.nan_at == step)
            # gather over ranks: mean (loss, ce, reg), the fed batches' digests; stop on a non-finite loss
            losses, fed = _gather(run, sums, fed, step, lr)
            # update: clip, optimizer step, clear the gradients
            _update(run, state)
            # book the step and its fed tokens; write a train-log row when due, advance the bar
            state.step = step
            state.add_fed(fed)
            out.step_done(step, lr, losses, stats)
            # checkpoint every ckpt_every steps and at the last
            if step % run.tc.ckpt_every == 0 or step == run.steps:
                out.checkpoint()
            # faults for tests: SIGKILL, slow steps
            faults.after_step(step)
    except BaseException:
        out.fail()
        raise
    finally:
        out.close()


def window_indices(run: Run, order: WindowOrder, step: int, m: int) -> torch.Tensor:
    """The windows of micro-batch m of `step`: the data cursor ((step-1)*ga + m)*mb of the window
    order, micro_batch windows from there."""
    mb = run.tc.micro_batch
    return order.indices(((step - 1) * run.tc.grad_accum + m) * mb, mb)


def draw_batch(run: Run, order: WindowOrder, step: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of micro-batch m of `step` (window_indices)."""
    return get_windows(run.tokens, window_indices(run, order, step, m), run.mcfg.block_size)


def draw_control(run: Run, order: WindowOrder, step: int, m: int) -> torch.Tensor | None:
    """The control vectors (micro_batch, T, control_dim) of draw_batch's inputs: each token's own
    story label (ncn.control); None for a variant without control."""
    if run.labels is None:
        return None
    from ncn.control import bits_to_vector

    bits = get_controls(run.labels, window_indices(run, order, step, m), run.mcfg.block_size)
    return bits_to_vector(bits, run.mcfg.control_dim)


def batch_digest(x: torch.Tensor, y: torch.Tensor) -> bytes:
    """sha256 of the inputs, then the targets, of one micro-batch (int64 little-endian, row-major)."""
    return hashlib.sha256(x.numpy().astype("<i8").tobytes() + y.numpy().astype("<i8").tobytes()).digest()


def _forward_backward(run: Run, model: nn.Module, order: WindowOrder, step: int, poison: bool):
    """Micro-batches m = rank, rank+N, ... of `step`, each loss scaled by 1/(their number), DDP's
    gradient sync on the last only. Returns the summed [loss, ce, reg], the signal statistics of
    micro-batch 0 when they are due (every signal_every steps and at step 1), and a (grad_accum,
    32) table holding the batch_digest of each micro-batch this rank fed (zeros elsewhere)."""
    local = range(run.dist.rank, run.tc.grad_accum, run.dist.world)
    want_signals = not spec(run.identity["variant"]).is_baseline and (step == 1 or step % run.tc.signal_every == 0)
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    stats, fed = {}, torch.zeros(run.tc.grad_accum, 32, dtype=torch.int64)
    for j, m in enumerate(local):
        x, y = draw_batch(run, order, step, m)
        c = draw_control(run, order, step, m)
        fed[m] = torch.tensor(list(batch_digest(x, y)))
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        c = c.to(run.device, non_blocking=True) if c is not None else None
        last = j == len(local) - 1
        sync = model.no_sync() if run.dist.world > 1 and not last else contextlib.nullcontext()
        with sync:
            if run.graphs:  # CUDA graphs: this forward may reuse the last one's output buffers
                torch.compiler.cudagraph_mark_step_begin()
            with _autocast(run.device):
                out = model(x, y, return_signals=want_signals and m == 0, control=c)
            loss = out.loss
            if poison:
                loss = loss * float("nan")
            (loss / len(local)).backward()
        sums += torch.stack([_scalar(loss, run.device), _scalar(out.ce, run.device), _scalar(out.reg, run.device)])
        if want_signals and m == 0:
            stats = signal_stats(out.signals)
    return sums, stats, fed


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _gather(run: Run, sums: torch.Tensor, fed: torch.Tensor, step: int, lr: float) -> tuple[list[float], bytes]:
    """The mean [loss, ce, reg] over every micro-batch of the step and the digests of all of them
    (each rank filled its own rows); NCNError on a non-finite loss."""
    if run.dist.world > 1:
        import torch.distributed as dist

        fed = fed.to(run.device)
        dist.all_reduce(sums)
        dist.all_reduce(fed)
    losses = (sums / run.tc.grad_accum).tolist()
    if not math.isfinite(losses[0]):
        raise NCNError(
            f"loss is {losses[0]} at step {step} (lr {lr:.3g}); training stopped. The last good checkpoint "
            f"({_latest_name(run.ckpt_dir)}) is kept; lower train.lr or check the data, then rerun"
        )
    return losses, bytes(fed.cpu().flatten().tolist())


def _update(run: Run, state: TrainState) -> None:
    if run.tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), run.tc.grad_clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)


@dataclasses.dataclass
class Faults:
    """Faults for tests, from NCN_FAULT_* (see the module docstring)."""

    nan_at: int | None = None
    kill_at: int | None = None
    delay_s: float = 0.0

    @classmethod
    def from_env(cls) -> Faults:
        return cls(_env_int("NCN_FAULT_NAN_AT_STEP"), _env_int("NCN_FAULT_KILL_AT_STEP"),
                   float(os.environ.get("NCN_FAULT_STEP_DELAY_S") or 0.0))

    def after_step(self, step: int) -> None:
        if self.kill_at == step:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.delay_s:
            time.sleep(self.delay_s)


def progress_bar(run: Run, initial: int):
    """Rank 0's progress bar (ncn.progress: a tqdm on a terminal, summary lines in a log file);
    None on other ranks."""
    if not run.dist.main:
        return None
    from ncn.progress import bar

    v, sz, seed = run.identity["variant"], run.identity["size"], run.identity["seed"]
    return bar(total=run.steps, initial=initial, desc=f"train {v}-{sz}-s{seed}", unit="step")


class TrainLog:
    """Rank 0's outputs while training: config.json, the live train log, MLflow, checkpoints, the
    bar. Other ranks get one that writes nothing."""

    def __init__(self, run: Run, state: TrainState, resumed: bool):
        from ncn.trackserver import remote_tracker
        from ncn.tracking import Tracker, TrackerThread

        self.run, self.state, self.main = run, state, run.dist.main
        if self.main and run.cfg["mlflow"]["enabled"]:  # in the pipeline's MLflow server, else on a worker thread
            self.tracker = TrackerThread(lambda: remote_tracker(run.cfg, run.run_dir) or Tracker(run.cfg, run.run_dir))
        else:
            self.tracker = Tracker(run.cfg, run.run_dir, enabled=False)
        self.csv_file = self.writer = None
        if self.main:
            run_config = run.config_json()
            write_json(run.run_dir / "config.json", run_config)
            # the live log is train_log.partial.csv (restarted from what the checkpoint knew); the
            # train_log.csv output is written atomically at the end, like model.pt and metrics.json
            write_csv_rows(run.run_dir / PARTIAL_LOG, run.columns, state.rows)
            self.tracker.start(run_config, *_n_params(state.model), resumed=resumed)
            self.tracker.add_rows(state.rows)
            if state.step == 0:
                log.info("%s-%s-s%d: %d params (%d non-embedding), %d steps of %d tokens, device %s, %d thread(s), "
                         "%d process(es)", *run.identity.values(), *_n_params(state.model), run.steps,
                         run.tokens_per_step, run.device, run.threads, run.dist.world)
        self.start_step, self.t_session = state.step, time.perf_counter()
        self.t_row, self.tokens_row = self.t_session, 0
        self.bar = progress_bar(run, state.step)
        if self.main:
            self.csv_file = open(run.run_dir / PARTIAL_LOG, "a", newline="", encoding="utf-8")
            self.writer = csv.DictWriter(self.csv_file, fieldnames=run.columns, lineterminator="\n")

    def step_done(self, step: int, lr: float, losses: list[float], stats: dict) -> None:
        """Book the step's losses; a log row every log_every steps, at step 1, at the last and when
        there are signal statistics; advance the bar."""
        run = self.run
        self.state.add_losses(losses, run.tc.log_every)
        self.tokens_row += run.tokens_per_step
        if step == 1 or step % run.tc.log_every == 0 or bool(stats) or step == run.steps:
            now = time.perf_counter()
            row = self.state.take_row(step, step * run.tokens_per_step, lr,
                                      round(self.tokens_row / max(now - self.t_row, 1e-9), 1), stats)
            self.t_row, self.tokens_row = now, 0
            if self.writer:
                self.writer.writerow(row)
                self.csv_file.flush()
                self.tracker.add_rows([row])
        if self.bar is not None:
            self.bar.update(1)
            el = time.perf_counter() - self.t_session
            tok_s = (step - self.start_step) * run.tokens_per_step / max(el, 1e-9)
            self.bar.set_postfix(loss=f"{losses[0]:.4f}", tok_s=f"{tok_s:.0f}")

    def checkpoint(self) -> None:
        if self.main:
            save_checkpoint(self.run.ckpt_dir, self.state.step, self.state.state_dict(),
                            keep=self.run.tc.keep_checkpoints)
            self.tracker.flush()

    def fail(self) -> None:
        if self.main:
            self.tracker.fail()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.csv_file:
            self.csv_file.close()


def _n_params(model) -> tuple[int, int]:
    return model.num_params(), model.num_params(non_embedding=True)


def _finish(run: Run, state: TrainState, out: TrainLog) -> dict:
    """model.pt, train_log.csv and metrics.json (last), atomically; MLflow's final metrics."""
    wall = state.wall()
    # after a resume without new steps (killed after the final checkpoint), the time comes from it
    final = [_mean([r[i] for r in state.recent]) for i in range(3)]
    steps, tps, identity = run.steps, run.tokens_per_step, run.identity
    cuda = run.device.type == "cuda"
    with atomic_path(run.run_dir / "model.pt") as tmp:
        torch.save({"model_config": run.mcfg.as_dict(), "state_dict": state.model.state_dict(),
                    **identity, "tokenizer_sha256": run.meta.get("tokenizer_sha256"), "step": steps,
                    "tokens": steps * tps}, tmp)
    write_csv_rows(run.run_dir / "train_log.csv", run.columns, state.rows)
    (run.run_dir / PARTIAL_LOG).unlink(missing_ok=True)
    n_params, n_params_ne = _n_params(state.model)
    metrics = {
        **identity, "profile": run.cfg["profile"], "steps": steps, "tokens": steps * tps,
        "epochs": steps * tps / run.n_train, "tokens_per_step": tps,
        "final_loss": final[0], "final_ce": final[1], "final_reg": final[2],
        "reg_init": state.reg_init, "reg_final": final[2],
        "n_params": n_params, "n_params_non_embedding": n_params_ne,
        "batch_order_sha256": state.fed_sha256,
        "device": run.device.type, "dtype": "bfloat16" if cuda else "float32",
        "wall_time_s": round(wall, 3), "tokens_per_s": round(steps * tps / max(wall, 1e-9), 1),
        "resumed_at_steps": state.resumed_at_steps, "finished": True,
    }
    write_json(run.run_dir / "metrics.json", metrics)  # last: its finished flag marks the run done
    out.tracker.finish(metrics, [run.run_dir / f for f in ("metrics.json", "config.json", "train_log.csv")])
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
    cfg = load_config(a.config, stage="train")
    train(cfg, a.variant, a.size, a.seed, Path(a.out), Path(a.data), threads=a.threads, config_source=a.config)
    return 0
