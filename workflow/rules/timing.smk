# Timing: the wall time of this run per stage (data, train, evaluate, analysis, paper) and the
# Snakemake overhead, from every rule's `benchmark:` file (`ncn bench stages`; bench/README.md
# defines the columns). Included last: its inputs are every other target, so it runs after them.
# Measured times live in results/timing/, outside the byte-identical tables.

STAGES_CSV = f"{RES}/timing/stages.csv"


rule timing_stages:
    input:
        list(TARGETS),
    output:
        STAGES_CSV,
    params:
        benchmarks=BENCH,
        forks=f"{LOGS}/forks.tsv",  # ncn.trackserver.ledger_path: the server's forks, their CPU and RSS
    log:
        f"{LOGS}/timing/stages.log",
    benchmark:
        f"{BENCH}/timing/stages.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn bench stages --benchmarks {params.benchmarks} --forks {params.forks} --snakemake-log .snakemake/log"
        " --out {output}"
        " > {log} 2>&1"


localrules:
    timing_stages,


TARGETS.append(STAGES_CSV)
