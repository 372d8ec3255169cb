"""Compressed key/value caches: one quantiser for the teacher-forced analysis and for generation.

Quantiser (`quantize`): symmetric integers of `bits` bits (2..8) with one scale per head and
token, scale = max|x| over the head's dim / (2^(bits−1) − 1), stored in fp16 (clamped to fp16's
normal range); codes = round(x / scale) in [−q, q]. 16 bits = an fp16 cast; 32 = untouched.

  * `ncn analyze kvcache` fake-quantises: `CausalSelfAttention.kv_quant` (set by
    `fake_quant`) replaces each token's key and value by their dequantised codes, as a cache
    holding them would return them.
  * `ncn generate --kv-bits` stores them for real (`QuantKVCache`): int8 codes, int4 codes
    packed two per byte (when the head dim is even), the fp16 scales beside them; each step
    dequantises the cached prefix. Both paths use `quantize`/`dequantize`, so a token's key
    is bitwise the same number in both.

Bits per layer (`allocate`): policies at an equal average of B bits per cached element, with
levels B − spread and B + spread: "uniform" gives every layer B; "beta" gives B + spread to the
half of the layers with the highest mean precision β (a sharp softmax is more sensitive to key
error), B − spread to the lowest half (the middle layer of an odd count keeps B); "oracle" and
"random" rank the layers by a measured Δloss or a random permutation instead of β.

Memory (`bytes_per_token`): keys and values of every layer and head, hd·bits/8 bytes each plus
a 2-byte scale for the integer widths (ideal packing; the real cache packs int4 and stores the
other integer widths as int8, see `QuantKVCache.nbytes`).
"""

from __future__ import annotations

import re
from functools import partial

import torch

from ncn.errors import NCNError

INT_BITS = range(2, 9)
FLOAT_BITS = (16, 32)
SCALE_BYTES = 2  # an fp16 scale per (head, token) for the integer widths
_FP16_TINY, _FP16_MAX = 2.0 ** -14, 65504.0


def check_bits(bits: int, where: str = "bits") -> int:
    if bits not in INT_BITS and bits not in FLOAT_BITS:
        raise NCNError(f"{where}: {bits} bits is not supported (integers 2..8, 16 = fp16, 32 = uncompressed)")
    return int(bits)


def quantize(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., hd) → (int8 codes (..., hd), fp16 scales (..., 1)), one scale per row."""
    q = 2 ** (bits - 1) - 1
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / q).clamp(_FP16_TINY, _FP16_MAX).to(torch.float16)
    codes = torch.round(x.float() / scale.float()).clamp(-q, q).to(torch.int8)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype) -> torch.Tensor:
    return (codes.float() * scale.float()).to(dtype)


def fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """What a `bits`-bit cache returns for x."""
    if bits >= 32:
        return x
    if bits == 16:
        return x.to(torch.float16).to(x.dtype)
    return dequantize(*quantize(x, bits), x.dtype)


def set_fake_quant(model, bits: list[int] | None) -> None:
    """Fake-quantise the keys and values of layer l to bits[l] (None: every layer untouched)."""
    bits = bits or [32] * len(model.blocks)
    if len(bits) != len(model.blocks):
        raise NCNError(f"{len(bits)} per-layer bit widths for a model of {len(model.blocks)} layers")
    for block, b in zip(model.blocks, bits):
        block.attn.kv_quant = None if check_bits(b) >= 32 else partial(fake_quantize, bits=b)


# ------------------------------------------------------------------------------------------------
# int4 packing: codes in [−7, 7] → nibbles 1..15, two per byte along the head dim


def pack4(codes: torch.Tensor) -> torch.Tensor:
    u = (codes.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack4(packed: torch.Tensor) -> torch.Tensor:
    lo = (packed & 15).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack((lo, hi), dim=-1).flatten(-2)


class QuantBuffer:
    """One layer's keys (or values), (B, H, block_size, hd), stored compressed. Supports the two
    operations the attention's cache path uses: `buf[:, :, a:b] = x` and `buf[:, :, :b]`."""

    def __init__(self, shape, bits: int, device, dtype):
        B, H, T, D = shape
        self.bits, self.dtype = check_bits(bits), dtype
        self.packed = bits == 4 and D % 2 == 0
        if bits >= 16:
            self.data = torch.zeros(shape, device=device, dtype=dtype if bits == 32 else torch.float16)
            self.scale = None
        else:
            width = D // 2 if self.packed else D
            self.data = torch.zeros(B, H, T, width, device=device, dtype=torch.uint8 if self.packed else torch.int8)
            self.scale = torch.zeros(B, H, T, 1, device=device, dtype=torch.float16)

    @staticmethod
    def _positions(key) -> slice:
        whole = slice(None)
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] == whole and key[1] == whole
                and isinstance(key[2], slice) and key[2].step is None):
            raise TypeError(f"QuantBuffer supports buf[:, :, a:b] only, not {key!r}")
        return key[2]

    def __setitem__(self, key, x: torch.Tensor) -> None:
        pos = self._positions(key)
        if self.bits == 32:
            self.data[:, :, pos] = x
        elif self.bits == 16:
            self.data[:, :, pos] = x.to(torch.float16)
        else:
            codes, scale = quantize(x, self.bits)
            self.data[:, :, pos] = pack4(codes) if self.packed else codes
            self.scale[:, :, pos] = scale

    def __getitem__(self, key) -> torch.Tensor:
        pos = self._positions(key)
        if self.bits >= 16:
            return self.data[:, :, pos].to(self.dtype)
        codes = self.data[:, :, pos]
        return dequantize(unpack4(codes) if self.packed else codes, self.scale[:, :, pos], self.dtype)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.scale.nbytes if self.scale is not None else 0)


