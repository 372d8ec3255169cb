"""External control signals: per-story labels from the text, and the control vector the NCN reads.

A variant whose spec says `control` (ncn.variants) gets `ModelConfig.control_dim = len(LABELS)`:
a control vector c enters the NCN controller's input only (added, through a zero-initialised
matrix, to the pooled vector before its MLP; see ncn.model), never the trunk's tokens, so it can
act on the text only through the signals g, β and γ.

The labels. Each label is a rule on a story's text, computed in the data stage (`ncn data labels`,
ncn.data.labels) and stored per token beside the tokens:

    dialogue   the story contains a double quotation mark: " (U+0022), “ (U+201C) or ” (U+201D)

Every token of a story carries its story's labels, and the end-of-text token that opens a story
(the one before it in the stream) carries that story's labels too: at that position the model
predicts the story's first token. The labels of token t are bits of one uint8 (bit i = LABELS[i]).

The vector. Label bit b of channel i becomes c_i = 2b − 1 (+1 yes, −1 no); 0 means "no signal"
(an unlabelled input, or a label left out of --control): with c = 0 the model computes exactly what
the plain variant with the same weights computes.

--control syntax (ncn generate): NAME=VALUE[,NAME=VALUE...], VALUE 0 or 1, e.g. dialogue=1.
Torch-free at import (the data stage and the config check read LABELS).
"""

from __future__ import annotations

from typing import Callable

from ncn.errors import NCNError

QUOTES = ('"', "\u201c", "\u201d")


def has_dialogue(text: str) -> bool:
    """The story contains a double quotation mark (straight or curly)."""
    return any(q in text for q in QUOTES)


# name -> (rule on a story's text, the rule in words); the order is the bit order and the vector's channels
LABELS: dict[str, tuple[Callable[[str], bool], str]] = {
    "dialogue": (has_dialogue, 'the story contains a double quotation mark: " or \u201c or \u201d'),
}


def names() -> tuple[str, ...]:
    return tuple(LABELS)


def story_bits(text: str) -> int:
    """The label bits of one story (bit i = LABELS[i] holds)."""
    return sum(int(rule(text)) << i for i, (rule, _) in enumerate(LABELS.values()))


def parse_control(text: str, where: str = "--control") -> dict[str, int]:
    """'dialogue=1' -> {'dialogue': 1}; NCNError naming the culprit for any other form."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not name:
            raise NCNError(f"{where}: expected NAME=VALUE[,NAME=VALUE...] such as dialogue=1, got {text!r}")
        if name not in LABELS:
            raise NCNError(f"{where}: unknown control {name!r} (known: {', '.join(LABELS)})")
        if value not in ("0", "1"):
            raise NCNError(f"{where}: {name} must be 0 or 1, got {value!r}")
        if name in out:
            raise NCNError(f"{where}: {name} is given twice in {text!r}")
        out[name] = int(value)
    return out


def vector(values: dict[str, int]) -> list[float]:
    """The control vector of --control values: +1 / −1 per given label, 0 for a label left out."""
    return [float(2 * values[n] - 1) if n in values else 0.0 for n in LABELS]


def bits_to_vector(bits, dim: int | None = None):
    """Label bits (any shape, integer tensor) -> float control vectors (..., dim) with c_i = 2·b_i − 1."""
    import torch

    dim = len(LABELS) if dim is None else dim
    shifts = torch.arange(dim, device=bits.device)
    b = (bits.long().unsqueeze(-1) >> shifts) & 1
    return (2 * b - 1).float()
