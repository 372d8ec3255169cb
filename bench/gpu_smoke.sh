#!/usr/bin/env bash
# GPU smoke check: one script, within 5 minutes on one GPU (about 3 on an H100/H200).
#
#   bench/gpu_smoke.sh [OUT_DIR]            (default OUT_DIR: results/gpu_smoke)
#   DEVICE=cpu bench/gpu_smoke.sh           every piece tiny on the CPU: the plumbing check where
#                                           no GPU exists (CPU_COMPILE=1 adds torch.compile: minutes)
#   PEAK_TFLOPS=989 bench/gpu_smoke.sh      MFU also against a datasheet bf16 peak (dense TFLOP/s)
#
# 1. model bench on CUDA, bf16 autocast: tokens/s and MFU (against a bf16 GEMM measured in the
#    same rounds) of reference, none and causal at d256/L6/T512 (vocab 4096, batch 16) and at
#    the paper18m shape (config/paper.yaml: GPT-2 vocab 50257, micro-batch 64);
# 2. 300 training steps of causal eager, under torch.compile and under its CUDA graphs (reduce-overhead;
#    same init and batches):
#    tokens/s, compile time, the losses' agreement, fp32 signals and loss under bf16 autocast;
# 3. cached generation == uncached generation (tokens, logits) for every caching variant,
#    past block_size;
# 4. the real CLI path: `ncn train` + `ncn evaluate` of causal on the smoke profile's data on
#    CUDA (metrics.json must say cuda/bfloat16); with 2+ GPUs also a 2-process DDP run;
#    and the pipeline's path: the same job forked by `ncn mlflow-serve` (the server `snakemake` starts,
#    ncn.trackserver), which must not have touched CUDA; its ledger must show the fork ran the job.
#    That step needs MLflow (carry its wheels to a bare GPU machine); skipped, and said, without.
#    Needs the TinyStories excerpt (NCN_DATA_DIR, else ../shared/data/tinystories); skipped without.
# Exits non-zero if any check fails. Tables land in OUT_DIR (bench_*.csv, checks.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${1:-results/gpu_smoke}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${NCN_DATA_DIR:-}" && -f ../shared/data/tinystories/train.txt ]]; then
  NCN_DATA_DIR=$(cd ../shared/data/tinystories && pwd)
  export NCN_DATA_DIR
fi
ncn() { "$PY" -m ncn.cli "$@"; }
start=$SECONDS
stamp() { echo "gpu_smoke: [$((SECONDS - start)) s] $*"; }

NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [[ "$DEVICE" == cuda && "$NGPU" -lt 1 ]]; then
  echo "gpu_smoke: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)')); DEVICE=cpu runs the CPU plumbing check" >&2
  exit 1
fi
"$PY" -c 'import torch; print("gpu_smoke:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "x", torch.cuda.device_count(), "| torch", torch.__version__)'
mkdir -p "$OUT"
FAILED=0

# sizes: the real ones on a GPU, tiny ones for the CPU plumbing check
if [[ "$DEVICE" == cuda ]]; then
  BENCH=(--steps 20 --warmup 3 --device cuda --dtype bf16)
  SHAPE_A=(--shapes d256/L6/T512 --batch 16 --eval-batch 64 --vocab 4096)
  SHAPE_B=(--config config/paper.yaml --shapes paper18m --batch 64 --eval-batch 128 --vocab 50257)
  TRAIN=(--steps 300 --compile-mode default reduce-overhead)
  GEN=()
else
  BENCH=(--steps 2 --warmup 1 --device cpu --dtype bf16 --threads 2 --gemm-n 256)
  SHAPE_A=(--shapes d32/L2/T32 --batch 2 --eval-batch 4 --vocab 256)
  SHAPE_B=(--shapes d32/L1/T64/H2 --batch 2 --eval-batch 4 --vocab 512)
  TRAIN=(--steps 6 --batch 2 --seq-len 32 --d-model 32 --n-layer 2 --n-head 2 --vocab 64)
  [[ -n "${CPU_COMPILE:-}" ]] || TRAIN+=(--no-compile)
  GEN=(--seq-len 32 --d-model 32 --n-layer 2 --n-head 2 --vocab 64 --new 40 --prompt 8)
fi
PEAK=()
[[ -n "${PEAK_TFLOPS:-}" ]] && PEAK=(--peak-flops "${PEAK_TFLOPS}e12")

# 1. the model bench (tokens/s, MFU) of none and causal next to the reference
stamp "model bench"
ncn bench model "${BENCH[@]}" "${PEAK[@]}" "${SHAPE_A[@]}" --variants none causal --out "$OUT/bench_d256.csv"
ncn bench model "${BENCH[@]}" "${PEAK[@]}" "${SHAPE_B[@]}" --variants none causal --out "$OUT/bench_paper18m.csv"

# 2. + 3. training eager vs torch.compile, bf16 dtypes, cached generation
stamp "training eager vs torch.compile"
"$PY" bench/gpu_checks.py train --device "$DEVICE" "${TRAIN[@]}" | tee "$OUT/checks.txt" || FAILED=1
stamp "cached generation"
"$PY" bench/gpu_checks.py generate --device "$DEVICE" "${GEN[@]}" | tee -a "$OUT/checks.txt" || FAILED=1

