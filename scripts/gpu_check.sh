#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: the CUDA GoogleTest cases, every
# program end to end on the GPU against the same run on the CPU, and the GPU
# benchmarks beside their peers. Run it after scripts/setup.sh on a machine
# with a GPU:
#   scripts/gpu_check.sh [OUT_DIR]        (default: gpu-check/ in the repo)
# Environment: DRDM_BUILD_DIR (default build), PYTHON (the peers' interpreter,
# default .venv/bin/python), DATA (default ../shared/data), GPU_CHECK_PARTS
# (default "tests e2e dist bench"), GPU_CHECK_BENCH (suites, default
# "spatial train seg reg generate"), GPU_CHECK_ROUNDS (default 2),
# GPU_CHECK_PRECISIONS (training precisions, default "none bf16").
# Each step has its own time limit; a failing step is reported and the rest
# go on. OUT_DIR/summary.txt lists each step with its exit code and seconds.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/gpu-check}" && cd "${1:-$ROOT/gpu-check}" && pwd)"
B="${DRDM_BUILD_DIR:-$ROOT/build}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DATA="${DATA:-$ROOT/../shared/data}"
PARTS="${GPU_CHECK_PARTS:-tests e2e dist bench}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/drdm-gpu-check.XXXXXX")"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME LIMIT_S CMD...  (output appended to OUT/log.txt)
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "=== $name: $*" >> "$OUT/log.txt"
  timeout --kill-after=10 "$limit" "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  printf '%-34s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$SUMMARY"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } > "$OUT/machine.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  >> "$OUT/machine.txt" 2>&1

if [[ " $PARTS " == *" tests "* ]]; then
  # Every GoogleTest case whose name says CUDA, plus the suites whose tests
  # pick the device themselves.
  for t in "$B"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.cmake) continue ;; esac
    step "gtest $(basename "$t") *CUDA*" 120 "$t" --gtest_filter='*CUDA*:*Cuda*:*cuda*' --gtest_brief=1
  done
fi

if [[ " $PARTS " == *" e2e "* ]]; then
  E="$WORK/e2e"; mkdir -p "$E"
  # Training: the paper's 2D configuration (256^2, batch 64), fp32 and bf16.
  for prec in ${GPU_CHECK_PRECISIONS:-none bf16}; do
    step "train paper-2d $prec" 300 "$B/apps/drdm_train" --config "$ROOT/configs/cardiac2d-paper.json" \
      --output "$E/train-$prec" --device cuda --no-progress --set "data.folders=[\"$DATA/myops\"]" \
      train.steps=40 train.log_every=10 train.checkpoint_every=20 train.preview_every=20 \
      "train.mixed_precision=\"$prec\""
    cp "$E/train-$prec/metrics.jsonl" "$OUT/train-$prec.metrics.jsonl" 2>/dev/null
  done
  step "train resume on cuda" 300 "$B/apps/drdm_train" --config "$ROOT/configs/cardiac2d-paper.json" \
    --output "$E/train-none" --resume --device cuda --no-progress --set "data.folders=[\"$DATA/myops\"]" \
    train.steps=60 train.log_every=10 train.checkpoint_every=20 train.preview_every=20
  # Generation: the same seed on the CPU and the GPU (2D and 3D models).
  for dev in cpu cuda; do
    step "deform cardiac2d $dev" 300 "$B/apps/drdm_deform" --model cardiac2d --device "$dev" \
      -i "$DATA/acdc/images/patient001_frame01.nii.gz" -l "$DATA/acdc/labels/patient001_frame01.nii.gz" -o "$E/deform2d-$dev" --levels 30,45 --samples 1 --seed 7 \
      --no-progress
    step "deform hippocampus3d $dev" 300 "$B/apps/drdm_deform" --model hippocampus3d --device "$dev" \
      -i "$DATA/hippocampus/images/hippocampus_001.nii.gz" -o "$E/deform3d-$dev" --levels 30 --samples 1 --seed 7 --no-progress
  done
  step "compare deform cpu vs cuda" 120 "$PY" "$ROOT/scripts/compare_manifests.py" \
    "$E/deform2d-cpu/manifest.json" "$E/deform2d-cuda/manifest.json" \
    "$E/deform3d-cpu/manifest.json" "$E/deform3d-cuda/manifest.json"
  # The downstream programs, tiny, on the GPU.
  step "seg_fewshot tiny grid cuda" 300 "$B/apps/seg_fewshot" run --config "$ROOT/configs/seg-acdc-cpu.json" \
    --output "$E/seg" --no-progress --set "data.images=$DATA/acdc/images" "data.labels=$DATA/acdc/labels" \
    "data.size=[64,64]" "data.pool_mod=[1,2]" "data.test_mod=[3,3]" "train.steps=20" "train.warmup_steps=0" "train.batch_size=4" "train.device=cuda" \
    "grid.subjects=[1]" 'grid.augmentations=["none","bigaug","drdm"]'
  cp "$E/seg/results.md" "$OUT/seg_results.md" 2>/dev/null
  step "reg_synth smoke cuda" 300 "$B/apps/reg_synth" run --config "$ROOT/configs/reg-jsrt-cpu.json" \
    --output "$E/reg" --no-progress --set "data.images=$DATA/jsrt/images" "data.labels=$DATA/jsrt/labels" \
    'data.include=["JPCLN00[1-3]*", "JPCNN08[0-2]*"]' "data.size=[64, 64]" "synthetic.mrbs=[[4, 6.4], [8, 3.2]]" \
    data.test_pairs=2 synthetic.pairs_per_image=1 "synthetic.drdm_levels=[[1, 2]]" pretrain.steps=10 \
    finetune.steps=10 pretrain.batch_size=2 finetune.batch_size=2 pretrain.warmup_steps=0 \
    finetune.warmup_steps=0 'pretrain.device="cuda"' 'finetune.device="cuda"'
  cp "$E/reg/results.md" "$OUT/reg_results.md" 2>/dev/null
