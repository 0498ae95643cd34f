#!/bin/bash
# Where the CPU of a full stub read goes, beside a raw GET of the same object.
# Starts the pinned MinIO and a `cascadefs mount` on loopback, migrates one
# file (default 1 GiB), then twice: drop caches, read the stub with dd bs=1M,
# drop caches, raw minio-go GET, then a `cascadefs recall` with no reader.
# Prints MB/s and CPU seconds per process.
#   sudo scripts/recall-cpu.sh [SIZE_BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-1073741824}
. scripts/lib/bench-mount.sh
head -c "$SIZE" /dev/urandom >"$W/mnt/f"
bin/cascadefs migrate "$W/mnt/f"
KEY=$(bin/cascadefs ls --json "$W/mnt/f" | sed -n 's/.*"object": *"\([^"]*\)".*/\1/p')
for run in 1 2; do
  bin/cascadefs migrate "$W/mnt/f" >/dev/null
  sync; echo 3 >/proc/sys/vm/drop_caches
  m0=$(cpu $MP) d0=$(cpu $DP)
  /usr/bin/time -f "  reader (dd) CPU %U+%S s" dd if="$W/mnt/f" of=/dev/null bs=1M 2>&1 | grep -E "copied|CPU"
  echo "  minio CPU $(echo "$(cpu $MP) - $m0" | bc) s, cascadefs CPU $(echo "$(cpu $DP) - $d0" | bc) s"
  sync; echo 3 >/proc/sys/vm/drop_caches
  m0=$(cpu $MP)
  /usr/bin/time -f "  reader (rawget) CPU %U+%S s" bin/rawget 127.0.0.1:$PORT bench "$KEY"
  echo "  minio CPU $(echo "$(cpu $MP) - $m0" | bc) s"
  # The recall with no reader: what the stub read can reach at most.
  bin/cascadefs migrate "$W/mnt/f" >/dev/null
  sync; echo 3 >/proc/sys/vm/drop_caches
  m0=$(cpu $MP) d0=$(cpu $DP) t0=$(date +%s.%N)
  bin/cascadefs recall "$W/mnt/f" >/dev/null
  echo "recall alone: $(echo "scale=0; $SIZE / 1000000 / ($(date +%s.%N) - $t0)" | bc) MB/s"
  echo "  minio CPU $(echo "$(cpu $MP) - $m0" | bc) s, cascadefs CPU $(echo "$(cpu $DP) - $d0" | bc) s"
done
