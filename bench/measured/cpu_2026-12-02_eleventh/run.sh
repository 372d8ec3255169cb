#!/usr/bin/env bash
# 2026-12-02, eleventh session, AMD EPYC 2 vCPUs (machine.txt), torch 2.13.0+cpu, idle machine.
# Set down (and committed) before the run: the design and the rule that decides.
#
# causal / none at s with 2 threads has come out undecided four times (6 processes x 20 rounds in the
# fifth, eighth, ninth and tenth sessions; 12 x 20 in the tenth): medians 1.03-1.05, upper ends 1.06-1.08.
# power.py reads the tenth session's 18 processes: the spread between their medians (sd 0.020) is what
# 20 noisy rounds give a median inside one process (sd 0.0185, from each process's own interval), so
# more rounds per process narrow it. Simulated, with the median at 1.031, a run of 18 processes x 40
# rounds ends below 1.05 in 99% of runs if the spread is all rounds, in 83% if none of it is
# (6 x 20: 34%; 12 x 20: 68%). So: ONE run, 18 processes x 40 rounds, s only, none and causal.
# The verdict is the bench's own: the 95% interval of the median over the 18 processes' paired
# ratios (ncn.bench.median_ci) at or below 1.05 -> met; above -> not met; across -> undecided.
# Whatever it says is recorded; no second run of this design replaces it.
set -euo pipefail
cd "$(dirname "$0")/../../.."
D=bench/measured/cpu_2026-12-02_eleventh
PYTHONPATH=src .venv/bin/python $D/power.py > $D/power.txt
.venv/bin/ncn bench model --processes 18 --threads 2 --clock wall --shapes s --variants none causal --steps 40 \
    --out $D/model_s_2threads_18proc_40rounds.csv > $D/model_s_2threads_18proc_40rounds.log 2>&1

# Second, set down after the first run's result and before this one: d256/L6/T256 (the issue's first shape),
# where `none` / reference has only ever been measured in one process (Intel 1 thread 1.014 [0.979, 1.052],
# AMD 2 threads 0.973 [0.823, 1.014]: undecided both times). No per-process spread is on record at this shape
# to compute a power from; a step there takes ~2.5 s, so one process of 20 rounds takes ~3.5 min and the design
# is the one the other sizes used, 6 processes x 20 rounds (the evaluation forwards at batch 16 instead of 64,
# to keep the run near 20 minutes; only the training ratios are judged). Same decision rule, one run.
.venv/bin/ncn bench model --processes 6 --threads 2 --clock wall --shapes d256/L6/T256 --variants none causal \
    --steps 20 --eval-batch 16 --out $D/model_d256_2threads_6proc.csv > $D/model_d256_2threads_6proc.log 2>&1
# (both runs: the progress lines stripped from the logs; the s run wrote its CSVs here directly)

# Third: bench/gpu_smoke.sh's new step 5 (the job forked by the pipeline's server) on the CPU plumbing path,
# once as is and once with NCN_FORK_JOBS=0, where no fork runs the job and the check must FAIL (it did, exit 1):
DEVICE=cpu bench/gpu_smoke.sh /tmp/gs && cp /tmp/gs/checks.txt $D/gpu_smoke_cpu_checks.txt
NCN_FORK_JOBS=0 DEVICE=cpu bench/gpu_smoke.sh /tmp/gs2 || cp /tmp/gs2/checks.txt $D/gpu_smoke_cpu_nofork_checks.txt

# Fourth, set down before it ran: m and l at 1 thread (the pipeline's setting, CPU clock) were last measured in the
# fifth session, before the allocator, the forks and the cumulative pool. The tenth session's design for s at 1 thread,
# 6 processes x 20 rounds, run once more for m and l so that every cell of the table is current. Same decision rule.
.venv/bin/ncn bench model --processes 6 --threads 1 --clock cpu --shapes m l --variants none causal --steps 20 \
    --out $D/model_ml_1thread_cpuclock_6proc.csv > $D/model_ml_1thread_cpuclock_6proc.log 2>&1
