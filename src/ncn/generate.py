"""`ncn generate --run RUN`: sample continuations of the config's prompts -> RUN/samples.json.

Sampling uses the model's KV cache (and, for the causal NCN variants, the pool's running
sums), temperature and top-k from the `generate` config section, and a torch.Generator
seeded by generate.seed, so samples are reproducible on one machine. Each prompt starts
after the end-of-text token, as a story in the training stream does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ncn.errors import NCNError
from ncn.fileio import write_json


def load_tokenizer(data_dir: Path):
    from ncn.data.tokenizer import load

    path = Path(data_dir) / "tokenizer.json"
    if not path.exists():
        raise NCNError(f"tokenizer not found: {path} (pass --data with the run's tokenized data folder)")
    return load(path)


def generate(run_dir: Path, cfg: dict | None = None, data: str | None = None, threads: int = 1,
             config_source: str = "--config") -> dict:
    from ncn.data import load_meta
    from ncn.model import load_model
    from ncn.runs import (check_config_matches, check_data_matches, config_of, data_dir_of, pick_device,
                          require_finished)

    run_dir = Path(run_dir)
    require_finished(run_dir)
    cfg, config_source = config_of(run_dir, cfg, config_source)
    g = cfg["generate"]
    torch.set_num_threads(threads)
    data_dir = data_dir_of(run_dir, data)
    device = pick_device(cfg["train"]["device"])
    model, payload = load_model(run_dir / "model.pt", map_location=device)
    check_config_matches(cfg, payload, run_dir / "model.pt", config_source)
    model.to(device).eval()
    eot = None
    if (data_dir / "meta.json").exists():
        meta = load_meta(data_dir)
        check_data_matches(payload, meta, run_dir / "model.pt", data_dir)
        eot = meta.get("eot_id")
    tok = load_tokenizer(data_dir)
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise NCNError(f"tokenizer in {data_dir} has {tok.get_vocab_size()} tokens but the model only "
                       f"{model.cfg.vocab_size}; use the run's own data folder (--data)")

    # warm-up (first-call allocations), so tokens/s measures generation itself
    model.generate(torch.zeros(1, 1, dtype=torch.long, device=device), 2, temperature=0.0)
    samples, total_new, total_time = [], 0, 0.0
    for i, prompt in enumerate(g["prompts"]):
        ids = ([eot] if eot is not None else []) + tok.encode(prompt).ids
        if not ids:
            raise NCNError(f"generate.prompts[{i}] is empty after tokenization")
        if len(ids) > model.cfg.block_size:
            # the model slides its window (model.generate crops to the last block_size tokens)
            print(f"ncn generate: note: generate.prompts[{i}] is {len(ids)} tokens, longer than the model's "
                  f"context (block_size {model.cfg.block_size}); the sample is conditioned on its last "
                  f"{model.cfg.block_size} tokens", file=sys.stderr)
        gen = torch.Generator(device=device).manual_seed(g["seed"] + i)
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        t0 = time.perf_counter()
        out = model.generate(idx, g["max_new_tokens"], temperature=g["temperature"], top_k=g["top_k"],
                             use_cache=True, generator=gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        new = out[0, len(ids):].tolist()
        completion = tok.decode(new)
        samples.append({"prompt": prompt, "completion": completion, "text": prompt + completion,
                        "new_tokens": len(new), "tokens_per_s": round(len(new) / max(dt, 1e-9), 1)})
        total_new, total_time = total_new + len(new), total_time + dt
    result = {
        "variant": payload.get("variant"), "size": payload.get("size"), "seed": payload.get("seed"),
        "temperature": g["temperature"], "top_k": g["top_k"], "max_new_tokens": g["max_new_tokens"],
        "generate_seed": g["seed"], "kv_cache": True, "device": device.type,
        "samples": samples, "tokens_per_s": round(total_new / max(total_time, 1e-9), 1),
    }
    write_json(run_dir / "samples.json", result)
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn generate",
        description="Sample text from a finished run with the KV cache: the prompts, temperature, top-k, "
        "length and seed of the config's 'generate' section. Writes RUN/samples.json (prompts, text, "
        "tokens/s). The tokenizer comes from the run's data folder (RUN/config.json) or --data.",
    )
    p.add_argument("--run", required=True, help="a finished run folder")
    p.add_argument("--config", help="config for the generate section (default: the run's own config.json)")
    p.add_argument("--data", help="folder with tokenizer.json and meta.json (default: the run's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    a = p.parse_args(argv)
    from ncn.config import load_config

    cfg = load_config(a.config) if a.config else None
    out = generate(Path(a.run), cfg, a.data, a.threads, config_source=a.config or "--config")
    for s in out["samples"]:
        print(f"--- {s['tokens_per_s']:.0f} tokens/s\n{s['text']}")
    return 0
