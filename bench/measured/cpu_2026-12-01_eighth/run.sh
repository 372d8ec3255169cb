#!/usr/bin/env bash
# 2026-12-01, eighth session (machine.txt): the causal/none target again on the idle AMD machine, 2 threads
# (wall clock), 6 fresh processes x 20 interleaved rounds. The model did not change since the fifth session's run
# (bench/measured/cpu_2026-12-01_amd/model_2threads_6proc.csv). alloc_ab.sh, memgrow.py: see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=bench/measured/cpu_2026-12-01_eighth
.venv/bin/ncn bench model --processes 6 --threads 2 --clock wall --shapes s m l --variants none causal --steps 20 \
    --out $D/model_2threads_6proc.csv 2>&1 | tee $D/model_2threads_6proc.log
