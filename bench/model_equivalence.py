"""Do two checkouts' ncn.model compute the same numbers? Forward + backward of every variant.

    python bench/model_equivalence.py dump OUT.pt          (with PYTHONPATH=<checkout>/src)
    python bench/model_equivalence.py compare A.pt B.pt    (max |a - b| per variant and tensor)

`dump` builds every registered variant (and the baseline matched to the primary NCN) at a few
shapes with fixed seeds, runs forward with targets (loss, logits, signals) and backward, and
saves loss, ce, reg, logits, signals and every parameter's gradient. Also the causal-pool path
of "window" variants, skip_eps, and cached generation logits. A refactor for speed must leave
every difference at float rounding (about 1e-6 relative in fp32). Never asserts.
"""

from __future__ import annotations

import sys

import torch

SHAPES = {  # name: (d_model, n_layer, n_head, d_ff, T)
    "s": (64, 2, 2, 256, 128),
    "l": (128, 4, 4, 512, 128),
    "odd": (96, 3, 3, 384, 77),  # T not a multiple of the pool chunk
}


def dump(out: str) -> None:
    import ncn.model as M
    from ncn import variants as V

    torch.set_num_threads(1)
    res = {}
    for sname, (d, L, H, F, T) in SHAPES.items():
        kw = dict(vocab_size=257, block_size=T, n_layer=L, n_head=H, d_model=d, d_ff=F)
        cfgs = {v: M.ModelConfig(ncn=v, **kw) for v in V.names()}
        cfgs["matched"] = M.match_params(cfgs[V.PRIMARY])
        for v, cfg in cfgs.items():
            torch.manual_seed(1)
            model = M.Transformer(cfg)
            g = torch.Generator().manual_seed(2)
            idx = torch.randint(0, 257, (3, T), generator=g)
            tgt = torch.randint(0, 257, (3, T), generator=g)
            o = model(idx, tgt, return_signals=True)
            o.loss.backward()
            r = {"loss": o.loss, "ce": o.ce, "reg": o.reg, "logits": o.logits}
            if o.signals is not None:
                r["signals"] = o.signals
            r.update({f"grad.{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
            with torch.no_grad():
                if cfg.spec.sees_future:
                    r["causal_pool.logits"] = model(idx, causal_pool=True).logits
                r["skip.logits"] = model(idx, skip_eps=0.5).logits
                _, steps = model.generate(idx[:, : T // 2], 5, temperature=0, return_logits=True)
                r["generate.logits"] = steps
            res[f"{sname}/{v}"] = {k: t.detach().clone() for k, t in r.items()}
    torch.save(res, out)


def compare(a: str, b: str) -> None:
    A, B = torch.load(a), torch.load(b)
    worst = 0.0
    print(f"{'case':<16} {'loss':>10} {'logits':>10} {'signals':>10} {'grads':>10} {'other':>10}")
    for case in A:
        ra, rb = A[case], B[case]
        assert set(ra) == set(rb), (case, set(ra) ^ set(rb))
        diff = {k: (ra[k] - rb[k]).abs().max().item() for k in ra}
        grads = max(v for k, v in diff.items() if k.startswith("grad."))
        other = max(v for k, v in diff.items() if k.endswith(".logits") and "." in k)
        row = [diff["loss"], diff["logits"], diff.get("signals", 0.0), grads, other]
        worst = max(worst, *row)
        print(f"{case:<16} " + " ".join(f"{x:10.2e}" for x in row))
    print(f"max abs diff over everything: {worst:.2e}")


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    else:
        compare(sys.argv[2], sys.argv[3])
