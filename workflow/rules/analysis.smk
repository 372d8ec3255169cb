# Analysis stage: `ncn analyze <what>` turns finished runs into tables, figures, traces and the
# claims' verdicts (see docs/architecture.md, "Analysis outputs"). One rule per command. Inputs
# are the exact files each command reads, so a new run (or a retrained one) reruns the
# aggregates that include it; `params: cfg=trigger(stage)` holds the config values each command reads (ncn.stages.READS), so a
# changed value reruns only what depends on it.
from ncn.analysis.rules import claim_measure_options, claim_variants, largest_size, static_variants, trace_files

TABLES = f"{RES}/tables"
FIGURES = f"{RES}/figures"
TRACES = f"{RES}/traces"
RUNS_TABLE = f"{TABLES}/runs.csv"
# One trace per run (every seed), of the NCN variants at the largest size (what the brain scans
# and the claims read).
TRACE = f"{TRACES}/{{variant}}_{{size}}_seed{{seed}}.csv"
LARGEST = largest_size(config)
# Claims: "the NCN" (causal when trained) and asrun, at the largest size.
CLAIM_VARIANTS = claim_variants(config)
ALL_RUNS = run_dirs()
NCN_RUNS = run_dirs(NCN_VARIANTS) if NCN_VARIANTS else []
NCN_LARGEST_RUNS = run_dirs(NCN_VARIANTS, [LARGEST]) if NCN_VARIANTS else []
# The per-run tables of beyond.smk (included after this file) that the claims rule reads.
KVCACHE_TABLE = f"{TABLES}/kvcache.csv"
KNOBS_TABLE = f"{TABLES}/knobs.csv"
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
        model=f"{RUN}/model.pt",
        heldout=rules.tokenize.output.heldout,
        train=rules.tokenize.output.train,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        TRACE,
    params:
        config=CONFIG_JSON,
        run=lambda w, input: os.path.dirname(input.model),
        data=data_dir,
        cfg=lambda w: trigger("analyze.trace", w.size),
    log:
        f"{LOGS}/analysis/trace/{{variant}}_{{size}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/analysis/trace/{{variant}}_{{size}}_seed{{seed}}.tsv"
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


rule analysis_leakprobe:
    input:
        models=[f"{d}/model.pt" for d in NCN_RUNS],
        evals=[f"{d}/eval.json" for d in NCN_RUNS],
        heldout=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
    output:
        csv=f"{TABLES}/leak_measure.csv",
    params:
        config=CONFIG_JSON,
        runs=lambda w, input: [os.path.dirname(m) for m in input.models],
        data=data_dir,
        cfg=trigger("analyze.leakprobe"),
    log:
        f"{LOGS}/analysis/leakprobe.log",
    benchmark:
        f"{BENCH}/analysis/leakprobe.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze leakprobe --run {params.runs} --config {params.config} --data {params.data}"
        " --csv {output.csv} --threads {threads} > {log} 2>&1"


rule analysis_leak:
    input:
        runs=RUNS_TABLE,
        measure=rules.analysis_leakprobe.output.csv,
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
        "ncn analyze leak --runs-table {input.runs} --measure {input.measure} --config {params.config}"
        " --csv {output.csv} --tex {output.tex} > {log} 2>&1"


rule analysis_brainscan:
    input:
        traces=trace_files(TRACE, NCN_VARIANTS, LARGEST, VARIANT_SEEDS),
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


# Per-run measurements: see `measured` in common.smk.
rule analysis_rows:
    input:
        model=f"{RUN}/model.pt",
        heldout=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        f"{RUN}/{ROWS}",
    wildcard_constraints:
        what="|".join(PER_RUN_ANALYSES),
    params:
        config=CONFIG_JSON,
        run=lambda w, input: os.path.dirname(input.model),
        data=data_dir,
        cfg=lambda w: trigger(f"analyze.{w.what}"),
    log:
        f"{LOGS}/analysis/{{what}}/{{variant}}_{{size}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/analysis/{{what}}/{{variant}}/{{size}}/seed{{seed}}.tsv"
    # one thread, like the other analysis jobs (skip times its passes)
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze rows {wildcards.what} --run {params.run} --config {params.config} --data {params.data}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule analysis_skip:
    input:
        measured=measured("skip", NCN_LARGEST_RUNS),
        heldout=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        csv=report_item(f"{TABLES}/skip.csv"),
        measure=f"{TABLES}/skip_measure.csv",
        timing=f"{RES}/timing/skip_wall.csv",
        tex=f"{TABLES}/skip.tex",
        pdf=f"{FIGURES}/skip_tradeoff.pdf",
        png=report_item(f"{FIGURES}/skip_tradeoff.png"),
    params:
        config=CONFIG_JSON,
        source=measured_option("skip", NCN_LARGEST_RUNS),
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
        "ncn analyze skip {params.source} --config {params.config} --data {params.data}"
        " --csv {output.csv} --measure-csv {output.measure} --timing {output.timing} --tex {output.tex}"
        " --pdf {output.pdf} --png {output.png} --threads {threads} > {log} 2>&1"