fi

if [[ " $PARTS " == *" dist "* ]]; then
  D="$WORK/dist"; mkdir -p "$D"
  TR="$(dirname "$PY")/torchrun"; [ -x "$TR" ] || TR=torchrun
  small=(--set "data.folders=[\"$DATA/myops\"]" train.steps=20 train.log_every=5 train.checkpoint_every=10
         train.preview_every=10)
  # One rank with NCCL, launched as users will (issue 13).
  step "nccl 1 rank (torchrun)" 180 "$TR" --no-python --nproc-per-node 1 --master-port 29561 \
    "$B/apps/drdm_train" --config "$ROOT/configs/cardiac2d-paper.json" --output "$D/nccl" --device cuda \
    --no-progress "${small[@]}"
  grep -h "joined a world" "$OUT/log.txt" | tail -1 >> "$SUMMARY"
  # Two ranks sharing the GPU through Gloo (gradients via host memory), by hand.
  pids=()
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29562 DRDM_DIST_BACKEND=gloo \
      timeout 180 "$B/apps/drdm_train" --config "$ROOT/configs/cardiac2d-paper.json" --output "$D/gloo-cuda" \
      --device cuda --no-progress "${small[@]}" > "$D/gloo-cuda-$r.log" 2>&1 &
    pids+=($!)
  done
  t0=$SECONDS; rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  cat "$D"/gloo-cuda-*.log >> "$OUT/log.txt"
  printf '%-34s rc=%-3s %4ss\n' "gloo 2 ranks on one GPU" "$rc" "$((SECONDS - t0))" | tee -a "$SUMMARY"
  tail -n 1 "$D/nccl/metrics.jsonl" "$D/gloo-cuda/metrics.jsonl" >> "$OUT/log.txt" 2>&1
fi

if [[ " $PARTS " == *" bench "* ]]; then
  BO="$WORK/bench"; mkdir -p "$BO"
  ROUNDS="${GPU_CHECK_ROUNDS:-2}"
  for suite in ${GPU_CHECK_BENCH:-spatial train seg reg generate}; do
    case "$suite" in
      spatial) args=(--sizes full --rounds "$ROUNDS") ;;
      train) args=(--reps 5 --warmup 2 --rounds "$ROUNDS") ;;
      seg) args=(--ops unet_step --step-reps 5 --step-warmup 2 --rounds "$ROUNDS") ;;
      reg) args=(--reps 5 --warmup 2 --rounds "$ROUNDS") ;;
      generate) args=(--impls monai) ;;
      *) args=() ;;
    esac
    step "bench $suite cuda" "${GPU_CHECK_BENCH_LIMIT:-150}" "$PY" "$ROOT/bench/run.py" "$suite" --device cuda --threads 8 \
      --python "$PY" --out-dir "$BO" "${args[@]}"
  done
  # Generation with and without CUDA graphs of the recovery step (issue 21).
  for graphs in 0 1; do
    step "bench generate cuda graphs=$graphs" 300 bash -c '"$@" > "$0"' "$BO/generate-graphs-$graphs.jsonl" \
      "$B/bench/drdm_bench_generate" --device cuda --ops generate --level 45 --cuda-graphs "$graphs"
  done
  cat "$BO"/generate-graphs-*.jsonl > "$OUT/generate-graphs.jsonl" 2>/dev/null
  cat "$BO"/*.md > "$OUT/bench.md" 2>/dev/null
fi
echo "work folder: $WORK" >> "$SUMMARY"
grep -c 'rc=0 ' "$SUMMARY" | xargs -I{} echo "{} step(s) passed" | tee -a "$SUMMARY"
! grep -q 'rc=[1-9]' "$SUMMARY"
