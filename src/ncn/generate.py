"""`ncn generate --run RUN --prompt TEXT`: sample text from a finished run, streamed as it comes.

As nanoGPT's sample.py and llama2.c's run: each sample is printed to stdout token by token (the
prompt, then the completion, then a newline; a line of dashes between samples), and nothing else
goes to stdout, so `ncn generate ... > story.txt` keeps only the text. Byte-level BPE tokens can
split a UTF-8 character; its bytes are held back until the character is complete.

Settings: --prompt (repeatable), --num-samples, --max-new-tokens, --temperature (0 = greedy),
--top-k (`none`: no cut) and --seed; each defaults to the `generate` section of the run's own
config (or --config). Sample j of prompt i uses a torch.Generator seeded with seed + i·N + j
(N = --num-samples), so a sample is reproducible on one machine whatever else is asked.
Sampling uses the model's KV cache; `--kv-bits 8|4|16|8,4,...|beta:B` compresses it for real
(ncn.kvquant: int8, int4 packed two per byte, fp16, per layer, or β-guided bits per layer) and
the record reports its bytes beside the uncompressed cache's. `--modulate SPEC` scales, shifts
or sets the signals g, β, γ of chosen layers (ncn.knobs; for the baseline β scales the queries). Each prompt starts after the end-of-text token, as a story
in the training stream does; a prompt longer than the context is cropped to its last block_size
tokens, with a note.

Files: a hand call only streams. `--out FILE` also writes the samples as JSON (prompts, text,
tokens/s). The pipeline's own RUN/samples.json is written by the Snakemake rule, which passes
--out explicitly (Snakemake deletes the old file before the job runs); --out refuses to replace
an existing RUN/samples.json, so a hand call never overwrites it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ncn.errors import NCNError
from ncn.fileio import write_json
from ncn.knobs import GRAMMAR
from ncn.kvquant import KV_BITS_HELP

SEPARATOR = "-" * 15  # between samples on stdout, as nanoGPT's sample.py
FROM_CONFIG = "from config"  # top_k not given (None means: no top-k cut)


@dataclass
class Sampling:
    prompts: list[str]
    num_samples: int
    max_new_tokens: int
    temperature: float
    top_k: int | None
    seed: int
    source: str  # where the prompts came from, for messages: "--prompt" or "generate.prompts"

    def where(self, i: int) -> str:
        """Prompt i as a message names it: "--prompt", or "generate.prompts[i]"."""
        return "--prompt" if self.source == "--prompt" and len(self.prompts) == 1 else f"{self.source}[{i}]"


def sampling(g: dict, prompts: list[str] | None = None, num_samples: int | None = None,
             max_new_tokens: int | None = None, temperature: float | None = None, top_k=FROM_CONFIG,
             seed: int | None = None) -> Sampling:
    """The config's generate section `g` overridden by the given values (top_k None = no cut), checked."""
    pick = lambda x, key: g[key] if x is None else x  # noqa: E731
    s = Sampling(list(prompts) if prompts is not None else list(g["prompts"]), 1 if num_samples is None else num_samples,
                 pick(max_new_tokens, "max_new_tokens"), float(pick(temperature, "temperature")),
                 g["top_k"] if top_k is FROM_CONFIG else top_k, pick(seed, "seed"),
                 "--prompt" if prompts is not None else "generate.prompts")
    if not math.isfinite(s.temperature) or s.temperature < 0:
        raise NCNError(f"--temperature must be a finite number >= 0 (0 = greedy), got {s.temperature}")
    if s.top_k is not None and s.top_k < 1:
        raise NCNError(f"--top-k must be >= 1 (or 'none' to sample from every token), got {s.top_k}")
    for name, v in (("--num-samples", s.num_samples), ("--max-new-tokens", s.max_new_tokens)):
        if v < 1:
            raise NCNError(f"{name} must be >= 1, got {v}")
    if s.seed < 0:
        raise NCNError(f"--seed must be >= 0, got {s.seed}")
    if not s.prompts:
        raise NCNError("no prompt: pass --prompt TEXT (or list generate.prompts in the config)")
    for i, p in enumerate(s.prompts):
        if not p:
            raise NCNError(f"{s.where(i)} is empty: give the text to continue, e.g. --prompt 'Once upon a time'")
    return s


