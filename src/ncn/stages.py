"""What each command reads of the config: one list per stage, the only place it is written.

A stage's command loads its config with `ncn.config.load_config(path, stage=NAME)` and gets only
the keys listed here (a `ConfigSlice`), so code that starts reading an unlisted key fails with a
KeyError in the tests instead of silently leaving results stale. The Snakemake rule of the stage
builds its rerun trigger from the same list (`trigger(config, NAME)`), so a changed value reruns
exactly the jobs that read it.

Keys are top-level sections ("train") or dotted paths into a section ("analysis.confidence",
"train.device"). "size_defs" is narrowed to one size in a rule's trigger when the job has a
size wildcard. Torch-free: workflow/rules/common.smk imports it.
"""

from __future__ import annotations

from ncn.errors import NCNError

# What the pipeline's layout needs: which runs exist and in what order tables show them.
_LAYOUT = ("variants", "sizes", "seeds", "size_defs")

# The settings that decide which sentences are traced (the trace and the regulariser-only control).
_TRACED = ("analysis.trace_sentences", "analysis.n_valid_sentences", "analysis.control_sentences",
           "analysis.control_leadins", "analysis.pair_sentences", "analysis.probe_word")

# A run's shape as the config describes it: size_defs, and what decides each variant's matched
# d_ff (model, ncn_reference): commands that load a model check it against these (runs.py).
_SHAPE = ("size_defs", "model", "ncn_reference")

READS: dict[str, tuple[str, ...]] = {
    # data
    "data.fetch": ("data",),
    "data.tokenizer": ("data", "tokenizer"),
    "data.tokenize": ("data", "tokenizer"),
    # training, evaluation, sampling, tracking
    "mlflow-init": ("profile", "mlflow"),
    "mlflow-sync": ("profile", "mlflow"),
    "train": ("profile", "train", "mlflow", *_SHAPE),
    "evaluate": ("eval", "train.device", "mlflow", "profile", *_SHAPE),
    "generate": ("generate", "train.device", *_SHAPE),
    # analysis (`ncn analyze <what>`)
    "analyze.trace": (*_TRACED, *_SHAPE),
    "analyze.leakprobe": ("analysis.leak_windows", "analysis.leak_cuts", "eval", *_SHAPE),
    "analyze.regonly": (*_TRACED, "analysis.regonly_steps", "train", *_SHAPE),
    "analyze.ab": ("analysis.confidence", "variant_seeds", *_LAYOUT),
    "analyze.scaling": ("analysis.confidence", "variant_seeds", *_LAYOUT),
    "analyze.leak": ("analysis.confidence", "variant_seeds", *_LAYOUT),
    "analyze.brainscan": ("analysis.dev_limit", "variants", "model"),
    "analyze.skip": ("analysis.skip_eps", "analysis.gate_eps", "analysis.skip_max_tokens", "analysis.skip_tolerance_nats",
                     "analysis.skip_random_draws", "eval", *_SHAPE),
    "analyze.kvcache": ("analysis.kv_max_tokens", "analysis.kv_uniform_bits", "analysis.kv_budgets",
                        "analysis.kv_spread", "analysis.kv_random_draws", "analysis.confidence", "eval", "generate",
                        "train.device", "variant_seeds", *_LAYOUT, *_SHAPE),
    "analyze.knobs": ("analysis.knob_scales", "analysis.knob_max_tokens", "analysis.knob_prompts",
                      "analysis.knob_samples", "analysis.knob_new_tokens", "analysis.confidence", "eval", "generate",
                      "train.device", "variant_seeds", *_LAYOUT, *_SHAPE),
    "analyze.control": ("analysis.confidence", "control", "eval", "train.device", "generate", *_LAYOUT, *_SHAPE),
    "analyze.claims": ("analysis", "profile", "tokenizer", "control", "variant_seeds", *_LAYOUT, *_SHAPE),
    # the paper: its config listing shows every key, so it reads them all
    "paper.numbers": ("*",),
}


def reads(stage: str) -> tuple[str, ...]:
    try:
        return READS[stage]
    except KeyError:
        raise NCNError(f"no config-key list for stage '{stage}' in ncn.stages.READS (one of {', '.join(READS)})") from None


class ConfigSlice(dict):
    """The part of a validated config that one stage reads. `.resolved` is the whole config, for
    provenance only (what a run records as its settings), never for settings the stage uses."""

    stage: str = ""
    resolved: dict = {}

    def __missing__(self, key):
        raise KeyError(f"config key '{key}' is not in ncn.stages.READS['{self.stage}']: add it there "
                       f"(the rule's rerun trigger is built from that list)")


def config_slice(cfg: dict, stage: str) -> dict:
    """The keys of `cfg` that `stage` reads (see READS); dotted keys keep a sub-dict."""
    keys = reads(stage)
    if keys == ("*",):
        out = ConfigSlice(cfg)
    else:
        out = ConfigSlice()
        for key in keys:
            top, _, sub = key.partition(".")
            if top not in cfg:
                continue
            if not sub:
                out[top] = cfg[top]
            elif sub in cfg[top]:
                part = out.get(top) if isinstance(out.get(top), dict) else {}
                out[top] = {**part, sub: cfg[top][sub]}
    out.stage, out.resolved = stage, cfg
    return out


# Read by some stages but never a reason to rerun them: where results are tracked (mlflow) and the
# profile's name (it names the results folder itself).
NOT_TRIGGERS = ("mlflow", "profile")


def trigger(config: dict, stage: str, size: str | None = None) -> str:
    """A stable, readable string of what `stage` reads ("eval.batch_size=16, ..."): a rule's
    `params: cfg=` rerun trigger. With `size`, size_defs is narrowed to that size, so a change to
    another size reruns nothing here. NOT_TRIGGERS are left out."""
    from ncn.config import params_text

    part = {k: v for k, v in config_slice(config, stage).items() if k not in NOT_TRIGGERS}
    if size is not None and "size_defs" in part:
        part["size_defs"] = {size: part["size_defs"][size]}
    return params_text(part)
