#!/usr/bin/env bash
# Serving benchmarks (the Serving issue's ratios), each measured in one run against a
# baseline of the same server and client:
#  1. concurrency 1, tiny model: ModelInfer p50 minus the engine's own time vs ServerLive p50;
#  2. concurrency 64, tiny model: ModelInfer throughput vs ServerLive throughput;
#  3. ResNet-18 with dynamic batching at concurrency 16 vs quantserve-bench's offline
#     batch-16 throughput (p99 reported).
#   loadtest/run_serving_benchmarks.sh [BUILD_DIR]
# Needs the test fixtures (ctest builds them): BUILD_DIR/test_repo and engine_models.
set -euo pipefail
build=${1:-$(cd "$(dirname "$0")/.." && pwd)/build}
load=$build/loadtest/quantserve-load
bench=$build/loadtest/quantserve-bench
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

mkdir -p "$work/repo/tiny/1" "$work/repo/resnet18/1"
cp "$build/test_repo/tiny/2/model.onnx" "$work/repo/tiny/1/model.onnx"
cp "$build/engine_models/resnet18/model.onnx" "$work/repo/resnet18/1/model.onnx"
cat > "$work/repo/resnet18/config.pbtxt" <<'CFG'
max_batch_size: 16
dynamic_batching { preferred_batch_size: [ 16 ] max_queue_delay_microseconds: 5000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
CFG
"$build/server/quantserve" --model-repository="$work/repo" --grpc-address=127.0.0.1 \
  --grpc-port=0 --metrics-port=-1 2> "$work/log" &
pid=$!
until grep -q "server ready" "$work/log"; do
  kill -0 $pid || { cat "$work/log"; exit 1; }
  sleep 0.2
done
addr=127.0.0.1:$(sed -n 's/.*gRPC listening on [0-9.]*:\([0-9]*\).*/\1/p' "$work/log" | head -1)
common=(--address "$addr" --warmup_secs 2 --window_secs 3 --max_windows 5)
field() { /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); r=d['levels'][0] if 'levels' in d else d[0]; print(r[sys.argv[2]])" "$1" "$2"; }

# 1 + 2: tiny model vs ServerLive, alternated three times.
for round in 1 2 3; do
  for rpc in live infer; do
    for c in 1 64; do
      "$load" "${common[@]}" --rpc $rpc --model tiny --concurrency $c --json "$work/$rpc-$c-$round.json" > /dev/null
    done
  done
done
"$bench" --model "$work/repo/tiny/1/model.onnx" --batch 1 --threads 2 --iters 2000 --json > "$work/engine.json"
/usr/bin/python3 - "$work" <<'PY'
import json, statistics, sys, glob
w = sys.argv[1]
def lvl(f):
    d = json.load(open(f)); return d["levels"][0] if isinstance(d, dict) and "levels" in d else d[0]
def med(rpc, c, key):
    return statistics.median(lvl(f)[key] for f in glob.glob(f"{w}/{rpc}-{c}-*.json"))
engine_us = json.load(open(f"{w}/engine.json"))["median_ms"] * 1000
def med_lat(rpc, c, key):
    return statistics.median(lvl(f)["latency_us"][key] for f in glob.glob(f"{w}/{rpc}-{c}-*.json"))
li, ii = med_lat("live", 1, "p50"), med_lat("infer", 1, "p50")
print(f"c=1 tiny: ModelInfer p50 {ii:.1f} us, engine {engine_us:.1f} us, ServerLive p50 {li:.1f} us: "
      f"infer - engine - live = {ii - engine_us - li:+.1f} us (goal <= +25)")
lt, it = med("live", 64, "throughput_rps"), med("infer", 64, "throughput_rps")
print(f"c=64 tiny: ModelInfer {it:.0f} req/s vs ServerLive {lt:.0f} req/s = {it / lt:.2f} (goal >= 0.50)")
PY

# 3: ResNet-18 dynamic batching at concurrency 16 vs offline batch 16.
"$load" "${common[@]}" --rpc infer --model resnet18 --concurrency 16 --json "$work/r18.json" > /dev/null
"$bench" --model "$work/repo/resnet18/1/model.onnx" --batch 16 --threads 2 --iters 10 --json > "$work/r18-offline.json"
/usr/bin/python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
d = json.load(open(f"{w}/r18.json")); l = d["levels"][0] if isinstance(d, dict) and "levels" in d else d[0]
off = json.load(open(f"{w}/r18-offline.json"))["throughput"]
print(f"ResNet-18 c=16 dynamic batching: {l['inferences_per_s']:.1f} img/s, p99 {l['latency_us']['p99']/1000:.1f} ms; "
      f"offline batch 16: {off:.1f} img/s; ratio {l['inferences_per_s']/off:.2f} (goal >= 0.90)")
PY
