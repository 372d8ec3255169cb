# The fifth device call of 2026-12-01 (the fourth was the same with --accum 2 and grad_accum 2:
# cli_accum2_trial.txt). The eager run folder was left from the fourth call (see cli.txt).
set -uo pipefail
export PYTHONUNBUFFERED=1 NCN_DATA_DIR=$PWD/.devdata
python3 -m pip install -q --no-index --no-deps --target /tmp/pylib .whl/*.whl 2>&1 | grep -v WARNING
export PYTHONPATH=$PWD/src:/tmp/pylib
W=/tmp/gw; mkdir -p $W
timeout 150 python3 bench/gpu_checks.py train --device cuda --steps 300 --accum 1 --compile-mode reduce-overhead 2>&1 | grep -v Warn | tee $OUT/checks_graphs.txt
python3 - $W <<'PY'
import sys, yaml
from pathlib import Path
w = Path(sys.argv[1])
cfg = yaml.safe_load(Path("config/smoke.yaml").read_text())
cfg.setdefault("mlflow", {})["enabled"] = False
t = cfg.setdefault("train", {})
for name, extra in {"eager": {}, "graphs": {"compile": True, "compile_mode": "reduce-overhead"},
                    "graphs2": {"compile": True, "compile_mode": "reduce-overhead", "micro_batch": 4, "grad_accum": 2}}.items():
    c = {**cfg, "train": {**t, "device": "cuda", **extra}}
    (w / f"{name}.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
print(t)
PY
D=$W/data
python3 -m ncn.cli data fetch --config $W/eager.yaml --out $D > /dev/null 2>&1
python3 -m ncn.cli data tokenizer --config $W/eager.yaml --data $D --out $D/tokenizer.json > /dev/null 2>&1
python3 -m ncn.cli data tokenize --config $W/eager.yaml --data $D --tokenizer $D/tokenizer.json --out $D > /dev/null 2>&1
for n in eager graphs; do
  timeout 120 python3 -m ncn.cli train --config $W/$n.yaml --variant causal --size s --seed 0 --out $W/runs/$n --data $D 2>&1 | grep -E "INFO|Error|error" | tee -a $OUT/cli.txt
  python3 -m ncn.cli evaluate --run $W/runs/$n --data $D 2>&1 | grep -E "valid|Error" | tee -a $OUT/cli.txt
done
python3 -m ncn.cli train --config $W/graphs2.yaml --variant causal --size s --seed 0 --out $W/runs/g2 --data $D 2>&1 | grep -E "needs|Error" | tail -2 | tee -a $OUT/cli.txt
echo done
