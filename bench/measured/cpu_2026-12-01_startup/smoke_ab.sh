#!/bin/bash
# smoke profile, before (HEAD~1 worktree, as it was) and after (6f3afca, compiled), interleaved
export NCN_DATA_DIR=/work/shared/data/tinystories HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
for r in 1 2; do for d in before after; do
  cd /tmp/$d && rm -rf results/smoke .snakemake && rm -rf /tmp/memo_$d
  s=$(date +%s.%N)
  NCN_CACHE_DIR=/tmp/memo_$d PYTHONPATH=/tmp/$d/src /work/main/.venv/bin/snakemake --cores 2 --configfile config/smoke.yaml > /tmp/su/smoke_${d}_$r.log 2>&1
  rc=$?; e=$(date +%s.%N)
  echo "$d round $r rc $rc wall $(echo "$e - $s" | bc) s" | tee -a /tmp/su/smoke_ab.txt
done; done
