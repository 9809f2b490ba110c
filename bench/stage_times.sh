#!/usr/bin/env bash
# Runs every stage of the pipeline once, by hand (no Snakemake), and prints the wall time of each:
#   bench/stage_times.sh [CONFIG] [RESULTS_DIR] [extra --set KEY=VALUE ...]
# Uses `python3` from PATH (set PYTHON to choose another) and the device the config picks.
set -euo pipefail
config=${1:-config/config.yaml}
results=${2:-/tmp/lcsc-bench}
shift $(( $# >= 2 ? 2 : $# ))
py=${PYTHON:-python3}
common=(--config "$config" --set "results_dir=$results" --set mlflow.enabled=false "$@")
variants=$($py -c "import sys; from lcsc.config import load_config; from lcsc.profiles import variant_names; \
print(' '.join(variant_names(load_config(sys.argv[1]))))" "$config")
rm -rf "$results"
printf '%-28s %10s\n' stage seconds > "$results.times"
run() {
  local name=$1; shift
  local t0=$EPOCHREALTIME
  $py -m lcsc "$@" "${common[@]}" > "$results.$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$results.$name.log"; exit 1; }
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-28s %10.1f\n", n, b - a }' >> "$results.times"
}
run train_dm train-dm
run train_features train-features
run reference_stats reference-stats --split train
run baselines baselines
run search search
for v in $variants; do run "evaluate[$v]" evaluate --variant "$v"; done
run tabulate tabulate
$py -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', \
'| torch', torch.__version__, '| threads', torch.get_num_threads())"
cat "$results.times"
grep -A12 '^| variant' "$results"/*/report/summary.md | head -14
