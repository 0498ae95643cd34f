#!/bin/bash
# A/B: the full read of one stub through two cascadefs binaries on one
# MinIO, alternating, beside a raw GET in each round.
#   scripts/ab-stub-read.sh OLD_BIN NEW_BIN [SIZE] [ROUNDS]   (as root: it drops caches)
# READERS=N reads N stubs of SIZE at once (N raw GETs at once beside them);
# the rates are the aggregate.
# The order of the two alternates by round: the first read after the raw
# GET of the round before runs faster on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 SIZE=${3:-1073741824} ROUNDS=${4:-5} N=${READERS:-1}
go build -o bin/rawget ./internal/benchtools/rawget
PORT=$((20000 + RANDOM % 10000))
W=$(mktemp -d /tmp/cascadefs-ab.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
chmod 700 "$W"
export MINIO_ROOT_USER=cascadefs MINIO_ROOT_PASSWORD=cascadefs-secret
export AWS_ACCESS_KEY_ID=$MINIO_ROOT_USER AWS_SECRET_ACCESS_KEY=$MINIO_ROOT_PASSWORD
mkdir -p "$W/minio/bench-a" "$W/minio/bench-b"
.tools/minio server --quiet --address 127.0.0.1:$PORT "$W/minio" >"$W/minio.log" 2>&1 &
PIDS+=($!); MP=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/minio/health/ready && break; sleep 0.1; done
declare -A DP
for v in a b; do
  bin=$A; [ $v = b ] && bin=$B
  mkdir -p "$W/$v/backing" "$W/$v/mnt" "$W/$v/run"
  CASCADEFS_RUN_DIR=$W/$v/run $bin mount ${DAEMONOPTS:-} --backing "$W/$v/backing" --archive "s3://bench-$v?endpoint=127.0.0.1:$PORT&insecure=true" "$W/$v/mnt" >"$W/$v/daemon.log" 2>&1 &
  PIDS+=($!); DP[$v]=$!
  for _ in $(seq 100); do grep -q " $W/$v/mnt " /proc/mounts && break; sleep 0.1; done
  for i in $(seq "$N"); do head -c "$SIZE" /dev/urandom >"$W/$v/mnt/f$i"; done
  CASCADEFS_RUN_DIR=$W/$v/run $bin migrate "$W/$v"/mnt/f* >/dev/null
done
KEYS=()
for i in $(seq "$N"); do
  KEYS+=("$(CASCADEFS_RUN_DIR=$W/a/run $A ls --json "$W/a/mnt/f$i" | sed -n 's/.*"object": *"\([^"]*\)".*/\1/p')")
done
cpu() { awk '{printf "%.2f", ($14+$15)/100}' /proc/$1/stat; }
# all CMD...: runs CMD ARG for every ARG at once; prints the aggregate MB/s.
all() {
  local cmd=$1 t0 p ps=()
  shift
  t0=$(date +%s.%N)
  for a in "$@"; do $cmd "$a" >/dev/null 2>&1 & ps+=($!); done
  for p in "${ps[@]}"; do wait "$p"; done
  echo "$N * $SIZE / 1000000 / ($(date +%s.%N) - $t0)" | bc
}
readstub() { dd if="$1" of=/dev/null bs=1M; }
rawget() { bin/rawget 127.0.0.1:$PORT bench-a "$1"; }
rawgetb() { bin/rawget 127.0.0.1:$PORT bench-b "$1"; }
KEYSB=()
for i in $(seq "$N"); do
  KEYSB+=("$(CASCADEFS_RUN_DIR=$W/b/run $B ls --json "$W/b/mnt/f$i" | sed -n 's/.*"object": *"\([^"]*\)".*/\1/p')")
done
if [ -n "${FRAG:-}" ]; then
  for v in a b; do echo "$v: $(find "$W/minio/bench-$v" -name 'part.*' -exec filefrag {} + | awk '{n+=$2} END {print n " extents in " NR " part files"}')"; done
fi
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  order="a b"; [ $((r % 2)) = 0 ] && order="b a" # neither is always first
  for v in $order; do
    bin=$A; [ $v = b ] && bin=$B
    CASCADEFS_RUN_DIR=$W/$v/run $bin migrate "$W/$v"/mnt/f* >/dev/null
    sync; echo 3 >/proc/sys/vm/drop_caches
    d0=$(cpu ${DP[$v]}) m0=$(cpu $MP) t0=$(date +%s.%N)
    if [ -n "${PERF:-}" ] && [ "$v$r" = b2 ]; then # a profile of B's daemon in round 2
      perf record -q -F 2000 -g -p "${DP[$v]}" -o "$PERF" 2>/dev/null & pp=$!
      sleep 0.5
    fi
    mb=$(all readstub "$W/$v"/mnt/f*)
    if [ -n "${pp:-}" ]; then kill -INT "$pp"; wait "$pp" || true; pp=; fi
    line="$line $v $mb MB/s ($(echo "$(cpu ${DP[$v]}) - $d0" | bc) s daemon, $(echo "$(cpu $MP) - $m0" | bc) s minio, $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-4) s),"
  done
  sync; echo 3 >/proc/sys/vm/drop_caches
  raw=$(all rawget "${KEYS[@]}")
  line="$line raw $raw MB/s"
  if [ -n "${FRAG:-}" ]; then
    sync; echo 3 >/proc/sys/vm/drop_caches
    line="$line, raw of b's $(all rawgetb "${KEYSB[@]}") MB/s"
  fi
  echo "$line"
done
