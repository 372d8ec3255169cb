# Data stage: fetch TinyStories (NCN_DATA_DIR, data.dir, or the hub), train the tokenizer,
# tokenize the three splits (train, heldout: the train excerpt's last stories, valid). Every later stage reads results/<profile>/data/. The tokenizer jobs ask for up to
# 4 threads (Snakemake caps that at --cores); RAYON_NUM_THREADS holds `tokenizers` to them.


rule fetch_data:
    output:
        train=f"{DATA}/train.txt",
        heldout=f"{DATA}/heldout.txt",
        valid=f"{DATA}/valid.txt",
        manifest=f"{DATA}/manifest.json",
    params:
        config=CONFIG_JSON,
        out=lambda w, output: os.path.dirname(output.manifest),
        # NCN_DATA_DIR is deliberately not a rerun trigger: it is a machine's path to the data,
        # and an unset variable in one shell must not rebuild (or, offline, delete) the data.
        # manifest.json records the source and sha256; switch data with --forcerun fetch_data.
        cfg=trigger("data.fetch"),
    log:
        f"{LOGS}/data/fetch.log",
    benchmark:
        f"{BENCH}/data/fetch.tsv"
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "ncn data fetch --config {params.config} --out {params.out} > {log} 2>&1"


rule train_tokenizer:
    input:
        train=rules.fetch_data.output.train,
        manifest=rules.fetch_data.output.manifest,
    output:
        f"{DATA}/tokenizer.json",
    params:
        config=CONFIG_JSON,
        data=lambda w, input: os.path.dirname(input.manifest),
        cfg=trigger("data.tokenizer"),
    log:
        f"{LOGS}/data/tokenizer.log",
    benchmark:
        f"{BENCH}/data/tokenizer.tsv"
    threads: 4
    conda:
        CONDA_ENV
    shell:
        "RAYON_NUM_THREADS={threads} ncn data tokenizer --config {params.config} --data {params.data}"
        " --out {output} > {log} 2>&1"


rule tokenize:
    input:
        train=rules.fetch_data.output.train,
        heldout=rules.fetch_data.output.heldout,
        valid=rules.fetch_data.output.valid,
        manifest=rules.fetch_data.output.manifest,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        train=f"{DATA}/train.bin",
        heldout=f"{DATA}/heldout.bin",
        valid=f"{DATA}/valid.bin",
        meta=f"{DATA}/meta.json",
    params:
        config=CONFIG_JSON,
        data=lambda w, input: os.path.dirname(input.manifest),
        out=lambda w, output: os.path.dirname(output.meta),
        cfg=trigger("data.tokenize"),
    log:
        f"{LOGS}/data/tokenize.log",
    benchmark:
        f"{BENCH}/data/tokenize.tsv"
    threads: 4
    conda:
        CONDA_ENV
    shell:
        "RAYON_NUM_THREADS={threads} ncn data tokenize --config {params.config} --data {params.data}"
        " --tokenizer {input.tokenizer} --out {params.out} > {log} 2>&1"


TARGETS.append(rules.tokenize.output.meta)
