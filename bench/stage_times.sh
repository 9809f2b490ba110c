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
# "model variant" lines for every model the config runs (dm, the consistency models, truncated trails)
jobs=$($py -c "import sys; from lcsc.kernel.config import load_config; from lcsc.kernel.models import models; from lcsc.kernel.variants import names as variant_names; \
import yaml; cfg = load_config(sys.argv[1], {k: yaml.safe_load(v) for k, v in (a.split('=', 1) for a in sys.argv[2:] if '=' in a)}); \
print('\n'.join(f'{m} {v}' for m in models(cfg) for v in variant_names(cfg, m)))" "$config" "${@/#--set/}")
models=$(echo "$jobs" | awk '{print $1}' | uniq)
rm -rf "$results"
printf '%-28s %10s\n' stage seconds > "$results.times"
run() {
  local name=$1; shift
  local t0=$EPOCHREALTIME
  $py -m lcsc "$@" "${common[@]}" > "$results.$name.log" 2>&1 || { echo "$name failed:"; tail -20 "$results.$name.log"; exit 1; }
  awk -v n="$name" -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%-28s %10.1f\n", n, b - a }' >> "$results.times"
}
run train_dm train-dm
for m in $models; do
  case $m in
    cm_cd|cm_ct) run "train_cm[$m]" train-cm --mode "${m#cm_}" ;;
    *_first*) run "truncate_trail[$m]" truncate-trail --model "$m" ;;
  esac
done
run train_features train-features
run reference_stats reference-stats --split train
for m in $models; do
  run "baselines[$m]" baselines --model "$m"
  run "search[$m]" search --model "$m"
done
while read -r m v; do run "evaluate[$m.$v]" evaluate --model "$m" --variant "$v"; done <<< "$jobs"
run tabulate tabulate
$py -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', \
'| torch', torch.__version__, '| threads', torch.get_num_threads())"
cat "$results.times"
grep -B2 -A13 '^| variant' "$results"/*/report/summary.md
