"""The pieces of bench/gpu_smoke.sh that are not `ncn bench model` or the CLI. Each runs on any
device (--device cpu with tiny sizes is the plumbing check where no GPU exists).

    python bench/gpu_checks.py train    --device cuda [--steps 300] [--d-model 256 ...]
    python bench/gpu_checks.py generate --device cuda [--new 96]

train     the same training steps eager and under torch.compile (same init, same batches):
          tokens/s of each (compile time apart), the losses' largest difference, and that the
          controller's signals and the loss are fp32 under bf16 autocast.
generate  greedy generation with the KV cache vs without, past block_size (the sliding
          window): identical tokens and close logits for every variant that caches.
Prints one line per check and exits 1 if any FAILs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

import ncn.model as M


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def model_cfg(a, variant: str) -> M.ModelConfig:
    return M.ModelConfig(vocab_size=a.vocab, block_size=a.seq_len, n_layer=a.n_layer, n_head=a.n_head,
                         d_model=a.d_model, d_ff=4 * a.d_model, ncn=variant)


def run_steps(model, batches, dev, bf16: bool, accum: int = 1, graphs: bool = False) -> tuple[list[float], list[float]]:
    """(losses, step seconds) of AdamW steps over `batches` under bf16 autocast (or fp32), each
    batch in `accum` micro-batches (gradient accumulation, as ncn.train does); `graphs`: marks each
    forward's start for CUDA graph replay, as ncn.train does under reduce-overhead."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=dev.type == "cuda")
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    losses, times = [], []
    for x, y in batches:
        sync(dev)
        t0 = time.perf_counter()
        total = 0.0
        for xm, ym in zip(x.chunk(accum), y.chunk(accum)):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast():
                loss = model(xm, ym).loss
            (loss / accum).backward()
            total += loss.item() / accum
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        times.append(time.perf_counter() - t0)
    return losses, times


def compiled_name(mode: str) -> str:
    return "compiled" if mode == "default" else f"compiled ({mode})"


def check_train(a, dev) -> list[tuple[str, bool, str]]:
    torch.manual_seed(0)
    batches = [(x, torch.roll(x, -1, 1)) for x in torch.randint(0, a.vocab, (a.steps, a.batch, a.seq_len), device=dev)]
    init = M.Transformer(model_cfg(a, "causal")).to(dev).state_dict()
    results, checks = {}, []
    for mode in ["eager"] + (a.compile_mode if a.compile else []):
        model = M.Transformer(model_cfg(a, "causal")).to(dev)
        model.load_state_dict(init)
        fn = model if mode == "eager" else torch.compile(model, mode=mode)
        losses, times = run_steps(fn, batches, dev, a.bf16, a.accum, graphs=mode == "reduce-overhead")
        results[mode] = losses
        tok_s = a.batch * a.seq_len / statistics.median(times[5:] or times)
        name = "eager" if mode == "eager" else compiled_name(mode)
        note = f"first step {times[0]:.2f} s" if mode == "eager" else f"first step (compile) {times[0]:.1f} s"
        ok = all(map(lambda v: v == v and abs(v) < 1e4, losses))
        checks.append((f"train {name}: {a.steps} steps of {a.accum} micro-batch(es), tokens/s {tok_s:,.0f}, "
                       f"final loss {losses[-1]:.4f}", ok, note))
    tol = 0.05 if a.bf16 else 1e-3
    for mode in results.keys() - {"eager"}:
        diff = max(abs(p - q) for p, q in zip(results["eager"], results[mode]))
        checks.append((f"train {compiled_name(mode)} vs eager: largest loss difference {diff:.2e} (tolerance {tol})", diff < tol, ""))
    return checks + check_autocast_dtypes(a, dev)


