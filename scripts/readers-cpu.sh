#!/bin/bash
# Where the CPU of N stubs read at once goes, beside N raw GETs of the
# same objects at once. Starts the pinned MinIO and a `cascadefs mount` on
# loopback, migrates N files (default 8 of 256 MiB), then three times:
# drop caches, read the N stubs with dd bs=1M at once, drop caches, N raw
# minio-go GETs at once. Prints MB/s, CPU seconds and context switches of
# MinIO and the daemon, and keeps the daemon's debug log (every stream,
# split and cut) in $LOG.
#   sudo scripts/readers-cpu.sh                     # 8 x 256 MiB
#   sudo N=1 SIZE=1073741824 scripts/readers-cpu.sh # one reader of 1 GiB
#   sudo BIN=/path/to/old/cascadefs scripts/readers-cpu.sh   # another build's daemon
# The first of the three runs is always the slowest on this machine
# (fresh memory): compare runs 2 and 3.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-268435456}
N=${N:-8}
LOG=${LOG:-/tmp/readers-cpu-daemon.log}
MOUNT_ARGS=(--log-level debug)
KEEP_LOG=$LOG
. scripts/lib/bench-mount.sh
switches() { cat /proc/$1/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
rate() { echo "scale=0; $N * $SIZE / 1000000 / ($(date +%s.%N) - $1)" | bc; }
KEYS=()
for i in $(seq "$N"); do head -c "$SIZE" /dev/urandom >"$W/mnt/f$i"; done
bin/cascadefs migrate "$W"/mnt/f* >/dev/null
for i in $(seq "$N"); do KEYS+=("$(bin/cascadefs ls --json "$W/mnt/f$i" | sed -n 's/.*"object": *"\([^"]*\)".*/\1/p')"); done
for run in 1 2 3; do
  bin/cascadefs migrate "$W"/mnt/f* >/dev/null
  sync; echo 3 >/proc/sys/vm/drop_caches
  m0=$(cpu $MP) d0=$(cpu $DP) ms0=$(switches $MP) ds0=$(switches $DP) t0=$(date +%s.%N)
  pids=()
  for i in $(seq "$N"); do dd if="$W/mnt/f$i" of=/dev/null bs=1M 2>/dev/null & pids+=($!); done
  wait "${pids[@]}"
  echo "run $run: $N stubs $(rate "$t0") MB/s; MinIO $(echo "$(cpu $MP) - $m0" | bc) CPU-s, $(($(switches $MP) - ms0)) switches; daemon $(echo "$(cpu $DP) - $d0" | bc) CPU-s, $(($(switches $DP) - ds0)) switches"
  sync; echo 3 >/proc/sys/vm/drop_caches
  m0=$(cpu $MP) ms0=$(switches $MP) t0=$(date +%s.%N)
  pids=()
  for k in "${KEYS[@]}"; do bin/rawget 127.0.0.1:$PORT bench "$k" >/dev/null & pids+=($!); done
  wait "${pids[@]}"
  echo "run $run: $N raw GETs $(rate "$t0") MB/s; MinIO $(echo "$(cpu $MP) - $m0" | bc) CPU-s, $(($(switches $MP) - ms0)) switches"
done
echo "streams: $(grep -c 'msg="recall stream"' "$W/daemon.log" || true), splits: $(grep -c 'msg="recall stream split"' "$W/daemon.log" || true), cuts: $(grep -c 'msg="recall stream cut"' "$W/daemon.log" || true) (log: $LOG)"
