# The third device call of 2026-12-01 (the first two failed on missing jsonschema/PYTHONPATH; the
# call prefixed: python3 -m pip install --no-index --no-deps --target /tmp/pylib .whl/*.whl;
# export PYTHONPATH=$PWD/src:/tmp/pylib). Carried: .devdata (TinyStories text), .whl.
set -uo pipefail
export PYTHONUNBUFFERED=1 PY=python3 NCN_DATA_DIR=$PWD/.devdata
W=/tmp/gw; mkdir -p $W
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
PEAK_TFLOPS=989 timeout 200 bench/gpu_smoke.sh $W/smoke 2>&1 | tee $OUT/smoke.log
for f in bench_d256.csv bench_paper18m.csv checks.txt; do cp $W/smoke/$f $OUT/ 2>/dev/null; done
timeout 200 python3 bench/gpu_profile.py --device cuda --case d256/L6/T512 16 4096 --compile --compile-mode default reduce-overhead --rounds 10 --out $W/prof 2>&1 | grep -v Warning | tee $OUT/prof.log
cp $W/prof/gpu_profile.csv $OUT/gpu_profile_d256.csv 2>/dev/null
echo done