def check_autocast_dtypes(a, dev) -> list[tuple[str, bool, str]]:
    """The controller's signals and the loss are fp32 under bf16 autocast (issue 14)."""
    model = M.Transformer(model_cfg(a, "causal")).to(dev)
    x = torch.randint(0, a.vocab, (2, a.seq_len), device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out = model(x, torch.roll(x, -1, 1), return_signals=True)
    return [(f"bf16 autocast: signals {out.signals.dtype}, loss {out.loss.dtype}, ce {out.ce.dtype}",
             out.signals.dtype == out.loss.dtype == torch.float32, "signals and loss must be fp32"),
            check_autocast_ce(a, dev)]


def check_autocast_ce(a, dev) -> tuple[str, bool, str]:
    """ncn.model.cross_entropy under bf16 autocast == F.cross_entropy on logits.float(): an fp32
    loss, the same value and gradient to float rounding. F.cross_entropy on the bf16 logits would
    fail this: under autocast it rounds every log-prob to bf16 (7.2e-4 off the loss on an H200;
    bench/README.md, "GPU"), which is what makes the textbook reference faster at GPT-2's vocab."""
    z = torch.randn(4 * a.seq_len, a.vocab, device=dev).to(torch.bfloat16)
    t = torch.randint(-1, a.vocab, (z.size(0),), device=dev)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        la = M.cross_entropy(za, t)
    lb = torch.nn.functional.cross_entropy(zb.float(), t, ignore_index=-1)
    la.backward()
    lb.backward()
    dl, dg = abs(la.item() - lb.item()), (za.grad.float() - zb.grad.float()).abs().max().item()
    ok = la.dtype == torch.float32 and dl <= 1e-5 * max(1.0, lb.item()) and dg <= 2 ** -8 * zb.grad.abs().max().item()
    return (f"cross_entropy under autocast: {la.dtype}, loss diff {dl:.1e}, grad max diff {dg:.1e} vs logits.float()",
            ok, "fp32 loss equal to the explicit cast's")


def check_generate(a, dev) -> list[tuple[str, bool, str]]:
    checks = []
    for variant in a.variants:
        torch.manual_seed(0)
        model = M.Transformer(model_cfg(a, variant)).to(dev).eval()
        prompt = torch.randint(0, a.vocab, (a.gen_batch, a.prompt), device=dev)
        out, t = {}, {}
        for cached in (True, False):
            sync(dev)
            t0 = time.perf_counter()
            out[cached] = model.generate(prompt, a.new, temperature=0, use_cache=cached, return_logits=True)
            sync(dev)
            t[cached] = time.perf_counter() - t0
        same = torch.equal(out[True][0], out[False][0])
        diff = (out[True][1] - out[False][1]).abs().max().item()
        speed = f"{a.new * a.gen_batch / t[True]:,.0f} vs {a.new * a.gen_batch / t[False]:,.0f} tokens/s"
        checks.append((f"generate {variant}: cached == uncached tokens: {same}, logits max diff {diff:.1e}, {speed}",
                       same and diff < 1e-3, f"{a.prompt}+{a.new} tokens past block_size {a.seq_len}"))
    return checks


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["train", "generate"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--fp32", dest="bf16", action="store_false", help="train in fp32 (default: bf16 autocast)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager only (torch.compile on a "
                   "CPU takes minutes)")
    p.add_argument("--compile-mode", nargs="+", default=["default"],
                   help="torch.compile modes to check against eager: default, reduce-overhead (CUDA graphs), "
                   "max-autotune-no-cudagraphs (default: %(default)s)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step (gradient accumulation; "
                   "default: %(default)s)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--variants", nargs="+", default=["none", "causal", "tonic", "static"])
    p.add_argument("--gen-batch", type=int, default=4)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new", type=int, default=96, help="new tokens (prompt + new > --seq-len exercises the slide)")
    return p


def main() -> int:
    a = parser().parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    checks = check_train(a, dev) if a.what == "train" else check_generate(a, dev)
    for text, ok, note in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {text}" + (f"  ({note})" if note else ""), flush=True)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