class TextStream:
    """Incremental decoding: push(token) returns the text that token completes. Text is released only
    as complete UTF-8 (a character split across byte-level tokens decodes to U+FFFD until its last
    byte arrives). Byte-level decoding concatenates, so the buffer restarts after a clean boundary."""

    def __init__(self, tok):
        self.tok, self.ids, self.sent = tok, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        stable = text.rstrip("\ufffd")
        piece = stable[self.sent:]
        self.sent = max(self.sent, len(stable))
        if stable == text:  # nothing pending: start afresh (keeps decoding O(1) per token)
            self.ids, self.sent = [], 0
        return piece

    def flush(self) -> str:
        """What is still held back (an unfinished character shows as U+FFFD, as in the JSON)."""
        piece = self.tok.decode(self.ids)[self.sent:]
        self.ids, self.sent = [], 0
        return piece


def sample(model, ids: list[int], s: Sampling, generator: torch.Generator, on_token=None,
           cache_factory=None) -> list[int]:
    """model.generate (KV cache) on one prompt -> the new token ids. on_token(id) is called for each
    new token as soon as it is sampled: a forward pre-hook on the token embedding sees each step's
    input, whose last token is the one the step before sampled (the last is reported at the end)."""
    streamed, calls = [], 0

    def hook(_module, args):
        nonlocal calls
        calls += 1
        if calls > 1:  # the first call embeds the prompt
            streamed.append(int(args[0][0, -1]))
            if on_token:
                on_token(streamed[-1])

    idx = torch.tensor([ids], dtype=torch.long, device=model.tok_emb.weight.device)
    handle = model.tok_emb.register_forward_pre_hook(hook)
    try:
        out = model.generate(idx, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, use_cache=True,
                             generator=generator, cache_factory=cache_factory)
    finally:
        handle.remove()
    new = out[0, len(ids):].tolist()
    streamed.append(new[-1])
    if on_token:
        on_token(new[-1])
    if streamed != new:  # model.generate no longer embeds one step at a time: the stream would lie
        raise RuntimeError(f"streamed tokens {streamed} differ from the generated {new}")
    return new


def load_run(run_dir: Path, cfg: dict, data: str | None, config_source: str):
    """(model on its device in eval mode, payload, tokenizer, end-of-text id or None) of a finished run."""
    from ncn.data import load_meta
    from ncn.data.tokenizer import load
    from ncn.model import load_model
    from ncn.runs import check_config_matches, check_data_matches, data_dir_of, pick_device

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
    if not (data_dir / "tokenizer.json").exists():
        raise NCNError(f"tokenizer not found: {data_dir / 'tokenizer.json'} (pass --data with the run's tokenized data folder)")
    tok = load(data_dir / "tokenizer.json")
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise NCNError(f"tokenizer in {data_dir} has {tok.get_vocab_size()} tokens but the model only "
                       f"{model.cfg.vocab_size}; use the run's own data folder (--data)")
    return model, payload, tok, eot


def check_out(run_dir: Path, out: str | Path | None) -> Path | None:
    """--out as a Path; refuses to replace the pipeline's RUN/samples.json."""
    if out is None:
        return None
    out, own = Path(out), Path(run_dir) / "samples.json"
    if out.exists() and out.resolve() == own.resolve():
        raise NCNError(f"{out} is the pipeline's samples file (Snakemake's generate rule writes it); write "
                       f"elsewhere (--out my_samples.json), or delete it and rerun the rule to regenerate it")
    return out


def _encode(tok, eot, prompt: str, where: str, block_size: int) -> list[int]:
    ids = ([eot] if eot is not None else []) + tok.encode(prompt).ids
    if not ids:
        raise NCNError(f"{where} is empty after tokenization")
    if len(ids) > block_size:
        # the model slides its window (model.generate crops to the last block_size tokens)
        print(f"ncn generate: note: {where} is {len(ids)} tokens, longer than the model's context "
              f"(block_size {block_size}); the sample is conditioned on its last {block_size} tokens", file=sys.stderr)
    return ids


