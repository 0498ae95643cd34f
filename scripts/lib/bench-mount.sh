# Sourced by the CPU scripts (recall-cpu.sh, readers-cpu.sh): builds what
# they need, starts the pinned MinIO on a loopback port and a `cascadefs
# mount` of a fresh backing directory with an S3 archive on it, and stops
# both (and removes the work directory) on exit.
#   BIN          the daemon's binary (default bin/cascadefs)
#   MOUNT_ARGS   more flags for the mount (an array, may be empty)
#   KEEP_LOG     where to copy the daemon's log on exit (optional)
# Sets W (work directory), PORT, MP and DP (MinIO's and the daemon's pids),
# and defines cpu PID (its CPU seconds so far).
make -s tools build
go build -o bin/rawget ./internal/benchtools/rawget
BIN=${BIN:-bin/cascadefs}
PORT=$((20000 + RANDOM % 10000))
W=$(mktemp -d /tmp/cascadefs-bench.XXXX)
MP= DP=
cleanup() {
  [ -n "$DP" ] && kill "$DP" 2>/dev/null && wait "$DP" 2>/dev/null || true
  [ -n "$MP" ] && kill "$MP" 2>/dev/null && wait "$MP" 2>/dev/null || true
  [ -n "${KEEP_LOG:-}" ] && [ -f "$W/daemon.log" ] && cp "$W/daemon.log" "$KEEP_LOG"
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/minio/bench" "$W/backing" "$W/mnt" "$W/run" && chmod 700 "$W"
export MINIO_ROOT_USER=cascadefs MINIO_ROOT_PASSWORD=cascadefs-secret
export AWS_ACCESS_KEY_ID=$MINIO_ROOT_USER AWS_SECRET_ACCESS_KEY=$MINIO_ROOT_PASSWORD CASCADEFS_RUN_DIR=$W/run
.tools/minio server --quiet --address 127.0.0.1:$PORT "$W/minio" >"$W/minio.log" 2>&1 &
MP=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/minio/health/ready && break; sleep 0.1; done
"$BIN" mount ${MOUNT_ARGS[@]+"${MOUNT_ARGS[@]}"} --backing "$W/backing" --archive "s3://bench?endpoint=127.0.0.1:$PORT&insecure=true" "$W/mnt" >"$W/daemon.log" 2>&1 &
DP=$!
for _ in $(seq 100); do grep -q " $W/mnt " /proc/mounts && break; sleep 0.1; done
cpu() { awk '{printf "%.2f", ($14+$15)/100}' /proc/$1/stat; }
