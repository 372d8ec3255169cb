#!/usr/bin/env bash
# Issue 14, seventh session (AMD EPYC, 2 vCPUs, idle): the pipeline's jobs run in forks of `ncn mlflow-serve`.
# 1. `ncn bench startup` (a smoke causal/xs job: in its own process with MLflow in it; in a pipeline
#    with a server, forked (mlflow_server) or in its own process (mlflow_server_own_process); MLflow off).
# 2. The smoke profile from scratch, interleaved own/fork/fork/own (~12 min).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export PATH="$PWD/.venv/bin:$PATH"
D=bench/measured/cpu_2026-12-01_fork
NCN_DATA_DIR=$(realpath ../shared/data/tinystories) ncn bench startup --repeats 5 --out $D/startup.csv | tee $D/startup.log
rm -rf /tmp/fork-ab && mkdir -p /tmp/fork-ab
.venv/bin/python bench/smoke_ab.py /tmp/fork-ab own fork fork own | tee $D/smoke_ab.log
(echo "run,mode,wall_s,stage,jobs,job_s,cpu_s,busy_s,max_rss_mb,note"; cat /tmp/fork-ab/stages.csv) > $D/smoke_ab_stages.csv
# 3. After the analyses' imports moved to the server's first idle moment (main at 2a186e6): fork/own/fork.
rm -rf /tmp/fork-ab2 && mkdir -p /tmp/fork-ab2
.venv/bin/python bench/smoke_ab.py /tmp/fork-ab2 fork own fork | tee $D/smoke_ab_idle.log
(echo "run,mode,wall_s,stage,jobs,job_s,cpu_s,busy_s,max_rss_mb,note"; cat /tmp/fork-ab2/stages.csv) > $D/smoke_ab_idle_stages.csv
# 4. After the review's hardening (main at ad2beea: declines, the "go" handshake, waiting for the fork
#    to be gone): the startup bench again, and fork/own once more.
NCN_DATA_DIR=$(realpath ../shared/data/tinystories) ncn bench startup --repeats 5 --out $D/startup_final.csv | tee $D/startup_final.log
rm -rf /tmp/fork-ab3 && mkdir -p /tmp/fork-ab3
.venv/bin/python bench/smoke_ab.py /tmp/fork-ab3 fork own | tee $D/smoke_ab_final.log
(echo "run,mode,wall_s,stage,jobs,job_s,cpu_s,busy_s,max_rss_mb,note"; cat /tmp/fork-ab3/stages.csv) > $D/smoke_ab_final_stages.csv
