"""Homeostasis control: the controller trained on the regulariser ALONE, from the same init.

A controller that never sees the CE loss can still make L_reg fall and keep the gains near 1;
what it cannot do is make the signals depend on the input in a way that helps prediction. So
the trained controller's per-token signal variance is compared with this control's.

For each run given (the claim variants at the largest size, every seed): rebuild the model the
run started from exactly as `ncn train` does (torch.manual_seed(seed), then Transformer of the
run's ModelConfig), freeze every parameter but the signal parameters (the controller, or
static's constants), and train those on L_reg = reg_lambda · Σ_s mean((s − 1)²) only, the CE
never computed, for analysis.regonly_steps AdamW steps: the run's train settings (lr with
warmup and cosine decay to min_lr over these steps, ncn.train.lr_at; betas, weight decay,
grad clip), on batches of train.micro_batch windows at random offsets of the train split
(a generator seeded by the seed).

Per-token variance of a signal: for each layer the population variance over every traced token
at position ≥ 1 (the sentences of `ncn analyze trace`, pooled), then the mean over layers.
Rows per (run, signal in g, beta, gamma, and "all" = the mean of the three):
  var_init      the model at initialisation (the control's starting point)
  var_regonly   the regulariser-only controller after training
  var_trained   the run's trained model (model.pt)
  reg_first, reg_last   the control's L_reg at its first and last step; steps its step count.
A static variant has var 0 (its signals are constants): exactly, for all three.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ncn.analysis import options, tables
from ncn.analysis.runs import SIGNALS as SIGNAL_NAMES

COLUMNS = ["variant", "size", "seed", "signal", "var_init", "var_regonly", "var_trained", "reg_first", "reg_last",
           "steps"]


def signals_of(model, idx):
    """The signals (B, T, L, 3) (static: (1, 1, L, 3)) from the embeddings alone: the controller's
    part of Transformer.forward, without the trunk that L_reg does not depend on."""
    import torch

    from ncn.model import signal_map

    tok = model.tok_emb(idx)
    emb = tok + model.pos_emb(torch.arange(idx.size(1), device=idx.device))
    return signal_map(model._raw_signals(tok, emb), model.cfg.beta_max)


def signal_params(model) -> list:
    """The parameters that make the signals: the controller's, or static's constants."""
    if model.controller is not None:
        return list(model.controller.parameters())
    return [model.static_z] if model.static_z is not None else []


def train_regonly(model, tokens: np.ndarray, tc, steps: int, seed: int) -> tuple[float, float]:
    """Train the signal parameters of `model` on L_reg alone, in place; (first, last) L_reg."""
    import torch

    from ncn.train import lr_at, make_optimizer

    keep = {id(p) for p in signal_params(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    opt = make_optimizer(model, tc, fused=False)
    gen = torch.Generator().manual_seed(int(seed))
    T = model.cfg.block_size
    data = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    model.train()
    regs = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc, steps)
        starts = torch.randint(0, len(data) - T, (tc.micro_batch,), generator=gen)
        idx = torch.stack([data[s : s + T] for s in starts.tolist()])
        reg = model._reg(signals_of(model, idx))
        opt.zero_grad(set_to_none=True)
        reg.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tc.grad_clip)
        opt.step()
        regs.append(float(reg.detach()))
    model.eval()
    return regs[0], regs[-1]


def per_token_variance(model, sentences) -> np.ndarray:
    """(3,) per-token variance of g, beta, gamma (see the module doc)."""
    import torch

    rows = []
    with torch.no_grad():
        for s in sentences:
            out = model(torch.tensor([s.ids]), return_signals=True)
            rows.append(out.signals[0, 1:].double())
    sig = torch.cat(rows)  # (N, L, 3)
    return sig.var(dim=0, correction=0).mean(dim=0).numpy()


def control_run(run_dir: str | Path, cfg: dict, data_dir: str | Path, threads: int = 1) -> pd.DataFrame:
    import torch

    from ncn.analysis.trace import load_ncn_run, load_tokenizer, plan_sentences
    from ncn.config import train_settings
    from ncn.data import open_split
    from ncn.model import Transformer

    trained, payload, meta = load_ncn_run(run_dir, cfg, data_dir, threads, "has no controller; pass an NCN run")
    seed, size = int(payload.get("seed", 0)), payload.get("size", "")
    sents = plan_sentences(cfg, data_dir, load_tokenizer(data_dir), meta, trained.cfg.block_size)
    torch.manual_seed(seed)  # the init depends on the seed only (ncn.train)
    model = Transformer(trained.cfg).eval()
    v_init = per_token_variance(model, sents)
    steps = cfg["analysis"]["regonly_steps"]
    first, last = train_regonly(model, open_split(data_dir, "train", meta), train_settings(cfg, size), steps, seed)
    v_reg, v_tr = per_token_variance(model, sents), per_token_variance(trained, sents)
    names = [*SIGNAL_NAMES, "all"]
    v_init, v_reg, v_tr = (np.append(v, v.mean()) for v in (v_init, v_reg, v_tr))
    return pd.DataFrame({"variant": trained.cfg.ncn, "size": size, "seed": seed, "signal": names,
                         "var_init": v_init, "var_regonly": v_reg, "var_trained": v_tr, "reg_first": first,
                         "reg_last": last, "steps": steps})


def add_arguments(p) -> None:
    p.add_argument("--run", nargs="*", default=[], metavar="RUN",
                   help="NCN run folders holding model.pt (none: an empty table)")
    options.add_config(p)
    options.add_data(p)
    p.add_argument("--csv", required=True, help="output table (results/tables/regonly.csv)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def main(args, cfg: dict) -> None:
    from ncn.progress import bar

    frames = [control_run(r, cfg, args.data, args.threads) for r in bar(args.run, desc="reg-only control", leave=False)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    tables.write_csv(df[COLUMNS], args.csv)
    for r in df[df["signal"] == "all"].itertuples(index=False):
        print(f"  {r.variant}/{r.size}/seed{r.seed}: per-token variance trained {r.var_trained:.3g}, reg-only "
              f"{r.var_regonly:.3g} (init {r.var_init:.3g}); L_reg {r.reg_first:.3g} -> {r.reg_last:.3g}",
              file=sys.stderr)
