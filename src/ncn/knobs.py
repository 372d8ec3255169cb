"""Modulation knobs: scale, shift or set the NCN's signals at generation and evaluation time.

`ncn generate --modulate SPEC` (and `ncn evaluate --modulate SPEC --out FILE`) change the signals
g, β, γ of chosen layers after the controller computes them, before the trunk uses them.

Grammar (whitespace ignored; several items separated by commas, applied left to right):

    SPEC   := ITEM ("," ITEM)*
    ITEM   := SIGNAL ["@" LAYERS] OP
    SIGNAL := g | gain | beta | β | precision | gamma | γ | gate
    LAYERS := "*"             every layer (the same as no "@")
            | "l" N           layer N (0-based)
            | "l" N "-" M     layers N..M, both included
    OP     := "=" X           scale:  s ← s · X      (X an unsigned number: 1.5, 0.5, 2)
            | "=+" X          add:    s ← s + X
            | "=-" X          add:    s ← s − X
            | ":=" X          set:    s ← X          (the controller's value is ignored; X may be signed)

Examples: `beta=1.5` (every layer's precision ×1.5), `beta@l3=0.5,gamma@*=0.8`,
`g@l0-2=+0.1` (gain +0.1 in layers 0, 1, 2), `gamma@l1:=1` (the gate of layer 1 held open).
A plain number always scales; a signed one always adds; `:=` always sets. Values are not clamped:
a knob can leave the range the controller was trained in (β beyond beta_max, say).

The baseline (`none`) has no controller; its signals are identically g = β = γ = 1 (its layers
are an NCN layer with every signal at 1), so the same knobs apply: `beta=1.5` scales its queries,
the fair comparison for the NCN's precision. A knob of 1.0 (or +0) leaves the model bitwise
unchanged (tests/test_knobs.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ncn.errors import NCNError

SIGNALS = ("g", "beta", "gamma")  # the order of the signals tensor's last axis (ncn.model.SIGNAL_NAMES)
ALIASES = {"g": 0, "gain": 0, "beta": 1, "β": 1, "precision": 1, "gamma": 2, "γ": 2, "gate": 2}
OPS = ("scale", "add", "set")
GRAMMAR = ("SIGNAL[@LAYERS]=X (scale), =+X / =-X (add), :=X (set); SIGNAL one of g, beta, gamma; "
           "LAYERS '*', lN or lN-M; items separated by commas, e.g. 'beta@l3=0.5,gamma@*=0.8'")

_ITEM = re.compile(r"^(?P<sig>[^@:=]*)(?:@(?P<layers>[^:=]*))?(?P<op>:=|=)(?P<val>.*)$")
_LAYERS = re.compile(r"^l(?P<a>\d+)(?:-(?P<b>\d+))?$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Knob:
    signal: int  # index into SIGNALS
    layers: tuple[int, int] | None  # inclusive range; None = every layer
    op: str  # one of OPS
    value: float

    def __str__(self) -> str:
        where = "" if self.layers is None else (f"@l{self.layers[0]}" if self.layers[0] == self.layers[1]
                                                else f"@l{self.layers[0]}-{self.layers[1]}")
        op = {"scale": f"={self.value:g}", "add": f"={self.value:+g}", "set": f":={self.value:g}"}[self.op]
        return f"{SIGNALS[self.signal]}{where}{op}"


def _bad(item: str, why: str) -> NCNError:
    return NCNError(f"--modulate: bad item '{item}': {why}. Grammar: {GRAMMAR}")


def _layers(item: str, text: str | None) -> tuple[int, int] | None:
    if text is None or text == "*":
        return None
    m = _LAYERS.match(text)
    if not m:
        raise _bad(item, f"layers '{text}' is not '*', 'lN' or 'lN-M'")
    a = int(m["a"])
    b = a if m["b"] is None else int(m["b"])
    if b < a:
        raise _bad(item, f"layer range l{a}-{b} runs backwards; write l{b}-{a}")
    return a, b


def _item(item: str) -> Knob:
    m = _ITEM.match(item)
    if not m:
        raise _bad(item, "expected SIGNAL[@LAYERS]=X, =+X, =-X or :=X")
    sig = m["sig"].lower() if m["sig"] not in ALIASES else m["sig"]
    if sig not in ALIASES:
        raise _bad(item, f"unknown signal '{m['sig']}' (one of {', '.join(ALIASES)})")
    val = m["val"]
    if not _NUMBER.match(val):
        raise _bad(item, f"'{val}' is not a number")
    x = float(val)
    if not math.isfinite(x):
        raise _bad(item, f"'{val}' is not finite")
    op = "set" if m["op"] == ":=" else ("add" if val[0] in "+-" else "scale")
    return Knob(ALIASES[sig], _layers(item, m["layers"]), op, x)


def parse(specs: str | list[str] | None) -> list[Knob]:
    """The knobs of one SPEC or of several (repeated --modulate flags, applied in order)."""
    if specs is None:
        return []
    out = []
    for spec in [specs] if isinstance(specs, str) else specs:
        text = re.sub(r"\s+", "", spec)
        if not text:
            raise NCNError(f"--modulate: empty spec. Grammar: {GRAMMAR}")
        for item in text.split(","):
            if not item:
                raise _bad(spec, "an empty item (two commas, or a trailing comma)")
            out.append(_item(item))
    return out


def describe(knobs: list[Knob]) -> str:
    """The canonical spec of `knobs` ('' for none): what records and tables show."""
    return ",".join(str(k) for k in knobs)


def affine(knobs: list[Knob], n_layer: int) -> tuple[list[list[float]], list[list[float]]]:
    """(a, b), each n_layer × 3: the knobs composed into s ← a·s + b per (layer, signal)."""
    a = [[1.0] * 3 for _ in range(n_layer)]
    b = [[0.0] * 3 for _ in range(n_layer)]
    for k in knobs:
        lo, hi = (0, n_layer - 1) if k.layers is None else k.layers
        if hi >= n_layer:
            raise NCNError(f"--modulate: '{k}' names layer {hi} but the model has {n_layer} layers (l0-{n_layer - 1})")
        for l in range(lo, hi + 1):
            s = k.signal
            if k.op == "scale":
                a[l][s], b[l][s] = a[l][s] * k.value, b[l][s] * k.value
            elif k.op == "add":
                b[l][s] = b[l][s] + k.value
            else:
                a[l][s], b[l][s] = 0.0, k.value
    return a, b


class Modulation:
    """The `Transformer.modulate` hook: signals (B, T, n_layer, 3) → a·signals + b per (layer,
    signal); None (the baseline) → the constants a·1 + b, shape (1, 1, n_layer, 3)."""

    def __init__(self, knobs: list[Knob], n_layer: int, device=None):
        import torch

        a, b = affine(knobs, n_layer)
        self.knobs = list(knobs)
        self.a = torch.tensor(a, dtype=torch.float32, device=device)
        self.b = torch.tensor(b, dtype=torch.float32, device=device)

    def __call__(self, signals):
        import torch

        if signals is None:
            signals = torch.ones_like(self.a).view(1, 1, *self.a.shape)
        a, b = self.a.to(signals), self.b.to(signals)
        return signals * a + b

    def __repr__(self) -> str:
        return f"Modulation('{describe(self.knobs)}')"


def attach(model, knobs: list[Knob]) -> None:
    """Set model.modulate to the knobs' Modulation (None when there are none); a knob naming a
    layer the model lacks is refused here."""
    model.modulate = Modulation(knobs, model.cfg.n_layer, model.tok_emb.weight.device) if knobs else None
