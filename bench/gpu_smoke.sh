#!/usr/bin/env bash
# GPU smoke check: the smoke profile on CUDA with bf16 autocast, in a few minutes on one GPU.
#
#   bench/gpu_smoke.sh [OUT_DIR]          (default OUT_DIR: results/gpu_smoke)
#   COMPILE=1 bench/gpu_smoke.sh          also torch.compile the model (train.compile: true)
#
# Steps: the smoke profile's data (NCN_DATA_DIR, else ../shared/data/tinystories, else the
# config's data source), one training run per variant of the profile's first size and seed on
# CUDA, an evaluation of each, and with 2+ GPUs a 2-process DDP run (NCCL) of "causal".
# Prints a table with tokens/s per run and fails if a run did not train on CUDA in bfloat16.
# Needs the project's environment (make setup, with a CUDA build of torch); no network when
# the data folder is local.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${1:-results/gpu_smoke}
if [[ -z "${NCN_DATA_DIR:-}" && -f ../shared/data/tinystories/train.txt ]]; then
  NCN_DATA_DIR=$(cd ../shared/data/tinystories && pwd)
  export NCN_DATA_DIR
fi
ncn() { "$PY" -m ncn.cli "$@"; }

NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [[ "$NGPU" -lt 1 ]]; then
  echo "gpu_smoke: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)')); nothing to check" >&2
  exit 1
fi
"$PY" -c 'import torch; print("gpu_smoke:", torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "| torch", torch.__version__)'

mkdir -p "$OUT"
CFG="$OUT/config.yaml"
# smoke.yaml with train.device: cuda, its own MLflow store, optional compile
"$PY" - "$OUT" "${COMPILE:-0}" <<'EOF'
import sys
from pathlib import Path

import yaml

out, compile_ = Path(sys.argv[1]), sys.argv[2] == "1"
cfg = yaml.safe_load(Path("config/smoke.yaml").read_text())
cfg.setdefault("train", {}).update({"device": "cuda", "compile": compile_})
cfg.setdefault("mlflow", {})["tracking_uri"] = f"sqlite:///{out.resolve()}/mlflow.db"
(out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
EOF
read -r SIZE SEED VARIANTS < <("$PY" -c "
import sys; sys.path.insert(0, 'src')
from ncn.config import load_config
c = load_config('$CFG')
print(c['sizes'][0], c['seeds'][0], ','.join(c['variants']))")

DATA="$OUT/data"
start=$(date +%s)
[[ -f "$DATA/manifest.json" ]] || ncn data fetch --config "$CFG" --out "$DATA"
[[ -f "$DATA/tokenizer.json" ]] || ncn data tokenizer --config "$CFG" --data "$DATA" --out "$DATA/tokenizer.json"
[[ -f "$DATA/meta.json" ]] || ncn data tokenize --config "$CFG" --data "$DATA" --tokenizer "$DATA/tokenizer.json" --out "$DATA"
ncn mlflow-init --config "$CFG" --out "$OUT/mlflow.ready"

RUNS=()
for v in ${VARIANTS//,/ }; do
  run="$OUT/runs/$v/$SIZE/seed$SEED"
  ncn train --config "$CFG" --variant "$v" --size "$SIZE" --seed "$SEED" --out "$run" --data "$DATA"
  ncn evaluate --run "$run" --data "$DATA"
  RUNS+=("$run")
done
if [[ "$NGPU" -ge 2 ]]; then
  run="$OUT/runs/causal_ddp2/$SIZE/seed$SEED"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m ncn.cli train --config "$CFG" \
    --variant causal --size "$SIZE" --seed "$SEED" --out "$run" --data "$DATA"
  RUNS+=("$run")
fi

"$PY" - "${RUNS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

bad = []
print(f"\n{'run':<40} {'device':<6} {'dtype':<9} {'steps':>5} {'final_loss':>10} {'val_loss':>9} {'tokens/s':>10}")
for run in map(Path, sys.argv[1:]):
    m = json.loads((run / "metrics.json").read_text())
    ev = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    val = f"{ev['val_loss']:.4f}" if ev else "-"
    print(f"{str(run):<40} {m['device']:<6} {m['dtype']:<9} {m['steps']:>5} {m['final_loss']:>10.4f} {val:>9} "
          f"{m['tokens_per_s']:>10.0f}")
    if m["device"] != "cuda" or m["dtype"] != "bfloat16":
        bad.append(str(run))
if bad:
    sys.exit(f"gpu_smoke: FAILED, not trained on CUDA in bf16: {', '.join(bad)}")
print("gpu_smoke: OK")
EOF
echo "gpu_smoke: $(( $(date +%s) - start )) s"
