# Beyond the original (issue 16): beta-guided KV-cache compression and modulation knobs, measured on
# every variant (the baseline too) at the largest size, every seed. Included after analysis.smk,
# whose names (TABLES, FIGURES, LARGEST, KVCACHE_TABLE, KNOBS_TABLE) it uses; the claims rule
# there reads the two per-run tables (claims 10 and 11).
from ncn.analysis.rules import primary_ncn

BEYOND_RUNS = run_dirs(VARIANTS, [LARGEST])
BEYOND_DATA = dict(
    heldout=rules.tokenize.output.heldout,
    meta=rules.tokenize.output.meta,
    tokenizer=rules.train_tokenizer.output[0],
)
# The run `ncn generate --kv-bits` is timed on: "the NCN" at the largest size, the smallest seed.
GEN_RUN = run_dirs([primary_ncn(config)], [LARGEST], [min(SEEDS)])[0] if primary_ncn(config) else None


rule analysis_kvcache:
    input:
        measured=measured("kvcache", BEYOND_RUNS),
        **BEYOND_DATA,
    output:
        csv=KVCACHE_TABLE,
        summary=f"{TABLES}/kvcache_summary.csv",
        claim_json=f"{TABLES}/kvcache_claim.json",
        claim_tex=f"{TABLES}/kvcache_claim.tex",
        tex=f"{TABLES}/kvcache.tex",
        pdf=f"{FIGURES}/kvcache.pdf",
        png=report(f"{FIGURES}/kvcache.png", caption="../report/kvcache.rst", category="Beyond the original"),
        gen_csv=f"{RES}/timing/kvcache_generate.csv",
        gen_tex=f"{TABLES}/kvcache_generate.tex",
    params:
        config=CONFIG_JSON,
        source=measured_option("kvcache", BEYOND_RUNS),
        gen=f"--gen-run {GEN_RUN}" if GEN_RUN else "",  # no NCN variant: the generation table has no rows
        data=data_dir,
        cfg=trigger("analyze.kvcache"),
    log:
        f"{LOGS}/analysis/kvcache.log",
    benchmark:
        f"{BENCH}/analysis/kvcache.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze kvcache {params.source} --config {params.config} --data {params.data}"
        " --csv {output.csv} --summary {output.summary} --tex {output.tex} --pdf {output.pdf} --png {output.png}"
        " --claim-json {output.claim_json} --claim-tex {output.claim_tex}"
        " {params.gen} --gen-csv {output.gen_csv} --gen-tex {output.gen_tex} --threads {threads} > {log} 2>&1"


rule analysis_knobs:
    input:
        measured=measured("knobs", BEYOND_RUNS),
        **BEYOND_DATA,
    output:
        csv=KNOBS_TABLE,
        summary=f"{TABLES}/knobs_summary.csv",
        claim_json=f"{TABLES}/knobs_claim.json",
        claim_tex=f"{TABLES}/knobs_claim.tex",
        tex=f"{TABLES}/knobs.tex",
        pdf=f"{FIGURES}/knobs.pdf",
        png=report(f"{FIGURES}/knobs.png", caption="../report/knobs.rst", category="Beyond the original"),
    params:
        config=CONFIG_JSON,
        source=measured_option("knobs", BEYOND_RUNS),
        data=data_dir,
        cfg=trigger("analyze.knobs"),
    log:
        f"{LOGS}/analysis/knobs.log",
    benchmark:
        f"{BENCH}/analysis/knobs.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn analyze knobs {params.source} --config {params.config} --data {params.data}"
        " --csv {output.csv} --summary {output.summary} --tex {output.tex} --pdf {output.pdf} --png {output.png}"
        " --claim-json {output.claim_json} --claim-tex {output.claim_tex}"
        " --threads {threads} > {log} 2>&1"


TARGETS.extend(rules.analysis_kvcache.output)
TARGETS.extend(rules.analysis_knobs.output)
