#!/usr/bin/env bash
# Builds docker/Dockerfile with podman (or docker), runs the image on 127.0.0.1 with
# published ports, waits for grpc.health.v1 SERVING, sends inference to digits_mlp,
# scrapes /metrics, checks the container's user, HEALTHCHECK, CPU quota and that the
# runtime stage has no compiler, then stops it with SIGTERM and expects exit status 0.
#
# Usage: tests/deploy/container_test.sh [--probe-binary PATH] [--load-binary PATH]
# Environment:
#   QS_CONTAINER_TEST=1     required: the image build installs the Debian packages and
#                           compiles the whole tree inside the container (measured on 2
#                           cores: 4-7 min, plus ~1 min for the base image the first time;
#                           ~3 GB of disk), so the test is opt-in; without it the script
#                           exits 77 (ctest: skipped).
#   QS_CONTAINER_ENGINE     podman | docker (default: the first that works).
#   QS_IMAGE                tag to build (default localhost/quantserve:container-test).
#   QS_BUILD_JOBS           parallel compile jobs inside the build stage (default nproc).
#   QS_KEEP_IMAGES=0        remove the built image afterwards (default: keep, so that a
#                           re-run reuses the cached layers).
# Exit status: 0 pass, 1 fail, 77 skip (not opted in, or no usable container engine).
#
# Without a registry (these machines have none), debian:bookworm-slim is made locally:
# `debootstrap --variant=minbase bookworm`, trimmed like Debian's slim images, and
# `podman import`ed under that name; the Dockerfile itself is built unchanged.
# podman here needs the runc runtime (crun rejects the hybrid cgroup layout) and
# default ulimits no higher than the sandbox's hard limits: those settings go into a
# temporary containers.conf (CONTAINERS_CONF) of this script only.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/../.." && pwd)"
probe_bin="$src/build/server/quantserve"
load_bin="$src/build/loadtest/quantserve-load"
while (($#)); do
  case "$1" in
    --probe-binary) probe_bin="$2"; shift 2 ;;
    --load-binary) load_bin="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "container_test: $*"; }
skip() { log "SKIP: $*"; exit 77; }
fail() { log "FAIL: $*"; exit 1; }

if [[ "${QS_CONTAINER_TEST:-0}" != 1 ]]; then
  skip "opt-in: set QS_CONTAINER_TEST=1 (builds the image: several minutes, ~3 GB of disk)"
fi

