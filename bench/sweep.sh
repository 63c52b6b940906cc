#!/usr/bin/env bash
# The whole benchmark at one scale: every built-in method on both tasks, then the reports.
#   bash bench/sweep.sh OUT [SCALE] [DEVICE]     e.g. bash bench/sweep.sh sweep-out tiny cuda
# Writes OUT/results (the store), OUT/report-<task>/ (leaderboard.md/.json, pareto.png) and
# OUT/times.tsv (wall seconds and exit code of each `mobench run`, cold or warm as the cache was).
set -uo pipefail
out=${1:?usage: bash bench/sweep.sh OUT [SCALE] [DEVICE]}
scale=${2:-tiny}
device=${3:-}
methods=${MOBENCH_SWEEP_METHODS:-"rewarded-soups logit-ensemble mage morlhf modpo"}
tasks=${MOBENCH_SWEEP_TASKS:-"hh summarize"}
mkdir -p "$out"
for task in $tasks; do
  for method in $methods; do
    start=$(date +%s%N)
    mobench run --method "$method" --task "$task" --scale "$scale" --results "$out/results" ${device:+--device "$device"} \
      > "$out/run-$task-$method.log" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s\t%s\t%d.%03d\t%s\n' "$task" "$method" $((ms / 1000)) $((ms % 1000)) "$rc" | tee -a "$out/times.tsv"
  done
  mobench report --task "$task" --results "$out/results" --scale "$scale" --out "$out/report-$task" || true
  mobench leaderboard --task "$task" --results "$out/results" --scale "$scale" --format markdown || true
done
