"""Whole training steps on the CPU: none (eager), causal (eager), causal with only its controller compiled
(nn.Module.compile, inductor default mode). Usage: controller_compiled.py THREADS BATCH D_MODEL LAYERS HEADS"""
import statistics, time, sys, torch
import ncn.model as M
from ncn.optim import AdamW
th, B, d, L, H = map(int, sys.argv[1:6])
torch.set_num_threads(th); T=128; V=4096
kw=dict(vocab_size=V,block_size=T,n_layer=L,n_head=H,d_model=d,d_ff=4*d,dropout=0.0)
cc=M.ModelConfig(ncn="causal",**kw); cn=M.match_params(cc)
idx=torch.randint(0,V,(B,T)); tg=torch.roll(idx,-1,1)
t0=time.perf_counter(); import torch._dynamo; print("dynamo import %.2f" % (time.perf_counter()-t0))
steps={}; first={}
for name,cfg,comp in (("none",cn,False),("causal",cc,False),("causal+ctrl compiled",cc,True)):
    torch.manual_seed(0); m=M.Transformer(cfg).train()
    if comp: m.controller.compile()
    opt=AdamW(m.parameters(), lr=1e-4)
    def step(m=m,opt=opt):
        opt.zero_grad(set_to_none=True); loss=m(idx,tg).loss; loss.backward(); opt.step()
    t0=time.perf_counter(); step(); step(); first[name]=time.perf_counter()-t0
    steps[name]=step
res={}
for r in range(33):
    for k,s in steps.items():
        t0=time.perf_counter(); s(); dt=time.perf_counter()-t0
        if r>=3: res.setdefault(k,[]).append(dt)
med={k:statistics.median(v)*1e3 for k,v in res.items()}
for k in med: print(f"{k:24s} {med[k]:8.2f} ms/step  ×none {med[k]/med['none']:.3f}  first two steps {first[k]:.1f} s")
save=med["causal"]-med["causal+ctrl compiled"]
print("saved per step %.2f ms; break-even after %.0f steps (compile time only)" % (save, (first['causal+ctrl compiled']-first['causal'])/max(save,1e-9)*1e3))
