# Training: one job per (variant, size, seed), all reading the same tokenized data.
#
# Outputs are only the files `ncn train` writes atomically at the very end (model.pt,
# metrics.json, train_log.csv), so a killed job leaves nothing that looks finished. The
# checkpoints in RUN/ckpt/ are deliberately *not* outputs: Snakemake deletes the outputs of a
# failed job before it reruns, but never touches undeclared files, so rerunning the target after
# a crash or SIGKILL resumes from the latest checkpoint instead of starting over. (No `shadow:`
# either: a shadow directory would throw the checkpoints away with the failed attempt.)
#
# MLflow: each job's run nests under the invocation's pipeline run, which the onstart hook opens
# (and creates the store for) before any job starts, so parallel jobs never race on the schema.


rule train:
    input:
        train=rules.tokenize.output.train,
        meta=rules.tokenize.output.meta,
        tokenizer=rules.train_tokenizer.output[0],
    output:
        model=f"{RUN}/model.pt",
        metrics=f"{RUN}/metrics.json",
        log_csv=f"{RUN}/train_log.csv",
    params:
        config=CONFIG_JSON,
        run=run_dir,
        data=data_dir,
        cfg=lambda w: trigger("train", w.size),
    log:
        f"{LOGS}/train/{{variant}}/{{size}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/train/{{variant}}/{{size}}/seed{{seed}}.tsv"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=lambda w: size_resource(w.size, "mem_mb"),
        runtime=lambda w: size_resource(w.size, "runtime"),
        # The SLURM executor turns gpu=N into `--gpus=N`; locally it is only a label.
        gpu=config["resources"]["gpu"],
    conda:
        CONDA_ENV
    shell:
        "ncn train --config {params.config} --variant {wildcards.variant} --size {wildcards.size}"
        " --seed {wildcards.seed} --out {params.run} --data {params.data} --threads {threads}"
        " > {log} 2>&1"
