"""The one registry of model variants: each name maps to a spec of flags that ncn.model reads.

Every other place (config validation, Snakemake's wildcard constraints, the analysis order,
plot colours, paper tables, CLI help) reads this registry, so a variant that needs no new
mechanism is one entry here (plus the schema's documented enums, which a test keeps equal).
Torch-free and cheap to import: workflow/rules/common.smk imports it.

The flags (see ncn.model for the mechanisms):
  pool       "window": one learned query pools the WHOLE window, no causal mask (position t
             sees the future); "prefix": position t pools over positions ≤ t; "none": no
             controller network.
  positions  the NCN reads token + position embeddings (else the token embeddings only).
  per_token  each token's own embedding is added to the pooled vector before the MLP.
  init       "zeroed": every NCN bias starts at 0 (as the original ran: β ≈ 0.703, γ ≈ 0.5);
             "target": the signals start at g = 1, β = 1, γ = gate_init.
  static     learned per-layer constants instead of a controller (requires pool "none").
  control    the controller also reads an external control vector (ncn.control: per-story labels
             from the text), added to its pooled vector; the config gives it
             ModelConfig.control_dim = the number of labels (requires a pool).
A variant with neither a controller nor static constants is the baseline: the plain Transformer,
matched in parameter count to the config's `ncn_reference` (model.match_params).
"""

from __future__ import annotations

from dataclasses import dataclass

from ncn.errors import NCNError

POOLS = ("window", "prefix", "none")
INITS = ("zeroed", "target")


@dataclass(frozen=True)
class VariantSpec:
    pool: str = "none"
    positions: bool = False
    per_token: bool = False
    init: str = "target"
    static: bool = False
    control: bool = False
    label: str = ""
    colour: str = "#000000"
    description: str = ""

    def __post_init__(self):
        if self.pool not in POOLS:
            raise NCNError(f"VariantSpec.pool must be one of {', '.join(POOLS)}, got '{self.pool}'")
        if self.init not in INITS:
            raise NCNError(f"VariantSpec.init must be one of {', '.join(INITS)}, got '{self.init}'")
        if self.static and self.pool != "none":
            raise NCNError("VariantSpec: static constants replace the controller; set pool='none'")
        if self.pool == "none" and (self.positions or self.per_token or self.control):
            raise NCNError("VariantSpec: positions/per_token/control describe the controller's input; they need a pool")

    @property
    def controller(self) -> bool:
        """An NCN controller network computes the signals from the input."""
        return self.pool != "none"

    @property
    def is_baseline(self) -> bool:
        """No signals at all: the plain Transformer."""
        return not self.controller and not self.static

    @property
    def sees_future(self) -> bool:
        """Position t's signals depend on later tokens (the "leak" of the whole-window pool)."""
        return self.pool == "window"


# In the order of every table and figure. Colours: ColorBrewer Dark2, grey for the baseline.
REGISTRY: dict[str, VariantSpec] = {
    "none": VariantSpec(
        label="baseline (none)", colour="#4d4d4d",
        description="the plain Transformer, matched in parameter count to the reference NCN (wider FFN)"),
    "asrun": VariantSpec(
        pool="window", positions=True, per_token=True, init="zeroed", label="asrun", colour="#d95f02",
        description="the original as it ran: the pool sees the whole window (future included), zero biases"),
    "causal": VariantSpec(
        pool="prefix", positions=True, per_token=True, init="target", label="causal", colour="#1b9e77",
        description="as intended: position t pools over positions <= t; starts at g = 1, beta = 1, gamma = gate_init"),
    "tonic": VariantSpec(
        pool="prefix", positions=False, per_token=False, init="target", label="tonic", colour="#7570b3",
        description="order-blind: a causal pool over token embeddings only, no positions, no per-token term"),
    "static": VariantSpec(
        static=True, init="target", label="static", colour="#e7298a",
        description="context-free: learned per-layer constants, initialised as causal"),
    "control": VariantSpec(
        pool="prefix", positions=True, per_token=True, init="target", control=True, label="causal + control",
        colour="#a6761d",
        description="causal, and its controller also reads a per-story label (the story contains dialogue): "
                    "external control through the signals alone"),
}

# "The NCN" of the claims, the benchmark's baseline reference and the schema's ncn_reference
# default, when it is trained; otherwise the first NCN variant configured.
PRIMARY = "causal"


def names() -> tuple[str, ...]:
    """Every registered variant, in registry order."""
    return tuple(REGISTRY)


def spec(name: str) -> VariantSpec:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise NCNError(f"unknown variant '{name}' (one of {', '.join(REGISTRY)})") from None


def ncn_names(variants=None) -> list[str]:
    """The variants with signals (every one but the baseline), of `variants` or of the registry."""
    return [v for v in (names() if variants is None else variants) if not spec(v).is_baseline]


def control_names(variants=None) -> list[str]:
    """The variants whose controller takes an external control vector (spec.control)."""
    return [v for v in (names() if variants is None else variants) if spec(v).control]


def future_names(variants=None) -> list[str]:
    """The variants whose pool sees the future (spec.sees_future: the as-run leak)."""
    return [v for v in (names() if variants is None else variants) if spec(v).sees_future]


def baseline() -> str:
    """The name of the baseline variant (the first one whose spec has no signals)."""
    return next(v for v, s in REGISTRY.items() if s.is_baseline)


def primary(variants) -> str | None:
    """'The NCN' among `variants`: PRIMARY when present, else the first NCN variant, else None."""
    ncn = ncn_names(variants)
    return PRIMARY if PRIMARY in ncn else (ncn[0] if ncn else None)


def order(name: str) -> int:
    """Sort key: the registry position; unknown names sort last."""
    return names().index(name) if name in REGISTRY else len(REGISTRY)


def spoken_list() -> str:
    """'none, asrun, causal, tonic or static': the names for help texts."""
    *head, last = names()
    return f"{', '.join(head)} or {last}" if head else last
