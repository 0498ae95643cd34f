#!/bin/bash
# A/B: the full read of one stub through two cascadefs binaries on one
# MinIO, alternating, beside a raw GET in each round.
#   scripts/ab-stub-read.sh OLD_BIN NEW_BIN [SIZE] [ROUNDS]   (as root: it drops caches)
# The order of the two alternates by round: the first read after the raw
# GET of the round before runs faster on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 SIZE=${3:-1073741824} ROUNDS=${4:-5}
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
PIDS+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/minio/health/ready && break; sleep 0.1; done
declare -A DP
for v in a b; do
  bin=$A; [ $v = b ] && bin=$B
  mkdir -p "$W/$v/backing" "$W/$v/mnt" "$W/$v/run"
  CASCADEFS_RUN_DIR=$W/$v/run $bin mount ${DAEMONOPTS:-} --backing "$W/$v/backing" --archive "s3://bench-$v?endpoint=127.0.0.1:$PORT&insecure=true" "$W/$v/mnt" >"$W/$v/daemon.log" 2>&1 &
  PIDS+=($!); DP[$v]=$!
  for _ in $(seq 100); do grep -q " $W/$v/mnt " /proc/mounts && break; sleep 0.1; done
  head -c "$SIZE" /dev/urandom >"$W/$v/mnt/f"
  CASCADEFS_RUN_DIR=$W/$v/run $bin migrate "$W/$v/mnt/f" >/dev/null
done
KEY=$(CASCADEFS_RUN_DIR=$W/a/run $A ls --json "$W/a/mnt/f" | sed -n 's/.*"object": *"\([^"]*\)".*/\1/p')
cpu() { awk '{printf "%.2f", ($14+$15)/100}' /proc/$1/stat; }
rate() { dd if="$1" of=/dev/null bs=1M 2>&1 | sed -n 's/.*copied, \([0-9.]*\) s.*/\1/p' | awk -v s="$SIZE" '{printf "%.0f", s/$1/1e6}'; }
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  order="a b"; [ $((r % 2)) = 0 ] && order="b a" # neither is always first
  for v in $order; do
    bin=$A; [ $v = b ] && bin=$B
    CASCADEFS_RUN_DIR=$W/$v/run $bin migrate "$W/$v/mnt/f" >/dev/null
    sync; echo 3 >/proc/sys/vm/drop_caches
    d0=$(cpu ${DP[$v]})
    mb=$(rate "$W/$v/mnt/f")
    line="$line $v $mb MB/s ($(echo "$(cpu ${DP[$v]}) - $d0" | bc) s daemon),"
  done
  sync; echo 3 >/proc/sys/vm/drop_caches
  raw=$(bin/rawget 127.0.0.1:$PORT bench-a "$KEY" | sed -n 's/.*, \([0-9]*\) MB\/s/\1/p')
  echo "$line raw $raw MB/s"
done
