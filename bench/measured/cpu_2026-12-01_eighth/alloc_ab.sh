#!/bin/bash
# 2026-12-01, eighth session (machine.txt). /tmp/defrun: a clone at daa8322 (the allocator with the 32 MiB
# mmap threshold only) with its own venv and the default profile's data and first runs (a `make reproduce`
# stopped after 32 of 211 jobs); /work/main: the change. /tmp/ev_own: a copy of runs/none/s/seed3's model.
# old (defrun: the 32 MiB mmap threshold) vs new (main: mmap off), interleaved, own processes, no MLflow server
cd /tmp/defrun
OLD=/tmp/defrun/.venv/bin/ncn; NEW=/work/main/.venv/bin/ncn
for i in 1 2; do
  for which in old new; do
    bin=$OLD; [ $which = new ] && bin=$NEW
    /usr/bin/time -f "$which evaluate: %e s wall, %U user, %S sys, %R minflt, %M KiB" $bin evaluate --config results/default/config.json --run /tmp/ev_own --data results/default/data --threads 1 2>&1 >/dev/null | tail -1
    cp /tmp/ev_own/eval.json /tmp/ev_own/eval_$which.json
    /usr/bin/time -f "$which skip:     %e s wall, %U user, %S sys, %R minflt, %M KiB" $bin analyze rows skip --run results/default/runs/asrun/l/seed0 --config results/default/config.json --data results/default/data --out /tmp/skip_$which.csv --threads 1 2>&1 >/dev/null | tail -1
  done
done
md5sum /tmp/ev_own/eval_old.json /tmp/ev_own/eval_new.json /tmp/skip_old.csv /tmp/skip_new.csv