rule analysis_regonly:
    input:
        models=[f"{d}/model.pt" for d in run_dirs(CLAIM_VARIANTS, [LARGEST])] if CLAIM_VARIANTS else [],
        train=rules.tokenize.output.train,
        heldout=rules.tokenize.output.heldout,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        csv=f"{TABLES}/regonly.csv",
    params:
        config=CONFIG_JSON,
        runs=lambda w, input: [os.path.dirname(m) for m in input.models],
        data=data_dir,
        cfg=trigger("analyze.regonly"),
    log:
        f"{LOGS}/analysis/regonly.log",
    benchmark:
        f"{BENCH}/analysis/regonly.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze regonly --run {params.runs} --config {params.config} --data {params.data}"
        " --csv {output.csv} --threads {threads} > {log} 2>&1"


rule analysis_claims:
    input:
        runs=RUNS_TABLE,
        traces=trace_files(TRACE, CLAIM_VARIANTS, LARGEST, VARIANT_SEEDS),
        # the static variant's traces: the zero per-token variance homeostasis is judged against
        static_traces=trace_files(TRACE, [v for v in static_variants(config) if v not in CLAIM_VARIANTS],
                                  LARGEST, VARIANT_SEEDS),
        # the measurements of issue 12 (model-evaluating; see docs/architecture.md)
        leak_measure=rules.analysis_leakprobe.output.csv,
        skip_measure=rules.analysis_skip.output.measure if NCN_VARIANTS else [],
        regonly=rules.analysis_regonly.output.csv,
        # the beyond-the-original claims (beyond.smk): beta-guided KV-cache bits, the temperature knob
        kvcache=KVCACHE_TABLE,
        knobs=KNOBS_TABLE,
        # claim 5 (the level of L_reg) reads the train logs of these runs
        logs=[f"{d}/train_log.csv" for d in run_dirs(CLAIM_VARIANTS, [LARGEST])] if CLAIM_VARIANTS else [],
        meta=rules.tokenize.output.meta,
        # the control claim reads the control runs' measurements (control.smk)
        control=rules.analysis_control.output.runs,
    output:
        json=report_item(f"{RES}/claims.json"),
        tex=f"{TABLES}/claims.tex",
        paragraphs=f"{TABLES}/claims_text.tex",
    params:
        config=CONFIG_JSON,
        data=data_dir,
        # an option only for a measurement that is there (no NCN variant: no skip table)
        measures=lambda w, input: claim_measure_options(input),
        cfg=trigger("analyze.claims"),
    log:
        f"{LOGS}/analysis/claims.log",
    benchmark:
        f"{BENCH}/analysis/claims.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze claims --runs-table {input.runs} --traces {input.traces} {input.static_traces}"
        " {params.measures} --config {params.config} --data {params.data} --control {input.control}"
        " --json {output.json} --tex {output.tex} --paragraphs {output.paragraphs} > {log} 2>&1"


TARGETS.append(RUNS_TABLE)
TARGETS.extend(trace_files(TRACE, NCN_VARIANTS, LARGEST, VARIANT_SEEDS))
TARGETS.extend(rules.analysis_ab.output)
TARGETS.extend(rules.analysis_scaling.output)
TARGETS.extend(rules.analysis_leak.output)
TARGETS.extend(rules.analysis_claims.output)
if NCN_VARIANTS:
    TARGETS.extend(rules.analysis_brainscan.output)
    TARGETS.extend(rules.analysis_skip.output)
    TARGETS.extend(rules.analysis_regonly.output)
