"""The analysis stage: `ncn analyze <what>` turns finished runs into tables, figures and claims.

Modules (each small, each importable without torch except trace/skip):
  runs      collect metrics.json + eval.json of every run into one table
  stats     t-intervals, paired differences, verdict rules
  trace     per-token signals (g, beta, gamma) and surprisal on fixed sentences
  ab        the iso-parameter A/B per size and the loss curves
  scaling   loss vs parameters, fitted power laws
  brainscan heatmaps with fixed, shared colour limits
  skip      block skipping (gather out FFN rows where gamma < eps)
  leak      asrun's future-token leak (full vs prefix-only pooling)
  claims    one measured verdict per claim of the original
  tables    deterministic CSV and booktabs LaTeX writers
  plots     deterministic figure saving
"""
