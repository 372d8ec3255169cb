"""Ablation inside whole training steps (fwd + bwd + ncn.optim.AdamW), 1 thread, CPU clock, rounds
interleaved in rotating order: none, causal, and causal with one piece removed (no prefix pool: the
pool returns its values; no plumbing: the blocks get no signals; no signal_map: z + 1), and with
only one of g, β, γ applied. Run with glibc's mmap off (M_MMAP_MAX 0), the first setting tried,
before ncn.allocator. Usage: PYTHONPATH=src python ablate.py THREADS ROUNDS SIZE."""
import sys, time, statistics, torch, ncn.model as M, ncn.optim as O
import ctypes; _libc = ctypes.CDLL("libc.so.6"); _libc.mallopt(-4, 0); _libc.mallopt(-1, 1 << 30)
threads = int(sys.argv[1]); rounds = int(sys.argv[2]); size = sys.argv[3]
torch.set_num_threads(threads); clock = time.thread_time if threads == 1 else time.perf_counter
d, L, H, ff = {"s": (64, 2, 2, 256), "m": (96, 3, 3, 384), "l": (128, 4, 4, 512)}[size]
kw = dict(vocab_size=4096, block_size=128, d_model=d, n_layer=L, n_head=H, d_ff=ff, dropout=0.0)
torch.manual_seed(0)
none = M.Transformer(M.match_params(M.ModelConfig(ncn="causal", **kw)))
causal = M.Transformer(M.ModelConfig(ncn="causal", **kw))
idx = torch.randint(0, 4096, (16, 128)); tgt = torch.roll(idx, -1, 1)
orig_pool, orig_map, orig_per_layer = M.prefix_softmax_pool, M.signal_map, M.Transformer._per_layer
def mode(name):
    M.prefix_softmax_pool, M.signal_map, M.Transformer._per_layer = orig_pool, orig_map, orig_per_layer
    if name == "no_pool": M.prefix_softmax_pool = lambda s, v, chunk=None: v + 0 * s.unsqueeze(-1)
    if name == "no_plumbing": M.Transformer._per_layer = lambda self, s: [None] * L
    if name == "no_map": M.signal_map = lambda z, bm: z + 1.0
    if name.startswith("only_"):
        j = {"g": 0, "b": 1, "c": 2}[name[-1]]
        def per_layer(self, s):
            out = []
            for t in orig_per_layer(self, s):
                out.append(tuple(x if i == j else torch.ones((1, 1, 1)) for i, x in enumerate(t)))
            return out
        M.Transformer._per_layer = per_layer
cases = {"none": (none, "full"), "causal": (causal, "full"), "no_pool": (causal, "no_pool"),
         "no_plumbing": (causal, "no_plumbing"), "no_map": (causal, "no_map"), "only_g": (causal, "only_g"), "only_b": (causal, "only_b"), "only_c": (causal, "only_c")}
opts = {k: O.AdamW(m.parameters(), lr=1e-4) for k, (m, _) in cases.items()}
t = {k: [] for k in cases}
for r in range(rounds + 3):
    ks = list(cases); k0 = r % len(ks); ks = ks[k0:] + ks[:k0]
    for k in ks:
        m, md = cases[k]; mode(md); opt = opts[k]
        t0 = clock(); opt.zero_grad(); m(idx, tgt).loss.backward(); opt.step(); dt = clock() - t0
        if r >= 3: t[k].append(dt)
mode("full")
base = statistics.median(t["none"]) * 1e3
for k in cases:
    pr = statistics.median([x / y for x, y in zip(t[k], t["none"])])
    print(f"{size} {threads}T {k:12s} {statistics.median(t[k])*1e3:7.1f} ms  /none {pr:.4f}")
