# Analysis stage: `ncn analyze <what>` turns finished runs into tables, figures, traces and the
# claims' verdicts (see docs/architecture.md, "Analysis outputs"). One rule per command. Inputs
# are the exact files each command reads, so a new run (or a retrained one) reruns the
# aggregates that include it; `params: cfg=trigger(stage)` holds the config values each command reads (ncn.stages.READS), so a
# changed value reruns only what depends on it.
from ncn.analysis.rules import claim_variants, largest_size, trace_seed

TABLES = f"{RES}/tables"
FIGURES = f"{RES}/figures"
TRACES = f"{RES}/traces"
RUNS_TABLE = f"{TABLES}/runs.csv"
TRACE = f"{TRACES}/{{variant}}_{{size}}.csv"
# The traced (and block-skipped) run of each (variant, size): seed analysis.trace_seed when it is
# trained, else the smallest trained seed (the trace CSV records the seed it used).
TRACE_RUN = f"{RES}/runs/{{variant}}/{{size}}/seed{trace_seed(config)}"
LARGEST = largest_size(config)
# Claims: "the NCN" (causal when trained) and asrun, at the largest size.
CLAIM_VARIANTS = claim_variants(config)
ALL_RUNS = run_dirs()
# Sizes in order of scale (size_defs) and the variants decide the tables' rows and order.
LAYOUT = ("variants", "sizes", "size_defs")


rule analysis_runs:
    input:
        metrics=[f"{d}/metrics.json" for d in ALL_RUNS],
        evals=[f"{d}/eval.json" for d in ALL_RUNS],
    output:
        table=report_item(RUNS_TABLE),
        timing=f"{RES}/timing/runs.csv",
    params:
        runs=ALL_RUNS,
    log:
        f"{LOGS}/analysis/runs.log",
    benchmark:
        f"{BENCH}/analysis/runs.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze runs --runs {params.runs} --out {output.table} --timing {output.timing} > {log} 2>&1"


rule analysis_trace:
    input:
        model=f"{TRACE_RUN}/model.pt",
        valid=rules.tokenize.output.valid,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        TRACE,
    params:
        config=CONFIG_JSON,
        run=lambda w, input: os.path.dirname(input.model),
        data=data_dir,
        cfg=trigger("analyze.trace"),
    log:
        f"{LOGS}/analysis/trace/{{variant}}_{{size}}.log",
    benchmark:
        f"{BENCH}/analysis/trace/{{variant}}_{{size}}.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze trace --run {params.run} --config {params.config} --data {params.data}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule analysis_ab:
    input:
        runs=RUNS_TABLE,
        logs=[f"{d}/train_log.csv" for d in ALL_RUNS],
    output:
        csv=report_item(f"{TABLES}/ab.csv"),
        tex=f"{TABLES}/ab.tex",
        pdf=f"{FIGURES}/loss_curves.pdf",
        png=report_item(f"{FIGURES}/loss_curves.png"),
    params:
        config=CONFIG_JSON,
        cfg=trigger("analyze.ab"),
    log:
        f"{LOGS}/analysis/ab.log",
    benchmark:
        f"{BENCH}/analysis/ab.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze ab --runs-table {input.runs} --config {params.config}"
        " --csv {output.csv} --tex {output.tex} --pdf {output.pdf} --png {output.png} > {log} 2>&1"


rule analysis_scaling:
    input:
        runs=RUNS_TABLE,
    output:
        csv=report_item(f"{TABLES}/scaling.csv"),
        tex=f"{TABLES}/scaling.tex",
        pdf=f"{FIGURES}/scaling.pdf",
        png=report_item(f"{FIGURES}/scaling.png"),
    params:
        config=CONFIG_JSON,
        cfg=trigger("analyze.scaling"),
    log:
        f"{LOGS}/analysis/scaling.log",
    benchmark:
        f"{BENCH}/analysis/scaling.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze scaling --runs-table {input.runs} --config {params.config}"
        " --csv {output.csv} --tex {output.tex} --pdf {output.pdf} --png {output.png} > {log} 2>&1"


