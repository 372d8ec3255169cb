#!/usr/bin/env bash
# 2026-12-01, ninth session, AMD EPYC 2 vCPUs (machine.txt), main at 42add60, torch 2.13.0+cpu, idle machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=bench/measured/cpu_2026-12-01_ninth
# 1. The default profile from scratch in a fresh clone, jobs forked by the pipeline's server (the default):
#    git clone <repo> /tmp/def && cd /tmp/def && make setup
#    NCN_DATA_DIR=<shared>/data/tinystories time .venv/bin/snakemake --cores all      -> 89 min 09 s (default_time.txt)
#    copied: results/default/timing/stages.csv (default_stages.csv), logs/forks.tsv (default_forks.tsv),
#    tables/ab.csv (default_ab.csv), the verdicts of claims.json (default_claims.txt)
# 2. A pool change tried and not kept (pool_inplace.patch: in-place exp chains, masks made once; bitwise the same)
#    against 42add60's pool (the pool then and now):
.venv/bin/python $D/pool_ab.py --rounds 30 --steps 3 | grep -v "it (" > $D/pool_ab_s_2threads.txt
# 3. causal / none at s, 2 threads, 6 fresh processes (the model is that of the fifth and eighth sessions' runs):
.venv/bin/ncn bench model --processes 6 --threads 2 --clock wall --shapes s --variants none causal --steps 20 \
    --out $D/model_s_2threads_6proc.csv > $D/model_s_2threads_6proc.log 2>&1
# 4. d256/L6/T256 (training MFU on this machine type), 1 process, 2 threads, 10 rounds:
.venv/bin/ncn bench model --shapes d256/L6/T256 --variants none causal --steps 10 --threads 2 \
    --out $D/model_d256_2threads.csv > $D/model_d256_2threads.log 2>&1
