#!/usr/bin/env bash
# 2026-12-02, tenth session, AMD EPYC 2 vCPUs (machine.txt), main at f5aae90 (the cumulative prefix pool),
# torch 2.13.0+cpu, idle machine; one step at a time, nothing else running.
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=bench/measured/cpu_2026-12-02_tenth
# 1. Same numbers to float rounding: every variant's forward + backward, fec2fc3 (the chunked pool) against f5aae90:
git worktree add -q /tmp/oldco fec2fc3
PYTHONPATH=/tmp/oldco/src .venv/bin/python bench/model_equivalence.py dump /tmp/eq_old.pt
PYTHONPATH=src .venv/bin/python bench/model_equivalence.py dump /tmp/eq_new.pt
.venv/bin/python bench/model_equivalence.py compare /tmp/eq_old.pt /tmp/eq_new.pt > $D/model_equivalence_fec2fc3_vs_f5aae90.txt
# 2. The pool alone and whole causal steps, old against new, in one process (s, 2 threads, 30 rounds):
.venv/bin/python $D/pool_ab.py --size s --rounds 30 --steps 3 | grep -v "it (" > $D/pool_ab_s_2threads.txt
# 3. A default-profile training job, old against new, 3 interleaved pairs (uses /tmp/oldco too):
bash $D/train_job_ab.sh > $D/train_job_ab.log 2>&1
git worktree remove --force /tmp/oldco
# 4. causal / none, 2 threads: s in 6 and then in 12 fresh processes; m and l in 6; s at 1 thread (CPU clock) in 6:
.venv/bin/ncn bench model --processes 6 --threads 2 --clock wall --shapes s --variants none causal --steps 20 \
    --out $D/model_s_2threads_6proc.csv > $D/model_s_2threads_6proc.log 2>&1
.venv/bin/ncn bench model --processes 12 --threads 2 --clock wall --shapes s --variants none causal --steps 20 \
    --out $D/model_s_2threads_12proc.csv > $D/model_s_2threads_12proc.log 2>&1
.venv/bin/ncn bench model --processes 6 --threads 2 --clock wall --shapes m l --variants none causal --steps 20 \
    --out $D/model_ml_2threads_6proc.csv > $D/model_ml_2threads_6proc.log 2>&1
.venv/bin/ncn bench model --processes 6 --threads 1 --clock cpu --shapes s --variants none causal --steps 20 \
    --out $D/model_s_1thread_cpuclock_6proc.csv > $D/model_s_1thread_cpuclock_6proc.log 2>&1
# (the runs wrote to /tmp/b10 and were copied here; progress lines stripped from the logs)
# 5. The pool module alone at d256 (2 heads of 128, batch 16), every implementation, 1 and 2 threads:
for th in 1 2; do echo "threads $th"; .venv/bin/python bench/prefix_pool.py --threads $th --reps 10 --lengths 128 512 1024; done \
    > $D/prefix_pool_d256.txt
.venv/bin/python $D/pool_bare_1thread.py > $D/pool_bare_1thread.txt  # 6. the bare pool, 1 thread
.venv/bin/python $D/pool_mutants.py > $D/pool_mutants.txt  # 7. twelve hand mutants of the new pool against tests/test_model.py
