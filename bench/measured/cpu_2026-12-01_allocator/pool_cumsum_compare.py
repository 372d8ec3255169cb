# Runs at a checkout before f5aae90 (2026-12-02), whose ncn.model still has _PrefixPoolFn and _prefix_pool_forward.
import sys, time, statistics, torch, ncn.model as M
sys.path.insert(0, __import__("os").path.dirname(__file__)); import pool_cumsum as pool3
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv)>1 else 1); torch.manual_seed(0)
clock = time.thread_time if torch.get_num_threads()==1 else time.perf_counter
for (T, D) in ((128, 32), (128, 64), (100, 48), (512, 128)):
    B,H = 16,2
    s = (3*torch.randn(B,T,H)).requires_grad_(); v = torch.randn(B,T,H,D, requires_grad=True); g = torch.randn(B,T,H,D)
    s64, v64 = s.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    ref = M._prefix_pool_forward(s64, v64, 32)[0]; ref.backward(g.double())
    for name, f in (("old", lambda: M._PrefixPoolFn.apply(s, v, 32)), ("new", lambda: pool3.Fn3.apply(s, v))):
        o = f(); o.backward(g)
        print(T, D, name, "vs f64: out %.2e ds %.2e dv %.2e" % ((o.double()-ref).abs().max(), (s.grad.double()-s64.grad).abs().max(), (v.grad.double()-v64.grad).abs().max()))
        s.grad = None; v.grad = None
    t = {"old": [], "new": []}
    fns = {"old": lambda: M._PrefixPoolFn.apply(s, v, 32), "new": lambda: pool3.Fn3.apply(s, v)}
    for r in range(30):
        for k in (["old","new"] if r%2 else ["new","old"]):
            t0=clock(); fns[k]().backward(g); dt=clock()-t0
            if r>=4: t[k].append(dt)
    print("   old %.3f new %.3f ms" % tuple(statistics.median(t[k])*1e3 for k in ("old","new")))