class QuantKVCache:
    """ncn.model.KVCache's interface (k[l], v[l], length, pool_state) with compressed buffers,
    layer l at bits[l]. `factory(bits)` is what Transformer.generate's cache_factory takes."""

    def __init__(self, cfg, batch: int, device, dtype, bits: list[int]):
        if len(bits) != cfg.n_layer:
            raise NCNError(f"{len(bits)} per-layer bit widths for a model of {cfg.n_layer} layers")
        shape = (batch, cfg.n_head, cfg.block_size, cfg.d_model // cfg.n_head)
        self.k = [QuantBuffer(shape, b, device, dtype) for b in bits]
        self.v = [QuantBuffer(shape, b, device, dtype) for b in bits]
        self.length = 0
        self.pool_state = None

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.k + self.v)

    @classmethod
    def factory(cls, bits: list[int]):
        return lambda cfg, batch, device, dtype: cls(cfg, batch, device, dtype, bits)


def bytes_per_token(bits: list[int], n_head: int, head_dim: int) -> float:
    """Cache bytes per token (keys + values, every layer and head), ideally packed."""
    return float(sum(2 * n_head * (head_dim * b / 8 + (SCALE_BYTES if b < 16 else 0)) for b in bits))


# ------------------------------------------------------------------------------------------------
# policies: bits per layer at an equal average


def levels(budget: int, spread: int) -> tuple[int, int]:
    lo, hi = budget - spread, budget + spread
    if spread < 1 or lo not in INT_BITS or hi not in INT_BITS:
        raise NCNError(f"a budget of {budget} bits with spread {spread} needs levels {lo} and {hi} within 2..8 "
                       "bits; change analysis.kv_budgets or analysis.kv_spread")
    return lo, hi


def allocate(scores, budget: int, spread: int) -> list[int]:
    """Per-layer bits averaging exactly `budget`: the half of the layers with the highest score
    get budget + spread, the lowest half budget − spread (ties: the earlier layer ranks higher;
    an odd count's middle layer keeps budget)."""
    lo, hi = levels(budget, spread)
    n = len(scores)
    order = sorted(range(n), key=lambda l: (-float(scores[l]), l))
    bits = [budget] * n
    for rank, l in enumerate(order):
        if rank < n // 2:
            bits[l] = hi
        elif rank >= n - n // 2:
            bits[l] = lo
    return bits


def uniform(n_layer: int, bits: int) -> list[int]:
    return [check_bits(bits)] * n_layer


# ------------------------------------------------------------------------------------------------
# --kv-bits of ncn generate

KV_BITS_HELP = ("compress the KV cache: 8 or 4 (integers with a per-head, per-token fp16 scale), 16 (fp16), "
                "a per-layer list like 8,4,4,8, or beta:B (beta-guided at an average of B bits: the half of "
                "the layers with the highest mean beta on the prompts get B+2 bits, the rest B-2)")
_BETA = re.compile(r"^beta:(\d+)$")


def parse_kv_bits(text: str | None):
    """--kv-bits → None (uncompressed), a list of per-layer bits or one width (int), or
    ("beta", B)."""
    if text is None:
        return None
    t = text.strip().lower()
    if m := _BETA.match(t):
        b = int(m[1])
        levels(b, 2)
        return ("beta", b)
    try:
        widths = [int(p) for p in t.split(",")]
    except ValueError:
        raise NCNError(f"--kv-bits: '{text}' is not a bit width, a comma-separated list of them or beta:B "
                       f"(e.g. 8, 4, 8,4 or beta:6)") from None
    for w in widths:
        check_bits(w, "--kv-bits")
    return widths[0] if len(widths) == 1 else widths


def resolve_kv_bits(spec, model, calib: list[list[int]] = ()) -> list[int] | None:
    """Per-layer bits of a parsed --kv-bits for `model`; ("beta", B) ranks the layers by their
    mean β over every token of the prompts `calib` (token id lists)."""
    n = model.cfg.n_layer
    if spec is None:
        return None
    if isinstance(spec, int):
        return uniform(n, spec)
    if isinstance(spec, list):
        if len(spec) != n:
            raise NCNError(f"--kv-bits lists {len(spec)} widths for a model of {n} layers")
        return list(spec)
    if model.cfg.spec.is_baseline:
        raise NCNError("--kv-bits beta:B needs the NCN's precision β; variant 'none' has none (use 8, 4 or a list)")
    if not calib:
        raise NCNError("--kv-bits beta:B ranks the layers by their mean beta on the prompts; no prompt given")
    dev = model.tok_emb.weight.device
    total, count = torch.zeros(n, dtype=torch.float64), 0
    with torch.no_grad():
        for ids in calib:
            x = torch.tensor([ids[-model.cfg.block_size:]], dtype=torch.long, device=dev)
            beta = model(x, return_signals=True).signals[0, :, :, 1]  # (T, L)
            total += beta.double().sum(dim=0).cpu()
            count += beta.size(0)
    return allocate((total / count).tolist(), spec[1], 2)
