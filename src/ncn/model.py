"""A decoder-only Transformer LM with Neuromodulatory Control Networks (NCNs).

An NCN is a small network beside the Transformer that emits, for every layer l and token t,
three signals that modulate the layer:

    gain       g = 2·sigmoid(z)                     multiplies both residual branches
    precision  β = min(softplus(z) + 0.01, beta_max) multiplies the queries (inverse temperature)
    gate       γ = sigmoid(z)                       multiplies the FFN output

    x = x + g·Attn(N(x); q ← β·q)
    x = x + g·γ·FFN(N(x))

and a homeostatic regulariser  reg = reg_lambda · Σ_{s∈{g,β,γ}} mean((s − 1)²)  keeps them near 1.

Variants (`ModelConfig.ncn`) are named presets of flags in `ncn.variants.REGISTRY` (like
nanoGPT's `bias` flag); the model reads only the flags, through `ModelConfig.spec`:
  pool       the controller: one learned query attends (ncn_heads heads) over the NCN input;
             "window" pools the WHOLE window without a causal mask, so position t sees the
             future (the original's "leak", variant "asrun"); "prefix" pools positions ≤ t;
             "none" has no controller. Then → RMSNorm → Linear(d→ncn_hidden) → tanh →
             Linear(→3·n_layer) gives the raw z of every layer.
  positions  the NCN input is token + position embeddings; without it, token embeddings only
             (with a prefix pool and no per-token term the signals are then a function of the
             multiset of prefix tokens: "tonic").
  per_token  each token's input = pooled + its own NCN input embedding.
  init       "zeroed": all NCN biases start at zero (as the original ran), so at init
             β ≈ softplus(0)+0.01 ≈ 0.703, γ ≈ 0.5, g ≈ 1; "target": the output bias starts at
             g = 1, β = 1, γ = gate_init.
  static     learned per-layer constants instead of a controller ("static").
  control    the controller also reads an external control vector (`control_dim`, ncn.control),
             added to its pooled vector: "control" = causal + a per-story label.
No controller and no constants is the plain Transformer, the iso-parameter baseline ("none":
see `match_params`).

Fidelity options (ModelConfig; each default is this model's own choice, each other value the
original's; config/paper.yaml turns them on):
  dropout_layout     "single": embedding dropout, attention-probability dropout (SDPA dropout_p),
                     the attention output dropped once, the FFN output dropped once. "original":
                     the same plus the attention output dropped a second time and the FFN's
                     inner activations (after the GELU) dropped: 2 + 2 per layer, as the original.
  ncn_after_dropout  False: the NCN reads the embeddings before embedding dropout; True: after
                     it, as the original (the trunk's dropped tensor itself, so the same mask;
                     a variant without positions drops its token embeddings on its own draw).
  pool_bias          False: the pool's value and output projections have no bias (a bias there
                     is redundant with the next Linear's); True: both have one, as the original's
                     pooling attention, zero at init (the original's init zeroed every bias).
                     The key projection never has one (softmax is shift-invariant, so a key
                     bias could never receive a gradient).
All three are off by default, and off they compute exactly (bitwise) what the model computed
before they existed; their values are left out of the records while off (`as_dict`).

Design choices where the description is silent:
  * The NCN reads the same token(+position) embeddings the trunk starts from, NOT detached:
    the NCN's gradient also trains the shared embeddings (as a module reading the embedding
    output would in the original). By default the NCN input is taken before embedding dropout.
  * The pool's key projection has no bias; value and output projections have none unless
    pool_bias. The two MLP Linears have biases.
  * Trunk Linears have no biases (attention, FFN); the baseline and NCN variants share that.
  * The causal prefix pool is a prefix softmax computed in O(T), exactly causal and stable for
    any score range (see `prefix_softmax_pool`); generation updates running softmax sums in O(1)
    per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ncn.errors import NCNError
from ncn.variants import VariantSpec, baseline, spec as variant_spec

SIGNAL_NAMES = ("g", "beta", "gamma")


@dataclass
class ModelConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    d_model: int
    d_ff: int
    dropout: float = 0.0
    ncn: str = "none"
    ncn_hidden: int = 64
    ncn_heads: int = 2
    reg_lambda: float = 0.01
    beta_max: float = 4.0
    gate_init: float = 0.95
    control_dim: int = 0  # external control vector into the controller's input (ncn.control); 0 = off
    dropout_layout: str = "single"  # or "original": see the module docstring (fidelity options)
    ncn_after_dropout: bool = False  # the NCN reads the embeddings after embedding dropout (the original)
    pool_bias: bool = False  # biases on the pool's value and output projections (the original)

    def as_dict(self) -> dict:
        """The fields, each of OFF_BY_DEFAULT left out while at its default (off): what model.pt,
        config.json and the checkpoint fingerprint record, so a run without these options records
        exactly what it recorded before they existed."""
        d = asdict(self)
        for name, off in OFF_BY_DEFAULT.items():
            if d[name] == off:
                del d[name]
        return d

    @property
    def spec(self) -> VariantSpec:
        """The flags of variant `ncn` (ncn.variants); the model branches on these, never on names."""
        return variant_spec(self.ncn)

    def __post_init__(self):
        try:
            sp = self.spec
        except NCNError as e:
            raise NCNError(f"ModelConfig.ncn: {e}") from None
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff", "ncn_hidden", "ncn_heads"):
            if int(getattr(self, name)) < 1:
                raise NCNError(f"ModelConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if int(self.control_dim) < 0 or (self.control_dim and not sp.controller):
            raise NCNError(f"ModelConfig.control_dim {self.control_dim}: the control vector enters the NCN "
                           f"controller's input; it must be >= 0, and 0 for variant '{self.ncn}' (no controller)")
        if self.d_model % self.n_head:
            raise NCNError(f"ModelConfig: d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if sp.controller and self.d_model % self.ncn_heads:
            raise NCNError(f"ModelConfig: d_model {self.d_model} is not divisible by ncn_heads {self.ncn_heads}")
        if not 0.0 < self.gate_init < 1.0:
            raise NCNError(f"ModelConfig.gate_init must be in (0, 1), got {self.gate_init}")
        if self.beta_max <= 1.0:
            raise NCNError(f"ModelConfig.beta_max must be > 1 (the init value of β), got {self.beta_max}")
        if not 0.0 <= self.dropout < 1.0:
            raise NCNError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.dropout_layout not in DROPOUT_LAYOUTS:
            raise NCNError(f"ModelConfig.dropout_layout must be one of {', '.join(DROPOUT_LAYOUTS)}, "
                           f"got {self.dropout_layout!r}")


DROPOUT_LAYOUTS = ("single", "original")
# Options that a record leaves out while they are at this value (ModelConfig.as_dict).
OFF_BY_DEFAULT = {"control_dim": 0, "dropout_layout": "single", "ncn_after_dropout": False, "pool_bias": False}


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, T, vocab): every position (analysis needs per-token surprisal)
    loss: torch.Tensor | None  # ce + reg; None without targets
    ce: torch.Tensor | None
    reg: torch.Tensor  # 0 for the baseline
    signals: torch.Tensor | None  # (B, T, n_layer, 3) in SIGNAL_NAMES order, when asked
    skip_frac: float | None = None  # fraction of (layer, token) FFN evaluations skipped


# ----------------------------------------------------------------------------------------------
# CPU kernels: torch runs RMSNorm and cross-entropy as fused kernels on CUDA, but on CPU RMSNorm's
# backward is a chain of small autograd ops and cross-entropy takes two exp passes over the
# (tokens × vocab) logits. These two give the same numbers (forward of the norm bitwise, the rest
# to float rounding) in fewer passes over memory; CUDA keeps torch's.


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # nn.RMSNorm's ops, in its order
        xh = x * r
        ctx.save_for_backward(xh, r, w)
        return xh * w

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # dx = r·(g·w − x̂·mean(g·w·x̂)),  dw = Σ g·x̂
        xh, r, w = ctx.saved_tensors
        gxh = g * xh
        dot = (gxh @ w).unsqueeze(-1)  # Σ_i g_i·w_i·x̂_i per row, one GEMV
        dx = torch.addcmul(g * w, xh, dot, value=-1.0 / xh.size(-1)).mul_(r)
        return dx, gxh.reshape(-1, xh.size(-1)).sum(0), None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameter, same forward bits) with a hand-written backward on CPU."""

    def forward(self, x):
        if x.device.type != "cpu":
            return super().forward(x)
        return _RMSNormFn.apply(x, self.weight, self.eps)