def _stream_one(model, tok, ids, s: Sampling, seed: int, prompt: str, stdout, cache_factory=None) -> tuple[dict, float]:
    """One sample, streamed to stdout (prompt, completion, newline) -> (its JSON record, seconds)."""
    device = model.tok_emb.weight.device
    text = TextStream(tok)
    stdout.write(prompt)
    stdout.flush()

    def show(token):
        if piece := text.push(token):
            stdout.write(piece)
            stdout.flush()

    t0 = time.perf_counter()
    new = sample(model, ids, s, torch.Generator(device=device).manual_seed(seed), show, cache_factory)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    stdout.write(text.flush() + "\n")
    stdout.flush()
    completion = tok.decode(new)
    return {"prompt": prompt, "completion": completion, "text": prompt + completion, "seed": seed,
            "new_tokens": len(new), "tokens_per_s": round(len(new) / max(dt, 1e-9), 1)}, dt


def compression(model, kv_spec, encoded: list[list[int]]) -> tuple[object, dict]:
    """(the generate cache_factory or None, the record's kv fields) of a parsed --kv-bits. A pool
    that sees the future (asrun) has no cache: its keys and values are fake-quantised instead."""
    from ncn.kvquant import QuantKVCache, resolve_kv_bits, set_fake_quant
    from ncn.model import KVCache

    bits = resolve_kv_bits(kv_spec, model, encoded)
    w = model.tok_emb.weight
    fp32 = KVCache(model.cfg, 1, "meta", w.dtype)
    rec = {"kv_bits": bits, "kv_cache_bytes_uncompressed": fp32.k.nbytes + fp32.v.nbytes}
    if bits is None:
        return None, {**rec, "kv_cache_bytes": rec["kv_cache_bytes_uncompressed"]}
    rec["kv_cache_bytes"] = QuantKVCache(model.cfg, 1, "meta", w.dtype, bits).nbytes
    if model.cfg.spec.sees_future:
        set_fake_quant(model, bits)
        print(f"ncn generate: note: variant {model.cfg.ncn} recomputes its window at every step (no KV cache); "
              "its keys and values are fake-quantised to --kv-bits instead", file=sys.stderr)
        return None, rec
    return QuantKVCache.factory(bits), rec


def generate(run_dir: Path, cfg: dict | None = None, data: str | None = None, threads: int = 1,
             config_source: str = "--config", out: str | Path | None = None, stdout=None,
             modulate: list[str] | None = None, kv_bits: str | None = None, **settings) -> dict:
    """Stream samples of a finished run to stdout; returns (and with `out`, writes) the JSON record.
    settings: prompts, num_samples, max_new_tokens, temperature, top_k, seed (see `sampling`);
    modulate: --modulate specs (ncn.knobs); kv_bits: --kv-bits (ncn.kvquant)."""
    from ncn import knobs
    from ncn.kvquant import parse_kv_bits
    from ncn.runs import config_of, require_finished

    run_dir = Path(run_dir)
    out = check_out(run_dir, out)
    require_finished(run_dir)
    cfg, config_source = config_of(run_dir, cfg, config_source)
    s = sampling(cfg["generate"], **settings)  # bad settings fail before the model loads
    mods, kv_spec = knobs.parse(modulate), parse_kv_bits(kv_bits)
    torch.set_num_threads(threads)
    model, payload, tok, eot = load_run(run_dir, cfg, data, config_source)
    knobs.attach(model, mods)
    stdout = sys.stdout if stdout is None else stdout
    encoded = [_encode(tok, eot, p, s.where(i), model.cfg.block_size) for i, p in enumerate(s.prompts)]
    factory, kv_rec = compression(model, kv_spec, encoded)
    # warm-up (first-call allocations), so tokens/s measures generation itself
    model.generate(torch.zeros(1, 1, dtype=torch.long, device=model.tok_emb.weight.device), 2, temperature=0.0,
                   cache_factory=factory)
    samples, secs, total = [], 0.0, len(s.prompts) * s.num_samples
    for i, (prompt, ids) in enumerate(zip(s.prompts, encoded)):
        for j in range(s.num_samples):
            if samples:
                stdout.write(SEPARATOR + "\n")
            rec, dt = _stream_one(model, tok, ids, s, s.seed + i * s.num_samples + j, prompt, stdout, factory)
            samples.append(rec)
            secs += dt
            print(f"ncn generate: sample {len(samples)}/{total}: {rec['new_tokens']} tokens, "
                  f"{rec['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    result = {
        "variant": payload.get("variant"), "size": payload.get("size"), "seed": payload.get("seed"),
        "temperature": s.temperature, "top_k": s.top_k, "max_new_tokens": s.max_new_tokens,
        "num_samples": s.num_samples, "generate_seed": s.seed, "kv_cache": not model.cfg.spec.sees_future,
        "modulate": knobs.describe(mods), **kv_rec,
        "device": model.tok_emb.weight.device.type, "samples": samples,
        "tokens_per_s": round(sum(x["new_tokens"] for x in samples) / max(secs, 1e-9), 1),
    }
    if out is not None:
        write_json(out, result)
    return result


