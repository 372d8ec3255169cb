#!/usr/bin/env bash
# 2026-12-01, fifth session: the issue-14 targets on an AMD EPYC (machine.txt), one after the other on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=bench/measured/cpu_2026-12-01_amd
.venv/bin/ncn bench model --processes 6 --threads 1 --clock cpu --shapes s m l --variants none causal --steps 20 \
    --out $D/model_1thread_cpuclock_6proc.csv
.venv/bin/ncn bench model --processes 6 --threads 2 --clock wall --shapes s m l --variants none causal --steps 20 \
    --out $D/model_2threads_6proc.csv
.venv/bin/python $D/ffn_gemm.py > $D/ffn_gemm.txt
# DATA: a tokenized smoke corpus (the smoke profile's results/smoke/data)
.venv/bin/ncn bench startup --repeats 5 --data "${DATA:?set DATA to a tokenized smoke data folder}" --out $D/startup.csv
