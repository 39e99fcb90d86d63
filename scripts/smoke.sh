#!/usr/bin/env bash
# `make smoke`: the main job end to end in quick mode, through the user's own make targets.
# Calibrates both devices (--quick) into a scratch preset directory, validates those presets,
# trains a tiny configuration on them (make train, then make sweep resuming the same group),
# runs the benchmark in quick mode and the report. Any failing step fails the whole run.
set -euo pipefail
scratch="${1:-results/smoke}"
make="${MAKE:-make}"
rm -rf "$scratch"
mkdir -p "$scratch"
scratch="$(cd "$scratch" && pwd)"
started=$(date +%s)
step() { echo; echo "== smoke: $* ($(($(date +%s) - started)) s)"; }

step "calibrate both devices (quick) into $scratch/presets"
$make --no-print-directory calibrate ARGS="--quick --presets $scratch/presets"
step "validate those presets"
$make --no-print-directory validate ARGS="--quick --presets $scratch/presets --reports $scratch/validation"
# training reads the presets just calibrated, not the committed ones
export BRUNO_PRESETS_DIR="$scratch/presets"
step "train smoke_jsb seed 0 on those presets"
$make --no-print-directory train EXP=smoke_jsb ARGS="--seed 0 --out $scratch/train --no-progress"
step "sweep the smoke group (seed 0 is complete and skipped, seed 1 runs)"
$make --no-print-directory sweep GROUP=smoke JOBS=2 ARGS="--out $scratch/train --no-progress"
step "bench (quick)"
$make --no-print-directory bench ARGS="--quick --out $scratch/bench"
step "report"
$make --no-print-directory report ARGS="--train-dir $scratch/train --out $scratch/report"
step "check what the stages wrote"
"${VENV:-.venv}/bin/python" - "$scratch" <<'PY'
import json
import sys
from pathlib import Path

scratch = Path(sys.argv[1])
problems = []
for device in ("felif", "rram"):
    report = json.loads((scratch / "validation" / f"{device}.json").read_text())
    if not report["passed"]:
        problems.append(f"validation of {device} did not pass")
for seed in (0, 1):
    metrics = json.loads((scratch / "train" / f"smoke_jsb_s{seed}" / "metrics.json").read_text())
    for device in ("felif", "rram"):
        used = Path(metrics["presets"].get(device, "none"))
        if used != scratch / "presets" / f"{device}.json":
            problems.append(f"seed {seed} trained on {used}, not the smoke {device} preset")
bench = json.loads((scratch / "bench" / "bench.json").read_text())
if not bench["records"] or not bench["throughput"]:
    problems.append("bench wrote no records")
if not list((scratch / "report").glob("*.md")):
    problems.append("report wrote no tables")
if problems:
    sys.exit("smoke: " + "; ".join(problems))
print("smoke: outputs checked (validation passed, runs trained on the smoke presets, bench, report)")
PY
echo "smoke: passed in $(($(date +%s) - started)) s (outputs under $scratch)"
