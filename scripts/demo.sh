#!/usr/bin/env bash
# The main job on the embedded default: mount a demo directory with a
# directory archive, migrate a few files, show their state, read them back
# transparently, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/bin/cascadefs
demo=$PWD/demo
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (mounting FUSE with allow_other needs it)" >&2
  exit 1
fi
pid=
cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"; wait "$pid" || true
  fi
  mountpoint -q "$demo/mnt" 2>/dev/null && umount -l "$demo/mnt" || true
}
trap cleanup EXIT
rm -rf "$demo" && mkdir -p "$demo"/{backing,mnt,archive,state,run}
export CASCADEFS_RUN_DIR=$demo/run

echo "== mount $demo/backing at $demo/mnt, archive file://$demo/archive"
"$bin" mount --backing "$demo/backing" --archive "file://$demo/archive" --state-dir "$demo/state" \
  --name demo "$demo/mnt" 2>"$demo/daemon.log" &
pid=$!
for _ in $(seq 100); do [[ -S $demo/run/demo.sock ]] && break; sleep 0.1; done

echo "== write three files through the mount"
mkdir "$demo/mnt/docs"
echo "hello from cascadefs" > "$demo/mnt/docs/hello.txt"
head -c $((8 << 20)) /dev/urandom > "$demo/mnt/docs/photo.raw"
head -c $((48 << 20)) /dev/urandom > "$demo/mnt/video.bin"
(cd "$demo/mnt" && sha256sum docs/hello.txt docs/photo.raw video.bin) > "$demo/sums"

echo "== cascadefs migrate -r $demo/mnt"
"$bin" migrate -r "$demo/mnt"
echo "== cascadefs ls -r (stubs keep their size; their data is in the archive)"
"$bin" ls -r "$demo/mnt"
echo "== du of the backing directory: $(du -sh "$demo/backing" | cut -f1)"

echo "== read everything back through the mount (recalled transparently)"
sync; echo 3 > /proc/sys/vm/drop_caches
(cd "$demo/mnt" && sha256sum -c "$demo/sums")
"$bin" ls -r "$demo/mnt"
"$bin" status
echo "== unmount"
kill -TERM "$pid"; wait "$pid"; pid=
echo "demo done; daemon log in $demo/daemon.log"