work="$(mktemp -d /var/tmp/qs-container-test.XXXXXX)"
engine=""
ctr="qs-container-test-$$"
image="${QS_IMAGE:-localhost/quantserve:container-test}"
cleanup() {
  if [[ -n "$engine" ]]; then
    "$engine" rm -f "$ctr" >/dev/null 2>&1
    if [[ "${QS_KEEP_IMAGES:-1}" == 0 ]]; then
      "$engine" rmi -f "$image" "${image%:*}-build:${image##*:}" >/dev/null 2>&1
      "$engine" image prune -f > /dev/null 2>&1
    fi
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- the engine ----------------------------------------------------------------------
podman_conf() {
  # runc when installed; ulimits: the first set that this sandbox lets a container use.
  local runtime="" hn hu
  command -v runc >/dev/null && runtime='runtime = "runc"'
  hn="$(ulimit -Hn)"; hu="$(ulimit -Hu)"
  [[ "$hn" == unlimited ]] && hn=1048576
  [[ "$hu" == unlimited ]] && hu=32768
  ((hn > 1048576)) && hn=1048576
  ((hu > 32768)) && hu=32768
  local candidates=("\"nofile=$hn:$hn\", \"nproc=$hu:$hu\""
                    "\"nofile=$hn:$hn\", \"nproc=4096:4096\""
                    "\"nofile=1024:1024\", \"nproc=1024:1024\"")
  local c
  for c in "${candidates[@]}"; do
    printf '[containers]\ndefault_ulimits = [%s]\n\n[engine]\n%s\n' "$c" "$runtime" \
      > "$work/containers.conf"
    export CONTAINERS_CONF="$work/containers.conf"
    # Any image will do for the test run; without one, keep the first candidate.
    local any
    any="$(podman images -q 2>/dev/null | head -1)"
    [[ -z "$any" ]] && return 0
    if podman run --rm --entrypoint /bin/true "$any" >/dev/null 2>&1 ||
       podman run --rm --entrypoint true "$any" >/dev/null 2>&1; then
      return 0
    fi
  done
  return 0
}

pick_engine() {
  local want="${QS_CONTAINER_ENGINE:-}"
  if [[ -z "$want" || "$want" == podman ]] && command -v podman >/dev/null; then
    if podman info >/dev/null 2>&1; then
      engine=podman
      podman_conf
      return 0
    fi
  fi
  if [[ -z "$want" || "$want" == docker ]] && command -v docker >/dev/null; then
    if docker info >/dev/null 2>&1; then
      engine=docker
      return 0
    fi
  fi
  return 1
}
pick_engine || skip "neither podman nor docker can run containers here"
log "engine: $engine ($("$engine" --version 2>/dev/null))"
[[ -n "${CONTAINERS_CONF:-}" ]] && log "containers.conf: $(tr '\n' ' ' < "$CONTAINERS_CONF")"

# ---- the base image ------------------------------------------------------------------
base="debian:bookworm-slim"
have_image() {
  if [[ "$engine" == podman ]]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}
make_base_locally() {
  command -v debootstrap >/dev/null || return 1
  [[ $(id -u) -eq 0 ]] || return 1
  local root="$work/rootfs"
  log "debootstrap --variant=minbase bookworm (no registry reachable)"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; return 1; }
  # What Debian's slim images leave out (docs, man pages, locales), and their apt sources.
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null
  rm -rf "$root"/usr/share/{man,groff,info,lintian,linda}/* 2>/dev/null
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} + 2>/dev/null
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/cache/debconf/*-old "$root"/tmp/* 2>/dev/null
  tar -C "$root" --numeric-owner -c . |
    "$engine" import --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase bookworm (tests/deploy/container_test.sh)" \
      - docker.io/library/debian:bookworm-slim > "$work/import.log" 2>&1 ||
    { cat "$work/import.log"; return 1; }
  rm -rf "$root"
}
if ! have_image "$base"; then
  if ! timeout 120 "$engine" pull "$base" > "$work/pull.log" 2>&1; then
    log "cannot pull $base: $(tail -1 "$work/pull.log")"
    make_base_locally || skip "no $base: cannot pull it and cannot debootstrap it here"
  fi
fi
[[ "$engine" == podman ]] && podman_conf   # now there is an image to try the ulimits on
log "base image: $base ($("$engine" image inspect --format '{{.Id}}' "$base" | cut -c1-19))"

# ---- build ---------------------------------------------------------------------------
# A snapshot of the build context, so that both builds below see the same sources even
# while the work tree changes (the Dockerfile COPYs these; build/ stays out).
ctx="$work/context"
mkdir -p "$ctx"
for p in CMakeLists.txt protos engine server loadtest tests tools config scripts docker; do
  cp -a "$src/$p" "$ctx/" || fail "cannot copy $p into the build context"
done
build_args=(build -f "$ctx/docker/Dockerfile" -t "$image")
[[ "$engine" == podman ]] && build_args+=(--format docker)   # keeps HEALTHCHECK
[[ -n "${QS_BUILD_JOBS:-}" ]] && build_args+=(--build-arg "JOBS=$QS_BUILD_JOBS")
build_failed() {
  tail -60 "$work/build.log"
  cp "$work/build.log" /var/tmp/qs-container-test-build.log 2>/dev/null &&
    log "full log kept in /var/tmp/qs-container-test-build.log"
  fail "image build failed"
}
log "building $image (log: $work/build.log)"
t0=$(date +%s)
# The build stage first, under its own tag (${image%:*}-build): the runtime build below
# reuses it from the cache, and the previous run's stages become dangling and are pruned,
# so repeated runs keep one build stage (~1.5 GB) instead of one per run.
stage_image="${image%:*}-build:${image##*:}"
stage_args=("${build_args[@]}")
stage_args[4]="$stage_image"   # build -f FILE -t IMAGE ...
"$engine" "${stage_args[@]}" --target build "$ctx" > "$work/build.log" 2>&1 || build_failed
"$engine" "${build_args[@]}" "$ctx" >> "$work/build.log" 2>&1 || build_failed
log "built in $(($(date +%s) - t0)) s"
"$engine" image prune -f > /dev/null 2>&1
grep -E 'tests passed|Total Test time' "$work/build.log" | sed 's/^/container_test: build stage: /'
size=$("$engine" image inspect --format '{{.Size}}' "$image")
log "image size: $size bytes ($((size / 1000000)) MB)"

# ---- static checks on the image ------------------------------------------------------
user=$("$engine" image inspect --format '{{.Config.User}}' "$image")
[[ -n "$user" && "$user" != root && "$user" != 0 && "$user" != 0:0 ]] ||
  fail "image runs as '$user', want a non-root user"
health=$("$engine" image inspect --format '{{json .Config.Healthcheck}}' "$image")
[[ "$health" == *--probe=127.0.0.1:8001* ]] || fail "no HEALTHCHECK with --probe: $health"
entry=$("$engine" image inspect --format '{{json .Config.Entrypoint}}' "$image")
[[ "$entry" == *--model-repository=/models* ]] || fail "entrypoint $entry"
tools=$("$engine" run --rm --no-healthcheck --entrypoint /bin/sh "$image" -c \
  'for t in cc gcc g++ c++ clang cmake make ld as python3; do command -v $t; done; id -u' \
  2> "$work/tools.err") || { cat "$work/tools.err"; fail "cannot run a shell in the image"; }
uid=$(echo "$tools" | tail -1)
others=$(echo "$tools" | sed '$d')
[[ -z "$others" ]] || fail "runtime image carries build tools: $others"
[[ "$uid" != 0 ]] || fail "runs as uid 0"
log "user $user (uid $uid), HEALTHCHECK $health, no compiler/cmake/python in the runtime stage"

# ---- run -----------------------------------------------------------------------------
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gport=$(free_port); mport=$(free_port)
while [[ "$mport" == "$gport" ]]; do mport=$(free_port); done
run_args=(run -d --name "$ctr" -p "127.0.0.1:$gport:8001" -p "127.0.0.1:$mport:8002"
          --read-only --tmpfs /tmp --cpus 1 --stop-timeout 45)
# (podman without systemd logs that it cannot schedule the HEALTHCHECK timer; the
# check itself runs below with `podman healthcheck run`.)
"$engine" "${run_args[@]}" "$image" --exit-timeout-secs=30 > /dev/null 2> "$work/run.err" ||
  { cat "$work/run.err"; fail "$engine run failed"; }
log "running $ctr: gRPC 127.0.0.1:$gport, metrics 127.0.0.1:$mport"

probe() {
  if [[ -x "$probe_bin" ]]; then
    "$probe_bin" --probe="127.0.0.1:$gport" > /dev/null 2>&1
  else
    "$engine" exec "$ctr" /usr/local/bin/quantserve --probe=127.0.0.1:8001 > /dev/null 2>&1
  fi
}
served=0
for _ in $(seq 1 120); do
  if probe; then served=1; break; fi
  [[ "$("$engine" inspect --format '{{.State.Running}}' "$ctr")" == true ]] || break
  sleep 0.5
done
if ((served == 0)); then
  "$engine" logs "$ctr" 2>&1 | tail -30
  fail "no SERVING answer on 127.0.0.1:$gport"
fi
log "health SERVING through the published port ($([[ -x $probe_bin ]] && echo "host $probe_bin --probe" || echo "in-container probe"))"
# The daemon answers health while models load; wait for "server ready" before traffic.
for _ in $(seq 1 120); do
  "$engine" logs "$ctr" 2>&1 | grep -q 'server ready' && break
  sleep 0.5
done
"$engine" logs "$ctr" 2>&1 | grep -q 'server ready' || fail "models never became ready"

if [[ "$engine" == podman ]]; then
  podman healthcheck run "$ctr" > /dev/null 2>&1 || fail "podman healthcheck run: unhealthy"
  log "image HEALTHCHECK (quantserve --probe inside the container): healthy"
fi

# The CPU quota the daemon reads (cgroup v2 cpu.max, or v1 cfs_quota_us) from inside.
quota=$("$engine" exec "$ctr" /bin/sh -c \
  'cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"' 2>&1)
log "cgroup CPU quota seen in the container (--cpus 1): $quota"
case "$quota" in
  "100000 100000" | "50000 50000") ;;
  *) fail "expected a 1-CPU quota inside the container, got '$quota'" ;;
esac

# ---- inference -----------------------------------------------------------------------
if [[ -x "$load_bin" ]]; then
  "$load_bin" --address="127.0.0.1:$gport" --model=digits_mlp --concurrency=2 \
    --warmup_secs=0 --window_secs=1 --max_windows=2 > "$work/load.txt" 2>&1 ||
    { cat "$work/load.txt"; fail "quantserve-load against the container failed"; }
  log "quantserve-load against the container:"
  grep -A2 -E '^ *conc ' "$work/load.txt" | sed 's/^/    /'
  # Columns: conc ch thr req/s infer/s avg p50 p90 p95 p99 p99.9 errors ...
  grep -E '^ *[0-9]' "$work/load.txt" | awk '$12 != 0 || $4 <= 0 { bad = 1 } END { exit bad }' ||
    fail "quantserve-load: errors or no throughput"
else
  # A tiny ModelInfer with python3-grpcio and the repository's protos.
  /usr/bin/python3 - "$gport" "$src/protos" "$work" <<'EOF' || fail "python inference failed"
import subprocess, sys, struct
port, protos, out = sys.argv[1:]
subprocess.check_call([sys.executable, "-m", "grpc_tools.protoc", "-I", protos,
                       f"--python_out={out}", f"--grpc_python_out={out}",
                       f"{protos}/grpc_service.proto"])
sys.path.insert(0, out)
import grpc, grpc_service_pb2 as pb, grpc_service_pb2_grpc as rpc
stub = rpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
req = pb.ModelInferRequest(model_name="digits_mlp")
t = req.inputs.add(name="input", datatype="FP32", shape=[1, 64])
req.raw_input_contents.append(struct.pack("<64f", *([0.5] * 64)))
resp = stub.ModelInfer(req, timeout=10)
probs = struct.unpack("<10f", resp.raw_output_contents[0])
assert abs(sum(probs) - 1) < 1e-3, probs
print("container_test: ModelInfer digits_mlp ->", [round(p, 3) for p in probs])
EOF
fi

# ---- metrics -------------------------------------------------------------------------
/usr/bin/python3 - "$mport" <<'EOF' || fail "/metrics did not count the inference"
import re, sys, urllib.request
page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
ok = 0.0
for line in page.splitlines():
    m = re.match(r'quantserve_requests_total\{([^}]*)\} (\S+)', line)
    if m and 'model="digits_mlp"' in m.group(1) and 'outcome="success"' in m.group(1):
        ok += float(m.group(2))
assert ok > 0, "no successful digits_mlp requests in /metrics"
assert "quantserve_pending_requests" in page, "quantserve_pending_requests missing"
print(f"container_test: /metrics: {ok:.0f} successful digits_mlp requests, "
      f"{len(page.splitlines())} lines")
EOF

# ---- stop: SIGTERM, drain, exit 0 ----------------------------------------------------
t0=$(date +%s)
"$engine" stop -t 45 "$ctr" > /dev/null 2> "$work/stop.err" ||
  { cat "$work/stop.err"; fail "$engine stop failed"; }
code=$("$engine" inspect --format '{{.State.ExitCode}}' "$ctr")
logs=$("$engine" logs "$ctr" 2>&1)
echo "$logs" | grep -q 'received SIGTERM' || { echo "$logs" | tail; fail "no SIGTERM in the log"; }
[[ "$code" == 0 ]] || { echo "$logs" | tail; fail "exit status $code after SIGTERM"; }
log "stopped with SIGTERM in $(($(date +%s) - t0)) s, exit status 0"
log "PASS"
exit 0
