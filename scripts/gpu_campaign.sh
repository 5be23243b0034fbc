#!/usr/bin/env bash
# Continues the committed training runs (training/NAME, see training/README.md)
# on a GPU for a fixed time budget, then checks each on held-out data. Run it
# after the CUDA tests whenever a GPU machine is lent:
#   scripts/gpu_campaign.sh OUT_DIR
# It never touches training/: the continued runs, their recovery checks and
# the ledger rows land in OUT_DIR, to be reviewed and committed:
#   cp OUT_DIR/NAME/{checkpoint.pt,config.json,metrics.jsonl} training/NAME/
#   cat OUT_DIR/ledger-rows.md >> docs/results/training-ledger.md
# Environment:
#   CAMPAIGN_MINUTES   wall time of training, shared by the runs (default 8)
#   CAMPAIGN_TRAINING  the folder of committed runs (default training/)
#   CAMPAIGN_RUNS      runs in it to continue (default: every one with a checkpoint.pt)
#   CAMPAIGN_DEVICE    cuda (default), or cpu for a dry run
#   CAMPAIGN_SET       extra --set overrides for every run (a dry run's tiny budget)
#   CAMPAIGN_CHECK     extra drdm_check_recovery options (default: none)
#   DRDM_BUILD_DIR (default build), DATA (default ../shared/data), PYTHON
# OUT_DIR/summary.txt lists each step with its exit code and seconds; a failing
# step is reported and the rest go on; the exit code is the number of failures.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 1 ] || { echo "usage: scripts/gpu_campaign.sh OUT_DIR" >&2; exit 2; }
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
B="${DRDM_BUILD_DIR:-$ROOT/build}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DATA="${DATA:-$ROOT/../shared/data}"
DEVICE="${CAMPAIGN_DEVICE:-cuda}"
MINUTES="${CAMPAIGN_MINUTES:-8}"
TRAINING="${CAMPAIGN_TRAINING:-$ROOT/training}"
RUNS="${CAMPAIGN_RUNS:-$(cd "$TRAINING" && for d in */; do [ -f "$d/checkpoint.pt" ] && printf '%s ' "${d%/}"; done)}"
read -r -a SETS <<< "${CAMPAIGN_SET:-}"
read -r -a CHECK_EXTRA <<< "${CAMPAIGN_CHECK:-}"
for tool in drdm_train drdm_check_recovery; do
  [ -x "$B/apps/$tool" ] || { echo "gpu_campaign.sh: $B/apps/$tool not built (run scripts/setup.sh)" >&2; exit 2; }
done
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
: > "$OUT/ledger-rows.md"
FAILED=0

step() {  # step NAME CMD...  (output appended to OUT/log.txt)
  local name="$1"; shift
  local t0=$SECONDS
  echo "=== $name: $*" >> "$OUT/log.txt"
  "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
  printf '%-40s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$SUMMARY"
  return $rc
}

to_file() {  # to_file FILE CMD...: CMD's stdout to FILE
  local file="$1"; shift
  "$@" > "$file"
}

# Held-out data of each run: the images its config did not train on.
check_args() {
  case "$1" in
    cardiac*) echo "--data $DATA/acdc/images --subset 0,1 --max-images 16 --levels 10,20,40,60" ;;
    chest*) echo "--data $DATA/jsrt/images --subset 0.7,1 --max-images 16 --levels 10,20,40,60" ;;
    hippocampus*) echo "--data $DATA/hippocampus/images --subset 0.7,1 --max-images 4 --levels 10,30,60" ;;
    *) return 1 ;;
  esac
}

{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } > "$OUT/machine.txt"
read -r -a RUN_LIST <<< "$RUNS"
[ ${#RUN_LIST[@]} -gt 0 ] || { echo "gpu_campaign.sh: no runs to continue in $TRAINING" >&2; exit 2; }
PER_RUN=$(awk -v m="$MINUTES" -v n="${#RUN_LIST[@]}" 'BEGIN { printf "%.6f", m / n }')
for name in "${RUN_LIST[@]}"; do
  src="$TRAINING/$name"
  if [ ! -f "$src/checkpoint.pt" ] || ! held_out=$(check_args "$name"); then
    printf '%-40s rc=%-3s %4ss\n' "$name: no checkpoint or held-out set" 2 0 | tee -a "$SUMMARY"
    FAILED=$((FAILED + 1)); continue
  fi
  run="$OUT/$name"
  rm -rf "$run" && cp -r "$src" "$run"
  # drdm_train's last stdout line (train.json) says where the stretch began.
  step "train $name ($PER_RUN min, $DEVICE)" to_file "$run/train.json" \
    "$B/apps/drdm_train" --output "$run" --config "$run/config.json" --resume --device "$DEVICE" \
    --no-progress --max-minutes "$PER_RUN" ${SETS[@]+"--set"} ${SETS[@]+"${SETS[@]}"} || continue
  from=$(sed -n 's/.*"first_step": *\([0-9]*\).*/\1/p' "$run/train.json")
  # shellcheck disable=SC2086  # held_out is a list of options
  step "check $name" "$B/apps/drdm_check_recovery" --model "$run/model.pt" $held_out --repeats 1 \
    --device "$DEVICE" --seed 0 -o "$run/recovery_check.json" ${CHECK_EXTRA[@]+"${CHECK_EXTRA[@]}"} || continue
  step "ledger $name" "$PY" "$ROOT/scripts/training_ledger.py" --model "$name" --run "$run" \
    --from-step "$from" --check "$run/recovery_check.json" --machine "$(head -n 1 "$OUT/machine.txt")" \
    --date "$(date +%F)" --note "scripts/gpu_campaign.sh, $PER_RUN min" --ledger "$OUT/ledger-rows.md"
done
exit "$FAILED"