class _CrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):  # logits (N, V), targets (N,) with -1 = ignored
        keep = targets != -1
        t = targets.clamp(min=0).unsqueeze(-1)
        m = logits.amax(-1, keepdim=True)
        e = (logits - m).exp_()  # kept: the backward's softmax is e / Σe, no second exp pass
        s = e.sum(-1, keepdim=True)
        nll = ((m - logits.gather(-1, t)) + s.log()).squeeze(-1)  # log_softmax's order: no m + log s rounding
        n = keep.sum()
        ctx.save_for_backward(e, s, t, keep, n)
        return (nll * keep).sum() / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # d/dlogits = (softmax − onehot(target)) · g / n on kept rows
        e, s, t, keep, n = ctx.saved_tensors
        scale = ((g / n) * keep).unsqueeze(-1)
        return (e * (scale / s)).scatter_add_(-1, t, -scale), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits (N, V), targets (N,), ignore_index=-1), in fp32."""
    if logits.device.type != "cpu":
        return F.cross_entropy(logits.float(), targets, ignore_index=-1)
    return _CrossEntropyFn.apply(logits.float(), targets)


# ----------------------------------------------------------------------------------------------
# signals


def signal_map(z: torch.Tensor, beta_max: float) -> torch.Tensor:
    """Raw controller outputs z (..., 3) -> signals (..., 3) in order (g, β, γ), always in fp32: under
    bf16 autocast z is bf16, whose sigmoid resolves only ~0.4–0.8% near 1 (a no-op on fp32 z)."""
    z = z.float()
    g = 2.0 * torch.sigmoid(z[..., 0])
    beta = (F.softplus(z[..., 1]) + 0.01).clamp(max=beta_max)
    gamma = torch.sigmoid(z[..., 2])
    return torch.stack((g, beta, gamma), dim=-1)


def signal_bias_init(gate_init: float) -> torch.Tensor:
    """The raw z that maps to g = 1, β = 1, γ = gate_init (the "target" init)."""
    z_g = 0.0  # 2·sigmoid(0) = 1
    z_beta = math.log(math.expm1(1.0 - 0.01))  # softplus⁻¹(0.99)
    z_gamma = math.log(gate_init / (1.0 - gate_init))  # logit
    return torch.tensor([z_g, z_beta, z_gamma])


class PrefixPool(nn.Module):
    """Attention pooling with one learned query and `n_heads` heads.

    causal=False: one pooled vector over the whole window (the "window" leak), shape (B, 1, d).
    causal=True:  position t pools over positions ≤ t, shape (B, T, d).

    The causal pool is a prefix softmax, pooled_t = Σ_{s≤t} exp(a_s) v_s / Σ_{s≤t} exp(a_s),
    computed by `prefix_softmax_pool` in O(T) (cumulative sums, or chunks of C positions)
    instead of a (T×T) attention. `PREFIX_POOL_IMPL = "sdpa"` switches to the O(T²) reference:
    scaled_dot_product_attention with the query repeated per position.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = False):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.query = nn.Parameter(torch.zeros(n_heads, self.head_dim))
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        # the value projection's bias (pool_bias), zero at init; never one on the keys (see above)
        self.v_bias = nn.Parameter(torch.zeros(n_heads, self.head_dim)) if bias else None

    def _scores_values(self, e):
        """scores (B, T, H) = k·q/√hd and values (B, T, H, hd). kv's rows are the key, then the
        value projection; k·q = e·(W_kᵀq), so the keys themselves are never formed."""
        B, T, d = e.shape
        w_k, w_v = self.kv.weight.split(d)
        qk = torch.einsum("hjd,hj->hd", w_k.view(self.n_heads, self.head_dim, d), self.query)
        scores = e @ (qk.t() / math.sqrt(self.head_dim))
        v = F.linear(e, w_v).view(B, T, self.n_heads, self.head_dim)
        if self.v_bias is not None:
            v = v + self.v_bias
        return scores, v

    def forward(self, e: torch.Tensor, causal: bool) -> torch.Tensor:
        B, T, d = e.shape
        scores, v = self._scores_values(e)
        if not causal:
            p = torch.softmax(scores, dim=1)  # over all T positions: the future included
            pooled = torch.einsum("bth,bthd->bhd", p, v).reshape(B, 1, d)
        elif PREFIX_POOL_IMPL == "sdpa":  # the O(T²) reference: the query repeated per position
            k = F.linear(e, self.kv.weight[:d]).view(B, T, self.n_heads, self.head_dim)
            q = self.query.view(1, self.n_heads, 1, self.head_dim).expand(B, -1, T, -1).contiguous()
            pooled = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            pooled = pooled.transpose(1, 2).reshape(B, T, d)
        else:
            pooled = prefix_softmax_pool(scores, v).reshape(B, T, d)
        return self.proj(pooled)

    # -- incremental (generation): running softmax sums (max m, denominator, numerator) --------
    def prefix_state(self, e: torch.Tensor):
        """The running-sum state after pooling all of `e` (B, T, d), to continue with `step`."""
        scores, v = self._scores_values(e)
        m = scores.amax(dim=1)  # (B, H)
        w = torch.exp(scores - m.unsqueeze(1))
        return m, w.sum(dim=1), torch.einsum("bth,bthd->bhd", w, v)

    def step(self, e: torch.Tensor, state):
        """Pool one more position e (B, 1, d) onto `state`: O(1) per token, no prefix recompute."""
        B, _, d = e.shape
        scores, v = self._scores_values(e)
        s, v = scores[:, 0], v[:, 0]  # (B, H), (B, H, hd)
        m, den, num = state
        m_new = torch.maximum(m, s)
        old, new = torch.exp(m - m_new), torch.exp(s - m_new)
        den = den * old + new
        num = num * old.unsqueeze(-1) + new.unsqueeze(-1) * v
        return self.proj((num / den.unsqueeze(-1)).reshape(B, 1, d)), (m_new, den, num)


