"""Whole training steps on the CPU, eager against torch.compile of the whole model (inductor default mode),
for none and causal. Usage: model_compiled.py THREADS BATCH D_MODEL LAYERS HEADS"""
import statistics, time, sys, torch
import ncn.model as M
from ncn.optim import AdamW
th, B, d, L, H = map(int, sys.argv[1:6])
torch.set_num_threads(th); T=128; V=4096
torch.manual_seed(0)
kw=dict(vocab_size=V,block_size=T,n_layer=L,n_head=H,d_model=d,d_ff=4*d,dropout=0.0)
cfgs={"causal":M.ModelConfig(ncn="causal",**kw)}
cfgs["none"]=M.match_params(cfgs["causal"])
idx=torch.randint(0,V,(B,T)); tg=torch.roll(idx,-1,1)
import torch._dynamo
steps={}; comp_t={}
for name,cfg in cfgs.items():
    for mode in ("eager","compiled"):
        torch.manual_seed(0); m=M.Transformer(cfg).train()
        opt=AdamW(m.parameters(), lr=1e-4) if hasattr(AdamW,'step') else None
        f=torch.compile(m) if mode=="compiled" else m
        def step(f=f,opt=opt):
            opt.zero_grad(set_to_none=True); loss=f(idx,tg).loss; loss.backward(); opt.step()
        t0=time.perf_counter(); step(); step(); comp_t[(name,mode)]=time.perf_counter()-t0
        steps[(name,mode)]=step
res={}
for r in range(25):
    for k,s in steps.items():
        t0=time.perf_counter(); s(); dt=time.perf_counter()-t0
        if r>=3: res.setdefault(k,[]).append(dt)
med={k:statistics.median(v)*1e3 for k,v in res.items()}
for k in med: print(k, "ms/step %.2f" % med[k], "first two steps %.1f s" % comp_t[k])
for mode in ("eager","compiled"):
    print(mode, "causal/none %.3f" % (med[("causal",mode)]/med[("none",mode)]))
print("compiled/eager none %.3f causal %.3f" % (med[("none","compiled")]/med[("none","eager")], med[("causal","compiled")]/med[("causal","eager")]))
