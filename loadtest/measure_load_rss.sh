#!/usr/bin/env bash
# Process RSS after loading one model, per precision: one daemon per configuration, its
# repository holding only MODEL (max_batch_size 8, warmup at batch 1 and 8 as the daemon
# does), VmRSS read from /proc once "server ready" is logged.
#
#   loadtest/measure_load_rss.sh MODEL.onnx CALIB_DIR [BUILD_DIR] [PRECISION...]
#
# CALIB_DIR holds <input name>.npy for INT8 calibration. PRECISION defaults to FP32 INT8.
# Prints "PRECISION VmRSS_kB" per line, then the ratio of each to the first.
set -euo pipefail
model=${1:?usage: measure_load_rss.sh MODEL.onnx CALIB_DIR [BUILD_DIR] [PRECISION...]}
calib=$(cd "${2:?CALIB_DIR}" && pwd)
build=${3:-$(cd "$(dirname "$0")/.." && pwd)/build}
shift $(($# < 3 ? $# : 3))
precisions=("$@")
[[ ${#precisions[@]} -gt 0 ]] || precisions=(FP32 INT8)
daemon=$build/server/quantserve
work=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
first=
for p in "${precisions[@]}"; do
  repo=$work/repo_$p
  mkdir -p "$repo/m/1"
  cp "$model" "$repo/m/1/model.onnx"
  cat > "$repo/m/config.pbtxt" <<CFG
name: "m"
max_batch_size: 8
quantization {
  precision: $p
  calibration { data_dir: "$calib" }
}
CFG
  log=$work/log_$p
  "$daemon" --model-repository="$repo" --grpc-port=0 --metrics-port=-1 >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q "server ready" "$log" && break
    kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  grep -q "server ready" "$log" || { echo "timed out waiting for $p" >&2; exit 1; }
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  kill $pid && wait $pid 2>/dev/null || true
  pid=
  first=${first:-$rss}
  echo "$p $rss kB ($(awk -v a="$rss" -v b="$first" 'BEGIN {printf "%.3f", a / b}') x ${precisions[0]})"
done
