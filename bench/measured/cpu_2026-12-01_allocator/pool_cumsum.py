"""The causal prefix pool by cumulative sums against the first position's score (tried, not adopted;
bench/README.md, "The allocator"). As written, fp32: a score spread above ~80 overflows. The fp64
variant measured there is the same with `s = scores.double()`."""
import torch

def fwd3(scores, v):
    s = scores
    w = torch.exp(s - s[:, :1])  # (B, T, H), w_0 = 1
    den = w.cumsum(1)  # (B, T, H)
    num = (w.unsqueeze(-1) * v).cumsum(1)  # (B, T, H, D) float64
    out = num / den.unsqueeze(-1)
    return out.to(v.dtype), (w, den, out)

class Fn3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, v):
        out, saved = fwd3(scores, v)
        ctx.save_for_backward(v, *saved)
        return out
    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        v, w, den, out = ctx.saved_tensors
        dN = g / den.unsqueeze(-1)  # (B,T,H,D) float64
        dD = -(dN * out).sum(-1)  # (B,T,H)
        SN = dN.flip(1).cumsum(1).flip(1)  # Σ_{t≥j}
        SD = dD.flip(1).cumsum(1).flip(1)
        dv = w.unsqueeze(-1) * SN
        ds = w * ((v * SN).sum(-1) + SD)
        return ds.to(g.dtype), dv.to(g.dtype)
