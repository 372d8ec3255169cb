import torch, time, statistics
for th in (1,2):
    torch.set_num_threads(th)
    for C in (64,128,256):
        B,T=16,128
        g=torch.randn(B,T,C); x=torch.randn(B,T,C)
        fns={
         "mul+sum": lambda: (g*x).sum(-1, keepdim=True),
         "vecdot": lambda: torch.linalg.vecdot(g, x, dim=-1),
         "bmm": lambda: torch.bmm(g.view(-1,1,C), x.view(-1,C,1)),
         "einsum": lambda: torch.einsum("btc,btc->bt", g, x),
         "mul only": lambda: g*x,
        }
        res={}
        for k,f in fns.items():
            for _ in range(20): f()
            ts=[]
            for _ in range(15):
                t=time.perf_counter()
                for _ in range(50): f()
                ts.append((time.perf_counter()-t)/50*1e6)
            res[k]=statistics.median(ts)
        print(th, C, "  ".join(f"{k} {v:.0f}us" for k,v in res.items()))
