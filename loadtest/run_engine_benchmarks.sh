#!/usr/bin/env bash
# Engine benchmarks side by side with ONNX Runtime, alternating A/B in one run, medians.
#
#   loadtest/run_engine_benchmarks.sh BENCH_DIR [BUILD_DIR]
#
# BENCH_DIR is a copy of ../shared/bench on which `bash make_variants.sh` has run (it
# holds models/ with ORT's own int8 variants and models/io/ with calibration and eval
# inputs). Prints one line per comparison: quantserve median, ORT median, ratio.
set -euo pipefail
bench=${1:?usage: run_engine_benchmarks.sh BENCH_DIR [BUILD_DIR]}
build=${2:-$(cd "$(dirname "$0")/.." && pwd)/build}
qs=$build/loadtest/quantserve-bench
rounds=${ROUNDS:-3}
calib=$(mktemp -d)
trap 'rm -rf "$calib"' EXIT
for m in resnet18 resnet50 mobilenet_v2; do
  mkdir -p "$calib/$m" && cp "$bench/models/io/$m/calib_input.npy" "$calib/$m/input.npy"
done
pair() {  # model precision ort_model batch threads [extra quantserve-bench flags]
  local m=$1 p=$2 o=$3 b=$4 t=$5; shift 5
  echo "== $m $p vs $(basename "$o") batch $b threads $t"
  (cd "$bench" && /usr/bin/python3 paired_bench.py --qs-bench "$qs" --model "models/$m.onnx" \
      --precision "$p" --ort-model "$o" --batch "$b" --threads "$t" --rounds "$rounds" \
      ${1:+"--qs-extra=$*"} | tail -3)
}
if [[ "${SKIP_FP32:-0}" != 1 ]]; then
  for m in resnet50 mobilenet_v2 bert_tiny_like; do
    for b in 1 8; do pair $m fp32 models/$m.onnx $b 2; done
  done
fi
for m in resnet18 resnet50 mobilenet_v2; do
  pair $m int8 models/$m.int8static.onnx 8 2 "--calibration=$calib/$m"
done
pair bert_tiny_like dynamic_range models/bert_tiny_like.int8dyn.onnx 8 2

# quantserve against itself: reduced precision vs FP32 throughput, alternated per round.
self_pair() {  # model batch threads precision [extra]
  local m=$1 b=$2 t=$3 p=$4; shift 4
  local fp=() rp=()
  for ((r = 0; r < rounds; r++)); do
    fp+=("$("$qs" --model "$bench/models/$m.onnx" --batch "$b" --threads "$t" --json \
             --iters 20 | sed 's/.*"throughput":\([0-9.]*\).*/\1/')")
    rp+=("$("$qs" --model "$bench/models/$m.onnx" --batch "$b" --threads "$t" --json \
             --iters 20 --precision "$p" "$@" | sed 's/.*"throughput":\([0-9.]*\).*/\1/')")
  done
  /usr/bin/python3 -c "import statistics,sys; f=statistics.median(map(float,sys.argv[1].split())); r=statistics.median(map(float,sys.argv[2].split())); print('== $m $p vs fp32 batch $b threads $t: %.1f vs %.1f items/s, ratio %.2f' % (r, f, r / f))" "${fp[*]}" "${rp[*]}"
}
self_pair resnet50 8 2 int8 --calibration "$calib/resnet50"
self_pair resnet50 8 2 bf16
self_pair resnet50 8 2 dynamic_range
