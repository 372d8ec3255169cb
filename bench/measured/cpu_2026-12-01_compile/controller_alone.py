"""The NCN controller alone (pool + head + signal_map + regulariser), forward + backward, eager against
torch.compile (inductor default mode) on the CPU. Usage: controller_alone.py THREADS D_MODEL LAYERS"""
import statistics, time, sys, os, torch
import ncn.model as M
torch.set_num_threads(int(sys.argv[1])); B=16; T=128
d,L=int(sys.argv[2]),int(sys.argv[3])
cfg=M.ModelConfig(vocab_size=4096,block_size=T,n_layer=L,n_head=2,d_model=d,d_ff=4*d,ncn="causal")
m=M.Transformer(cfg); c=m.controller
e=torch.randn(B,T,d,requires_grad=True)
def ctrl_eager(e):
    z=c(e,causal=True); s=M.signal_map(z,4.0); return s, m._reg(s)
t0=time.perf_counter()
import torch._dynamo
print("dynamo import", round(time.perf_counter()-t0,2))
M.PREFIX_POOL_IMPL="chunked"
comp=torch.compile(ctrl_eager)
def run(f):
    s,r=f(e); (s.sum()+r).backward()
t0=time.perf_counter(); run(comp); print("first compiled call", round(time.perf_counter()-t0,2))
t0=time.perf_counter(); run(comp); print("second call", round(time.perf_counter()-t0,3))
res={}
for rnd in range(33):
    for k,f in (("eager",ctrl_eager),("compiled",comp)):
        t0=time.perf_counter(); run(f); dt=time.perf_counter()-t0
        if rnd>=3: res.setdefault(k,[]).append(dt)
print({k:round(statistics.median(v)*1e3,3) for k,v in res.items()})
s1,r1=ctrl_eager(e); s2,r2=comp(e); print("max diff", (s1-s2).abs().max().item(), (r1-r2).abs().item())