def _top_k(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="ncn generate",
        description="Sample text from a finished run (KV cache), streamed to stdout token by token: the "
        "prompt, its continuation, a line of dashes between samples. Unset options come from the "
        "'generate' section of the run's config (or --config). Writes a file only with --out (JSON: "
        "prompts, text, tokens/s); the pipeline's RUN/samples.json is never replaced by hand.",
        epilog="example: ncn generate --run results/runs/causal/xs/seed0 --prompt 'Once upon a time' "
        "--num-samples 3 --temperature 0.8 --top-k 50 --seed 1",
    )
    p.add_argument("--run", required=True, help="a finished run folder")
    p.add_argument("--prompt", action="append", help="text to continue (repeat for several prompts; "
                   "default: the config's generate.prompts)")
    p.add_argument("--num-samples", type=int, help="samples per prompt (default: 1)")
    p.add_argument("--max-new-tokens", type=int, help="tokens to sample per sample")
    p.add_argument("--temperature", type=float, help="softmax temperature; 0 = greedy (argmax)")
    p.add_argument("--top-k", type=_top_k, default=argparse.SUPPRESS, help="sample among the k likeliest tokens ('none': all)")
    p.add_argument("--seed", type=int, help="seed of the first sample (sample n uses seed + n)")
    p.add_argument("--modulate", action="append", metavar="SPEC",
                   help=f"change the signals g, beta, gamma after the controller, e.g. beta=1.5, "
                   f"beta@l3=0.5,gamma@*=0.8, g@l0-2=+0.1, gamma@l1:=1 (repeatable, applied in order; for "
                   f"'none' beta scales the queries). Grammar: {GRAMMAR}")
    p.add_argument("--kv-bits", metavar="BITS", help=KV_BITS_HELP)
    p.add_argument("--out", help="also write the samples as JSON to this file")
    p.add_argument("--config", help="config for the generate section (default: the run's own config.json)")
    p.add_argument("--data", help="folder with tokenizer.json and meta.json (default: the run's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    a = p.parse_args(argv)
    from ncn.config import load_config

    cfg = load_config(a.config, stage="generate") if a.config else None
    result = generate(Path(a.run), cfg, a.data, a.threads, config_source=a.config or "--config", out=a.out,
                      prompts=a.prompt, num_samples=a.num_samples, max_new_tokens=a.max_new_tokens,
                      temperature=a.temperature, top_k=getattr(a, "top_k", FROM_CONFIG), seed=a.seed,
                      modulate=a.modulate, kv_bits=a.kv_bits)
    if result["kv_bits"] is not None:
        print(f"ncn generate: KV cache at {','.join(map(str, result['kv_bits']))} bits per layer: "
              f"{result['kv_cache_bytes']} bytes per sequence of {result['kv_cache_bytes_uncompressed']} "
              f"uncompressed ({result['kv_cache_bytes'] / result['kv_cache_bytes_uncompressed']:.1%})", file=sys.stderr)
    print(f"ncn generate: {len(result['samples'])} samples, {result['tokens_per_s']:.0f} tokens/s"
          + (f"; wrote {a.out}" if a.out else ""), file=sys.stderr)
    return 0
