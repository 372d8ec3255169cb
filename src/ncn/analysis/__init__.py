"""The analysis stage: `ncn analyze <what>` turns finished runs into tables, figures and claims.

A command is a module with `add_arguments(parser)` and `main(args, cfg)`, registered in
cli.ANALYSES; its output paths are options the rule fills. A module whose output the prose
quotes also has `numbers(table, cfg) -> {group comment: {macro: value}}` (see macros), which
`ncn paper numbers` calls. A new analysis: one module, its line in cli.ANALYSES, one rule in
workflow/rules/analysis.smk, and the \\gentable/\\genfigure in paper/ that uses its output.

Commands (each importable without torch except trace/skip):
  collect   `runs`: metrics.json + eval.json of every run in one table
  trace     per-token signals (g, beta, gamma) and surprisal on fixed sentences
  ab        the iso-parameter A/B per size and the loss curves
  scaling   loss vs parameters, fitted power laws
  leak      asrun's future-token leak (full vs prefix-only pooling)
  brainscan heatmaps with fixed, shared colour limits
  skip      block skipping (gather out FFN rows where gamma < eps)
  kvcache   KV-cache compression: uniform vs beta-guided vs oracle vs random bits per layer
  knobs     beta scale knobs vs entropy, loss and sample diversity (NCN vs the baseline)
  claims    one measured verdict per claim of the original (CLAIMS: one Claim object each)
Helpers:
  runs      reading runs and train logs; sizes by scale, "the NCN"
  heldout   teacher-forced scoring on the held-out split (loss, entropy, mean beta per layer)
  stats     t-intervals, paired differences, verdict rules
  options   shared command-line options; figures saved where the rule says
  tables    deterministic CSV and booktabs LaTeX writers, table reading
  macros    macro names and number formats of the prose (numbers.tex)
  plots     deterministic figure saving
  rules     helpers of workflow/rules/analysis.smk
"""
