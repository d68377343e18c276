#!/usr/bin/env bash
# Run one config once per seed, then tabulate every final metric as mean ± std over the seeds.
#
#   bash seed_multi_run.sh conf/demo/sft.yaml 42 43 44 [-- key=value ...]
#
# Each run writes to <output_dir>/seed<S>; the table goes to <output_dir>/seed_summary.{md,csv}.
# LAUNCHER overrides how each run starts, e.g. LAUNCHER="deepspeed --num_gpus 8" (default: python).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,8p' "$0"; exit 2
fi
config=$1; shift
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
overrides=("$@")
repo=$(cd "$(dirname "$0")" && pwd)
config_dir=$(dirname "$config"); config_name=$(basename "$config" .yaml)
base_output=$(cd "$repo" && python trainer.py -cp "$config_dir" -cn "$config_name" "${overrides[@]}" \
              --cfg job --resolve | sed -n 's/^output_dir: //p')
runs=()
for seed in "${seeds[@]}"; do
  out="$base_output/seed$seed"
  echo "=== seed $seed → $out"
  (cd "$repo" && ${LAUNCHER:-python} trainer.py -cp "$config_dir" -cn "$config_name" "${overrides[@]}" \
     seed="$seed" output_dir="$out" do_eval=true)
  runs+=("$out")
done
(cd "$repo" && python -m post_processors.seed_summary "$base_output" "${runs[@]}")
