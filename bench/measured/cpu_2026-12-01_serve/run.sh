#!/usr/bin/env bash
# Issue 14, sixth session (AMD EPYC, 2 vCPUs, idle): the jobs' MLflow work in `ncn mlflow-serve`.
# 1. The smoke profile from scratch, interleaved off/on/on/off (off: NCN_MLFLOW_SERVER=0, every job
#    logs from its own process); wall seconds and the per-stage job seconds (~16 min). "on" was then
#    the server doing the jobs' MLflow work only: `bench/smoke_ab.py`'s mode "own" since the jobs
#    themselves run in the server's forks (seventh session); its logs still say "on".
# 2. `ncn bench startup` with the new case mlflow_server (a smoke causal/xs job whose pipeline has a server).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH="$PWD/.venv/bin:$PATH"
D=bench/measured/cpu_2026-12-01_serve
rm -rf /tmp/serve-ab && mkdir -p /tmp/serve-ab
.venv/bin/python bench/smoke_ab.py /tmp/serve-ab off own own off | tee $D/smoke_ab.log
(echo "run,mode,wall_s,stage,jobs,job_s,cpu_s,busy_s,max_rss_mb,note"; cat /tmp/serve-ab/stages.csv) > $D/smoke_ab_stages.csv
ncn bench startup --repeats 3 --out $D/startup.csv   # needs data: NCN_DATA_DIR, or --data a tokenized folder
# 3. After the server's preloading (the packages map, LATER_IMPORTS): the same two, on/off/on.
rm -rf /tmp/serve-ab2 && mkdir -p /tmp/serve-ab2
.venv/bin/python bench/smoke_ab.py /tmp/serve-ab2 own off own | tee $D/smoke_ab_preloaded.log
(echo "run,mode,wall_s,stage,jobs,job_s,cpu_s,busy_s,max_rss_mb,note"; cat /tmp/serve-ab2/stages.csv) > $D/smoke_ab_preloaded_stages.csv
ncn bench startup --repeats 3 --out $D/startup_preloaded.csv