# 4. the CLI path on the smoke profile's data
if [[ -z "${NCN_DATA_DIR:-}" ]]; then
  stamp "no NCN_DATA_DIR and no ../shared/data/tinystories: the ncn train/evaluate check is skipped"
else
  stamp "ncn train + evaluate on $DEVICE"
  CFG="$OUT/config.yaml"
  "$PY" - "$OUT" "$DEVICE" <<'EOF'
import sys
from pathlib import Path

import yaml

out, device = Path(sys.argv[1]), sys.argv[2]
cfg = yaml.safe_load(Path("config/smoke.yaml").read_text())
cfg.setdefault("train", {}).update({"device": device})
cfg.setdefault("mlflow", {})["enabled"] = False
(out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
cfg["mlflow"].update(enabled=True, tracking_uri=f"sqlite:///{(out / 'served' / 'mlflow.db').resolve()}")
(out / "config_served.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))  # the forked job's (step 5)
EOF
  DATA="$OUT/data"
  [[ -f "$DATA/manifest.json" ]] || ncn data fetch --config "$CFG" --out "$DATA"
  [[ -f "$DATA/tokenizer.json" ]] || ncn data tokenizer --config "$CFG" --data "$DATA" --out "$DATA/tokenizer.json"
  [[ -f "$DATA/meta.json" ]] || ncn data tokenize --config "$CFG" --data "$DATA" --tokenizer "$DATA/tokenizer.json" --out "$DATA"
  RUNS=("$OUT/runs/causal")
  rm -rf "${RUNS[0]}"
  ncn train --config "$CFG" --variant causal --size s --seed 0 --out "${RUNS[0]}" --data "$DATA"
  ncn evaluate --run "${RUNS[0]}" --data "$DATA"
  if [[ "$DEVICE" == cuda && "$NGPU" -ge 2 ]]; then
    RUNS+=("$OUT/runs/causal_ddp2")
    rm -rf "${RUNS[1]}"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m ncn.cli train --config "$CFG" \
      --variant causal --size s --seed 0 --out "${RUNS[1]}" --data "$DATA"
  fi
  READY="$OUT/served/mlflow.ready"
  if "$PY" -c "import mlflow" 2>/dev/null; then
    stamp "ncn train forked by the pipeline's server on $DEVICE"
    RUNS+=("$OUT/runs/causal_forked")
    rm -rf "${RUNS[-1]}" "$OUT/served"
    export NCN_MLFLOW_PIPELINE="$READY"  # as the Snakefile sets it, for the server and the job alike
    ncn mlflow-init --config "$OUT/config_served.yaml" --out "$READY" --serve
    ncn train --config "$OUT/config_served.yaml" --variant causal --size s --seed 0 --out "${RUNS[-1]}" --data "$DATA" || FAILED=1
    ncn mlflow-end --ready "$READY" --results "$OUT/served" || FAILED=1
    unset NCN_MLFLOW_PIPELINE
  else
    stamp "MLflow is not importable here: the forked-job check is skipped"
    echo "skip ncn train forked by the pipeline's server: MLflow is not importable" >> "$OUT/checks.txt"
  fi
  "$PY" - "$DEVICE" "$READY" "${RUNS[@]}" <<'EOF' | tee -a "$OUT/checks.txt" || FAILED=1
import json
import sys
from pathlib import Path

device, ready, bad = sys.argv[1], Path(sys.argv[2]), []
for run in map(Path, sys.argv[3:]):
    m = json.loads((run / "metrics.json").read_text())
    ev = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    want = ("cuda", "bfloat16") if device == "cuda" else ("cpu", "float32")
    ok = (m["device"], m["dtype"]) == want
    bad += [] if ok else [str(run)]
    val = f", val_loss {ev['val_loss']:.4f}" if ev else ""
    print(f"{'ok  ' if ok else 'FAIL'} ncn train {run}: {m['device']} {m['dtype']}, {m['steps']} steps, "
          f"final loss {m['final_loss']:.4f}{val}, {m['tokens_per_s']:.0f} tokens/s")
    if run.name == "causal_forked":  # the server's ledger: one fork ran this training job, and exited 0
        from ncn.trackserver import ledger_path, read_ledger

        jobs = [r for r in read_ledger(ledger_path(ready))
                if r["kind"] == "job" and r["stage"] == "train" and str(run) in r["command"]]
        ok = len(jobs) == 1 and jobs[0]["status"] == "0"
        bad += [] if ok else [f"{run} (ledger)"]
        print(f"{'ok  ' if ok else 'FAIL'} the pipeline's server forked that job: {jobs or 'no fork ran it'}")
sys.exit(1 if bad else 0)
EOF
fi

stamp "done: tables in $OUT/bench_d256.csv, $OUT/bench_paper18m.csv, checks in $OUT/checks.txt"
if [[ "$FAILED" -ne 0 ]] || grep -q '^FAIL' "$OUT/checks.txt"; then
  echo "gpu_smoke: FAILED (see $OUT/checks.txt)"
  exit 1
fi
echo "gpu_smoke: OK in $((SECONDS - start)) s"