rule analysis_leak:
    input:
        runs=RUNS_TABLE,
    output:
        csv=report_item(f"{TABLES}/leak.csv"),
        tex=f"{TABLES}/leak.tex",
    params:
        config=CONFIG_JSON,
        cfg=trigger("analyze.leak"),
    log:
        f"{LOGS}/analysis/leak.log",
    benchmark:
        f"{BENCH}/analysis/leak.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze leak --runs-table {input.runs} --config {params.config}"
        " --csv {output.csv} --tex {output.tex} > {log} 2>&1"


rule analysis_brainscan:
    input:
        traces=expand(TRACE, variant=NCN_VARIANTS, size=LARGEST),
    output:
        pdf=f"{FIGURES}/brainscan.pdf",
        png=report_item(f"{FIGURES}/brainscan.png"),
        dev_pdf=f"{FIGURES}/brainscan_dev.pdf",
        dev_png=report_item(f"{FIGURES}/brainscan_dev.png"),
    params:
        config=CONFIG_JSON,
        cfg=trigger("analyze.brainscan"),
    log:
        f"{LOGS}/analysis/brainscan.log",
    benchmark:
        f"{BENCH}/analysis/brainscan.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze brainscan --traces {input.traces} --config {params.config}"
        " --pdf {output.pdf} --png {output.png} --dev-pdf {output.dev_pdf} --dev-png {output.dev_png}"
        " > {log} 2>&1"


rule analysis_skip:
    input:
        models=expand(f"{TRACE_RUN}/model.pt", variant=NCN_VARIANTS, size=LARGEST),
        valid=rules.tokenize.output.valid,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        csv=report_item(f"{TABLES}/skip.csv"),
        timing=f"{RES}/timing/skip_wall.csv",
        tex=f"{TABLES}/skip.tex",
        pdf=f"{FIGURES}/skip_tradeoff.pdf",
        png=report_item(f"{FIGURES}/skip_tradeoff.png"),
    params:
        config=CONFIG_JSON,
        runs=lambda w, input: [os.path.dirname(m) for m in input.models],
        data=data_dir,
        cfg=trigger("analyze.skip"),
    log:
        f"{LOGS}/analysis/skip.log",
    benchmark:
        f"{BENCH}/analysis/skip.tsv"
    # Timed: one thread, like the other analysis jobs, so wall-time ratios compare like with like.
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze skip --run {params.runs} --config {params.config} --data {params.data}"
        " --csv {output.csv} --timing {output.timing} --tex {output.tex} --pdf {output.pdf} --png {output.png}"
        " --threads {threads} > {log} 2>&1"


rule analysis_claims:
    input:
        runs=RUNS_TABLE,
        traces=expand(TRACE, variant=CLAIM_VARIANTS, size=LARGEST),
        # claim 3 (per-layer beta) and claim 5 (L_reg) read the train logs of these runs
        logs=[f"{d}/train_log.csv" for d in run_dirs(CLAIM_VARIANTS, [LARGEST])] if CLAIM_VARIANTS else [],
        valid=rules.tokenize.output.valid,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        json=report_item(f"{RES}/claims.json"),
        tex=f"{TABLES}/claims.tex",
    params:
        config=CONFIG_JSON,
        data=data_dir,
        cfg=trigger("analyze.claims"),
    log:
        f"{LOGS}/analysis/claims.log",
    benchmark:
        f"{BENCH}/analysis/claims.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze claims --runs-table {input.runs} --traces {input.traces} --config {params.config}"
        " --data {params.data} --json {output.json} --tex {output.tex} > {log} 2>&1"


TARGETS.append(RUNS_TABLE)
TARGETS.extend(expand(TRACE, variant=NCN_VARIANTS, size=SIZES))
TARGETS.extend(rules.analysis_ab.output)
TARGETS.extend(rules.analysis_scaling.output)
TARGETS.extend(rules.analysis_leak.output)
TARGETS.extend(rules.analysis_claims.output)
if NCN_VARIANTS:
    TARGETS.extend(rules.analysis_brainscan.output)
    TARGETS.extend(rules.analysis_skip.output)
