#!/bin/bash
# One default-profile training job (causal, size s, seed 0; 1 thread as the pipeline runs it; MLflow off), with the
# pool of fec2fc3 (chunked) and of this session's change (cumulative), three times each, interleaved, each in a
# process of its own; /usr/bin/time's wall and user time, and the run's final losses. Paths are this machine's:
# /tmp/oldco is a worktree at fec2fc3, /tmp/defrun/results/default/data the default profile's tokenized data.
set -u
cd /work/main
[ -d /tmp/oldco ] || git worktree add -q /tmp/oldco fec2fc3
.venv/bin/python - <<'P'
import yaml; c = yaml.safe_load(open("config/default.yaml")); c.setdefault("mlflow", {})["enabled"] = False
yaml.safe_dump(c, open("/tmp/t10/default_nomlflow.yaml", "w"))
P
for rep in 1 2 3; do
  for which in old new; do
    src=/work/main/src; [ $which = old ] && src=/tmp/oldco/src
    rm -rf /tmp/t10/run_$which
    /usr/bin/time -f "$which rep$rep: wall %e s user %U s sys %S s" env PYTHONPATH=$src .venv/bin/python -m ncn.cli train \
      --config /tmp/t10/default_nomlflow.yaml --variant causal --size s --seed 0 --out /tmp/t10/run_$which \
      --data /tmp/defrun/results/default/data --threads 1 > /tmp/t10/train_$which.log 2>&1
    tail -1 /tmp/t10/train_$which.log
    python3 -c "import json; m = json.load(open('/tmp/t10/run_$which/metrics.json')); print('  ', {k: m[k] for k in m if 'loss' in k and not isinstance(m[k], (list, dict))})"
  done
done
