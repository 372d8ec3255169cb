#!/usr/bin/env bash
# torch.compile on the CPU (2026-12-01): both scripts at the bench's setting (s: 2 threads, batch 16)
# and the pipeline's (l: 1 thread, batch 8), each with an empty inductor cache (cold), then again
# with the cache it left (warm). From the repository root: bash bench/measured/cpu_2026-12-01_compile/run.sh
set -u
here=$(dirname "$0")
export PYTHONPATH=src
for args in "2 16 64 2 2" "1 8 128 4 4"; do
  for script in controller_compiled model_compiled; do
    cache=$(mktemp -d)
    for cache_state in cold warm; do
      echo "== $script.py $args ($cache_state inductor cache)"
      TORCHINDUCTOR_CACHE_DIR=$cache .venv/bin/python "$here/$script.py" $args 2>&1 | grep -v -i warn
    done
    rm -rf "$cache"
  done
done