PREFIX_POOL_IMPL = "auto"  # "cumulative" on the CPU without autocast, else "chunked"; or either of them, or "sdpa"
POOL_CHUNK = 32
POOL_SPREAD = 30.0  # the cumulative pool's limit on s_t − s_0: rows past it are pooled by chunks


def prefix_softmax_pool(scores: torch.Tensor, v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """out_t = Σ_{j≤t} softmax_{j≤t}(scores)_j · v_j for every t: scores (B, T, H), v (B, T, H, D).

    Two exactly causal computations (tests check both bit for bit against the future):
      cumulative  cumulative sums of exp(s_j − s_0)·v_j and exp(s_j − s_0), divided: O(T·D), a
                  hand-written backward (`_CumulativePoolFn`). The reference s_0 (position 0's
                  score) is in every row's past, and its own term is 1, so every denominator is
                  ≥ 1. A row t whose running max strays above s_0 + POOL_SPREAD (an exponent of
                  e^30 ≈ 1e13 for one weight against another) takes the chunked pool's value
                  instead; that test looks at s_{≤t} only, so each row's bits still depend on its
                  past alone. The CPU's choice ("auto"): it does ~2× fewer passes.
      chunked     positions in chunks of C; see `_chunked_prefix_pool`. Stable for any score
                  range; differentiated by autograd (CUDA, autocast).
    """
    impl = PREFIX_POOL_IMPL
    if impl == "auto":
        cpu = scores.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
        impl = "cumulative" if cpu else "chunked"
    C = min(chunk or POOL_CHUNK, scores.size(1))
    if impl != "cumulative":
        return _chunked_prefix_pool(scores, v, C)
    rel = scores - scores[:, :1].detach()  # against position 0's score: a constant, the ratio ignores it
    out = _CumulativePoolFn.apply(rel, v)
    spread = rel.detach()
    if spread.numel() and spread.amax() > POOL_SPREAD:  # rare: rows whose running max strays too far, by chunks
        far = spread.cummax(dim=1).values > POOL_SPREAD  # (B, T, H): row t looks at s_{≤t} only
        out = torch.where(far.unsqueeze(-1), _chunked_prefix_pool(scores, v, C), out)
    return out


class _CumulativePoolFn(torch.autograd.Function):
    """The cumulative prefix pool of the scores relative to position 0's, s_j − s_0: with
    e_j = exp(s_j − s_0), N_t = Σ_{j≤t} e_j v_j and Z_t = Σ_{j≤t} e_j, out_t = N_t / Z_t.
    Backward, with y_t = ∂out_t / Z_t and c_t = y_t · out_t: ∂v_j = e_j Σ_{t≥j} y_t and
    ∂s_j = e_j (v_j · Σ_{t≥j} y_t − Σ_{t≥j} c_t). Exponents are capped at POOL_SPREAD; a capped
    term only enters rows that `prefix_softmax_pool` replaces, whose gradient here is 0."""

    @staticmethod
    def forward(ctx, rel, v):
        e = torch.exp(rel.clamp_max(POOL_SPREAD))  # (B, T, H), e_0 = 1
        den = e.cumsum(1)
        out = (e.unsqueeze(-1) * v).cumsum(1) / den.unsqueeze(-1)  # (B, T, H, D)
        ctx.save_for_backward(v, e, den, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        v, e, den, out = ctx.saved_tensors
        y = g / den.unsqueeze(-1)
        c = (y * out).sum(-1)
        Y = y.flip(1).cumsum(1).flip(1)  # Σ_{t≥j}
        Yc = c.flip(1).cumsum(1).flip(1)
        return e * ((v * Y).sum(-1) - Yc), e.unsqueeze(-1) * Y


def _chunked_prefix_pool(scores, v, C):
    """The chunked prefix pool, out (B, T, H, D).

    Positions are cut into chunks of C. Within a chunk, a masked (C×C) weight matrix; earlier
    chunks enter through their summaries Σ_j exp(s_j − μ_i)·v_j (μ_i = the chunk's max). Every
    exponent is taken relative to r_t = max_{j≤t} s_j (a running max), so each weight is ≤ 1
    and the denominator ≥ 1: no overflow or underflow for any score range. Only j ≤ t ever
    enter row t (future entries are exact zeros), so the result is exactly causal. The
    reference maxima are detached: the ratio does not depend on them, so this is exact.
    Cost O(T·C·D + T·(T/C)·D): linear in T for a fixed chunk, vs O(T²·D) for attention.
    """
    B, T, H = scores.shape
    D = v.size(-1)
    n = -(-T // C)
    s, vv = scores.transpose(1, 2), v.transpose(1, 2)  # (B, H, T), (B, H, T, D)
    if n * C > T:  # pad the last chunk with positions that weigh exactly 0
        s = F.pad(s, (0, n * C - T), value=float("-inf"))
        vv = F.pad(vv, (0, 0, 0, n * C - T))
    s, vv = s.reshape(B, H, n, C), vv.reshape(B, H, n, C, D)
    with torch.no_grad():
        r = s.reshape(B, H, n * C).cummax(dim=-1).values.view(B, H, n, C)  # running max, row t
        mu = s.amax(dim=-1)  # (B, H, n) chunk maxima
    # within the chunk: w[t, j] = exp(s_j − r_t) for j ≤ t, else 0. s_j − r_t ≤ 0 where j ≤ t, so the
    # clamp changes no kept entry; it keeps exp off −inf and overflow (exp's slow paths on the CPU)
    tri = torch.ones(C, C, device=s.device, dtype=s.dtype).tril()
    w = torch.exp((s.unsqueeze(-2) - r.unsqueeze(-1)).clamp_max(0.0)) * tri  # (B, H, n, C, C)
    num = w @ vv  # (B, H, n, C, D)
    den = w.sum(dim=-1)  # (B, H, n, C)
    if n > 1:  # earlier chunks i < k: exp(μ_i − r_t) · Σ_{j∈i} exp(s_j − μ_i) v_j
        e = torch.exp(s - mu.unsqueeze(-1))  # (B, H, n, C)
        summ_num = e.unsqueeze(-2) @ vv  # (B, H, n, 1, D)
        earlier = torch.ones(n, n, device=s.device, dtype=s.dtype).tril(-1).view(n, 1, n)
        a = torch.exp((mu.view(B, H, 1, 1, n) - r.unsqueeze(-1)).clamp_max(0.0)) * earlier  # μ_i ≤ r_t if i < k
        num = num + (a.reshape(B, H, n * C, n) @ summ_num.reshape(B, H, n, D)).view(B, H, n, C, D)
        den = den + (a * e.sum(dim=-1).view(B, H, 1, 1, n)).sum(dim=-1)
    out = num / den.unsqueeze(-1)
    return out.reshape(B, H, n * C, D)[:, :, :T].transpose(1, 2)  # (B, T, H, D)


class NCNController(nn.Module):
    """Pool → (+ own embedding) (+ control) → RMSNorm → Linear → tanh → Linear → raw z (B, T, n_layer, 3).

    With control_dim > 0, an external control vector c (B, T, control_dim) or (B, control_dim)
    adds c @ control to the pooled vector: the only way it reaches the model, so it can act on the
    text only through the signals. `control` starts at zero and is a bare Parameter (no init draw
    from the RNG), so a fresh model with control has exactly the plain variant's weights and
    outputs; c = 0 (or no c) computes exactly what the plain variant computes.
    """

    def __init__(self, cfg: ModelConfig, per_token: bool):
        super().__init__()
        self.n_layer, self.per_token = cfg.n_layer, per_token
        self.pool = PrefixPool(cfg.d_model, cfg.ncn_heads, bias=cfg.pool_bias)
        self.norm = RMSNorm(cfg.d_model, eps=1e-6)
        self.fc1 = nn.Linear(cfg.d_model, cfg.ncn_hidden)
        self.fc2 = nn.Linear(cfg.ncn_hidden, 3 * cfg.n_layer)
        self.control = nn.Parameter(torch.zeros(cfg.control_dim, cfg.d_model)) if cfg.control_dim else None

    def head(self, pooled, e, control=None):
        u = pooled + e if self.per_token else pooled
        if control is not None:
            u = u + self._control_term(control)
        z = self.fc2(torch.tanh(self.fc1(self.norm(u))))
        return z.view(*z.shape[:2], self.n_layer, 3)

    def _control_term(self, c):
        """c (B, T, k) per token or (B, k) per sequence -> (B, T or 1, d)."""
        if self.control is None:
            raise NCNError("this model takes no control input (control_dim 0); train a variant with control")
        if c.dim() == 2:
            c = c.unsqueeze(1)
        if c.dim() != 3 or c.size(-1) != self.control.size(0):
            raise NCNError(f"control must be (B, T, {self.control.size(0)}) or (B, {self.control.size(0)}), "
                           f"got {tuple(c.shape)}")
        return c.to(self.control.dtype) @ self.control

    def forward(self, e, causal: bool, control=None):
        return self.head(self.pool(e, causal), e, control)

    def forward_cached(self, e, cache: "KVCache", control=None):
        if cache.pool_state is None:  # prefill: the parallel path, then remember the sums
            z = self.forward(e, causal=True, control=control)
            cache.pool_state = self.pool.prefix_state(e)
            return z
        assert e.size(1) == 1, "after the prefill, the cache advances one token at a time"
        pooled, cache.pool_state = self.pool.step(e, cache.pool_state)
        return self.head(pooled, e, control)


# ----------------------------------------------------------------------------------------------
# the trunk


class KVCache:
    """Per-layer key/value buffers (B, H, block_size, hd), filled up to `length`, plus the NCN
    pool's running sums. Positions are absolute, so once the window slides every cached key
    is stale: `generate` then re-fills the cache from the cropped window (recompute).
    The attention uses a layer's buffers `k[l]`, `v[l]` in two ways only: `buf[:, :, a:b] = x`
    and `buf[:, :, :b]`; a compressed cache (ncn.kvquant.QuantKVCache) offers just those."""

    def __init__(self, cfg: ModelConfig, batch: int, device, dtype):
        shape = (cfg.n_layer, batch, cfg.n_head, cfg.block_size, cfg.d_model // cfg.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.pool_state = None


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)
        # the original's layout drops the attention output a second time
        self.resid_drop2 = nn.Dropout(cfg.dropout) if cfg.dropout_layout == "original" else None
        self.kv_quant = None  # optional tensor -> tensor applied to keys and values (ncn.kvquant)

    def forward(self, x, beta=None, gain=None, kv=None):
        """x (B, T, d). beta, gain: (B, T, 1) or (1, 1, 1) per-token signals, or None: beta
        multiplies each token's query, gain the branch output. kv = (k_buf, v_buf, start)
        appends this chunk's keys/values to a cache."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if beta is not None:
            q = q * beta.unsqueeze(1)  # (B, 1, T, 1): a per-token inverse temperature
        if self.kv_quant is not None:  # fake-quantised keys/values, as a compressed cache holds them
            k, v = self.kv_quant(k), self.kv_quant(v)
        causal = True
        if kv is not None:
            k_buf, v_buf, start = kv
            k_buf[:, :, start : start + T] = k
            v_buf[:, :, start : start + T] = v
            k, v = k_buf[:, :, : start + T], v_buf[:, :, : start + T]
            if start > 0:
                assert T == 1, "after the prefill, the cache advances one token at a time"
                causal = False  # a single new query may see every cached key
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal).transpose(1, 2)
        if gain is not None:  # g·proj(y) = proj(g·y): proj has no bias
            y = y * gain.unsqueeze(-1)
        y = self.resid_drop(self.proj(y.reshape(B, T, C)))
        return y if self.resid_drop2 is None else self.resid_drop2(y)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        # the original's layout also drops the inner activations (after the GELU)
        self.inner_drop = nn.Dropout(cfg.dropout) if cfg.dropout_layout == "original" else None

    def forward(self, x):
        h = F.gelu(self.up(x))
        if self.inner_drop is not None:
            h = self.inner_drop(h)
        return self.drop(self.down(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, eps=1e-6)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, eps=1e-6)
        self.ffn = FeedForward(cfg)

    def forward(self, x, sig=None, kv=None, skip_eps=None):
        """sig: this layer's signals (B, T, 3) or (1, 1, 3), or None. Returns (x, n_skipped)."""
        if sig is None:
            x = x + self.attn(self.norm1(x), kv=kv)
            f, n_skipped = self._ffn(self.norm2(x), None, skip_eps)
            return x + f, n_skipped
        g, beta, gamma = sig[..., 0:1], sig[..., 1:2], sig[..., 2:3]
        x = x + self.attn(self.norm1(x), beta, g, kv)
        f, n_skipped = self._ffn(self.norm2(x), gamma, skip_eps)
        return torch.addcmul(x, g * gamma, f), n_skipped  # x + g·γ·FFN in one pass

    def _ffn(self, h, gamma, skip_eps):
        """The FFN, skipping (not zeroing) tokens whose gate γ < skip_eps."""
        if skip_eps is None or gamma is None:
            return self.ffn(h), 0
        B, T, C = h.shape
        keep = (gamma[..., 0] >= skip_eps).expand(B, T).reshape(-1)
        n_skipped = int(keep.numel() - keep.sum())
        if n_skipped == 0:
            return self.ffn(h), 0  # the dense path: ε below every gate is exactly the full model
        out = h.new_zeros(B * T, C)
        rows = keep.nonzero().squeeze(1)
        if rows.numel():
            out.index_copy_(0, rows, self.ffn(h.reshape(B * T, C).index_select(0, rows)))
        return out.view(B, T, C), n_skipped


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, eps=1e-6)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied

        sp = cfg.spec
        self.controller = NCNController(cfg, per_token=sp.per_token) if sp.controller else None
        self.static_z = nn.Parameter(torch.zeros(cfg.n_layer, 3)) if sp.static else None
        # optional signals -> signals hook (ncn.knobs.Modulation); the baseline's signals are None
        # there and the hook returns per-layer constants (its implicit g = beta = gamma = 1, modulated)
        self.modulate = None

        if self.tok_emb.weight.is_meta:  # a parameter count (count_params): no values to set
            return
        # nanoGPT init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2·n_layer).
        # The global pass zeroes every bias (as the original's did); init "zeroed" keeps that.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("ffn.down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # ...then init "target" (g = 1, β = 1, γ = gate_init), set after (not overwritten by) it.
        target = sp.init == "target"
        with torch.no_grad():
            if self.controller is not None:
                nn.init.normal_(self.controller.pool.query, std=0.02)
                if target:
                    self.controller.fc2.bias.copy_(signal_bias_init(cfg.gate_init).repeat(cfg.n_layer))
            if self.static_z is not None and target:
                self.static_z.copy_(signal_bias_init(cfg.gate_init).expand(cfg.n_layer, 3))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; the tied head is counted once. non_embedding excludes the token and
        position embeddings (and so the tied head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return n

    # -- signals -----------------------------------------------------------------------------
    def _raw_signals(self, tok, emb, causal_pool=None, cache=None, control=None):
        """Raw z from the token embeddings `tok` and token+position embeddings `emb` (and the
        control vector, ncn.control): (B, T, n_layer, 3), or (1, 1, n_layer, 3) for static
        constants, or None for the baseline."""
        sp = self.cfg.spec
        if control is not None and self.controller is None:
            raise NCNError(f"variant '{self.cfg.ncn}' has no NCN controller to take a control input")
        if sp.static:
            return self.static_z.view(1, 1, self.cfg.n_layer, 3)
        if self.controller is None:
            return None
        e = emb if sp.positions else tok  # without positions: content only
        if cache is not None:
            return self.controller.forward_cached(e, cache, control)
        causal = sp.pool == "prefix" or bool(causal_pool)
        return self.controller(e, causal=causal, control=control)

    def _reg(self, signals):
        if signals is None:
            return torch.zeros((), device=self.tok_emb.weight.device)
        return self.cfg.reg_lambda * ((signals - 1.0) ** 2).mean(dim=(0, 1, 2)).sum()

    # -- forward -----------------------------------------------------------------------------
    def forward(self, idx, targets=None, return_signals=False, causal_pool=None, skip_eps=None,
                control=None) -> ModelOutput:
        """idx (B, T) token ids. causal_pool=True makes a "window" pool (asrun) pool over the prefix
        only (the leak audit). skip_eps=e skips a token's FFN in a layer where its γ < e (static
        constants: the whole layer). control: the external control vector (B, T, control_dim) or
        (B, control_dim) of a model with control_dim > 0 (None: no signal, c = 0)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise NCNError(f"sequence length {T} exceeds the model's block_size {self.cfg.block_size}")
        tok = self.tok_emb(idx)
        emb = tok + self.pos_emb(torch.arange(T, device=idx.device))
        x = None
        if self.cfg.ncn_after_dropout:  # the NCN reads the dropped embeddings (the original)
            x = emb = self.drop(emb)
            if self.controller is not None and not self.cfg.spec.positions:
                tok = self.drop(tok)  # a content-only NCN input: dropped on its own draw
        z = self._raw_signals(tok, emb, causal_pool, control=control)
        signals = None if z is None else signal_map(z, self.cfg.beta_max)
        if self.modulate is not None:
            signals = self.modulate(signals)

        if x is None:  # the default: dropped after the NCN read it (this order keeps gradients bitwise)
            x = self.drop(emb)
        n_skipped = 0
        for l, block in enumerate(self.blocks):
            x, n = block(x, None if signals is None else signals[:, :, l], skip_eps=skip_eps)
            n_skipped += n
        logits = self.lm_head(self.norm_f(x))

        reg = self._reg(signals)
        ce = loss = None
        if targets is not None:
            ce = cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
            loss = ce + reg
        if return_signals and self.cfg.spec.static:
            signals = signals.expand(B, T, -1, -1).contiguous()
        skip_frac = None if skip_eps is None else n_skipped / (self.cfg.n_layer * B * T)
        return ModelOutput(logits, loss, ce, reg, signals if return_signals else None, skip_frac)

    def _forward_cached(self, idx, cache: KVCache, control=None) -> torch.Tensor:
        """Logits (B, T, vocab) of `idx` appended to the cache (prefill, then one token a step)."""
        T, start = idx.size(1), cache.length
        tok = self.tok_emb(idx)
        x = tok + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        z = self._raw_signals(tok, x, cache=cache, control=control)
        signals = None if z is None else signal_map(z, self.cfg.beta_max)
        if self.modulate is not None:
            signals = self.modulate(signals)
        for l, block in enumerate(self.blocks):
            kv = (cache.k[l], cache.v[l], start)
            x, _ = block(x, None if signals is None else signals[:, :, l], kv=kv)
        cache.length += T
        return self.lm_head(self.norm_f(x))

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        idx,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
        cache_factory=None,
        control: torch.Tensor | None = None,
    ):
        """Append `max_new_tokens` sampled tokens to idx (B, T). temperature=0 is greedy.

        With use_cache, keys/values and the NCN pool's running sums are cached, so each new
        token costs one position. Exceptions, both exact recomputes:
          * a "window" pool (asrun) always recomputes the window (it sees the whole window, so a new
            token changes every earlier token's signals and hence their keys), as the original did;
          * once the context exceeds block_size the window slides and absolute positions shift,
            so every step re-fills the cache from the cropped window.
        return_logits=True also returns the (B, max_new_tokens, vocab) next-token logits.
        cache_factory(cfg, batch, device, dtype) makes the cache instead of KVCache (a compressed
        one: ncn.kvquant.QuantKVCache).
        control (B, control_dim): one external control vector per sequence, held for every step.
        """
        was_training = self.training
        self.eval()
        bs = self.cfg.block_size
        cache = None
        steps = []
        for _ in range(max_new_tokens):
            if use_cache and not self.cfg.spec.sees_future:
                if cache is None or idx.size(1) > bs:
                    w = self.tok_emb.weight
                    cache = (cache_factory or KVCache)(self.cfg, idx.size(0), w.device, w.dtype)
                    logits = self._forward_cached(idx[:, -bs:], cache, control)[:, -1]
                else:
                    logits = self._forward_cached(idx[:, -1:], cache, control)[:, -1]
            else:
                logits = self(idx[:, -bs:], control=control).logits[:, -1]
            steps.append(logits)
            idx = torch.cat((idx, sample_next(logits, temperature, top_k, generator)), dim=1)
        self.train(was_training)
        if return_logits:
            empty = idx.new_zeros(idx.size(0), 0, self.cfg.vocab_size, dtype=torch.float)
            return idx, (torch.stack(steps, dim=1) if steps else empty)
        return idx

    def signal_offsets(self) -> list[nn.Parameter]:
        """The constant offsets of the raw signals z: the controller's output bias, or static's z.
        Equivalent roles, so the optimizer treats them alike (not decayed unless decay_all)."""
        if self.static_z is not None:
            return [self.static_z]
        return [self.controller.fc2.bias] if self.controller is not None else []

    # -- Hugging Face-style folders (config.json + model.safetensors; see ncn.hub) ---------------
    @classmethod
    def from_pretrained(cls, folder, map_location="cpu") -> "Transformer":
        """The model saved in `folder` by save_pretrained / `ncn export`, in eval mode."""
        from ncn.hub import load_pretrained

        return load_pretrained(folder, cls, map_location)

    def save_pretrained(self, folder, card: dict | None = None, tokenizer=None):
        """Write `folder`: model.safetensors, config.json, README.md card (see ncn.hub.save_pretrained)."""
        from ncn.hub import save_pretrained

        return save_pretrained(self, folder, card or {}, tokenizer)


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """(B, vocab) logits -> (B, 1) next tokens. temperature 0 = argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


# ----------------------------------------------------------------------------------------------
# parameter matching and loading


class _SkipNormalInit(torch.overrides.TorchFunctionMode):
    """normal_ initialisation as a no-op: on the meta device it imports torch._dynamo (~2-3 s of a
    job's start-up, for values a parameter count never reads)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.normal_ or func is torch.nn.init.normal_:
            kw = kwargs or {}
            return args[0] if args else kw.get("tensor", kw.get("self"))
        return func(*args, **(kwargs or {}))


def count_params(cfg: ModelConfig) -> int:
    """Total parameters of Transformer(cfg), counted on the meta device (no memory, no init)."""
    with torch.device("meta"), _SkipNormalInit():
        return Transformer(cfg).num_params()


def match_params(cfg: ModelConfig, tol: float = 0.005, ncn: str | None = None, target: int | None = None) -> ModelConfig:
    """cfg as variant `ncn` (default ncn.variants.baseline()), same depth/width/heads, with the d_ff
    whose total parameter count is nearest `target` (default: cfg's own count), within `tol`
    (0.5%) of it. Only d_ff changes (the count is linear in d_ff), so any variant can be matched
    to one reference count: the reference itself keeps its d_ff exactly."""
    target = count_params(cfg) if target is None else int(target)
    base = replace(cfg, ncn=ncn or baseline())
    p1, p2 = count_params(replace(base, d_ff=1)), count_params(replace(base, d_ff=2))
    d_ff = max(1, round(1 + (target - p1) / (p2 - p1)))
    out = replace(base, d_ff=d_ff)
    got = count_params(out)
    if abs(got - target) > tol * target:
        raise NCNError(
            f"match_params: no d_ff gives variant '{base.ncn}' {target} parameters within {tol:.1%} "
            f"(best d_ff={d_ff}: {got}); widen d_ff or shrink the NCN"
        )
    return out


def load_model(path, map_location="cpu"):
    """Load `model.pt` (see docs/architecture.md) -> (Transformer in eval mode, payload dict)."""
    path = Path(path)
    if not path.exists():
        raise NCNError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is a user problem
        raise NCNError(f"{path}: not a readable model checkpoint ({e.__class__.__name__}: {e})") from None
    if not isinstance(payload, dict) or "model_config" not in payload or "state_dict" not in payload:
        raise NCNError(f"{path}: expected a dict with 'model_config' and 'state_dict'")
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(payload["model_config"]) - known
    if unknown:
        raise NCNError(f"{path}: unknown model_config keys {sorted(unknown)} (written by a newer ncn?)")
    cfg = ModelConfig(**payload["model_config"])
    model = Transformer(cfg)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, payload


def model_payload(model: Transformer, **extra) -> dict:
    """The dict `load_model` reads: model_config + state_dict (+ run metadata in `extra`)."""
    return {"model_config": model.cfg.as_dict(), "state_dict": model.state_dict(), **extra}
