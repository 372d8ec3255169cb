#!/bin/bash
# One causal/l job of the default profile (MLflow off), with glibc's malloc defaults and with the
# setting of ncn.allocator, twice each, interleaved; /usr/bin/time's wall, user, sys, peak RSS, faults.
# Measured 2026-12-01 before `ncn` set it itself, through glibc's environment variables (the same two
# values). Now `ncn` sets it, so "plain" turns it off with an empty GLIBC_TUNABLES (ncn.allocator then
# leaves glibc alone). Paths are this machine's.
cd /work/main
python3 - <<'P'
import yaml; c=yaml.safe_load(open('/work/main/config/default.yaml')); c.setdefault('mlflow',{})['enabled']=False
yaml.safe_dump(c, open('/tmp/s7/default_nomlflow.yaml','w'))
P
for rep in 1 2; do
  for mode in plain tuned; do
    rm -rf /tmp/s7/trainrun_$mode
    if [ $mode = tuned ]; then unset GLIBC_TUNABLES; else export GLIBC_TUNABLES=; fi
    /usr/bin/time -f "$mode rep$rep: wall %e s user %U sys %S maxrss %M KB minflt %R" env PYTHONPATH=src .venv/bin/python -m ncn.cli train --config /tmp/s7/default_nomlflow.yaml --variant causal --size l --seed 0 --out /tmp/s7/trainrun_$mode --data results/default/data > /tmp/s7/train_$mode.log 2>&1
    tail -1 /tmp/s7/train_$mode.log
  done
done
