#!/usr/bin/env bash
# The main job on the embedded default: mount a demo directory with a
# directory archive, migrate a few files, show their state, read them back
# transparently, unmount; mount again with a quota and watch the space
# monitor migrate by itself. Then the same on a cluster of three node
# processes sharing one backing directory and one repository.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/bin/cascadefs
demo=$PWD/demo
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (mounting FUSE with allow_other needs it)" >&2
  exit 1
fi
pid=
nodes=()
cleanup() {
  for p in $pid "${nodes[@]}"; do
    if kill -0 "$p" 2>/dev/null; then kill -TERM "$p"; wait "$p" || true; fi
  done
  for m in "$demo/mnt" "$demo"/cluster/mnt-*/shared; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
}
trap cleanup EXIT
rm -rf "$demo" && mkdir -p "$demo"/{backing,mnt,archive,state,run}
# Users must only use the mount: the backing directories are root's alone.
chmod 700 "$demo"
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
echo "== what the space monitor's policy would pick, in order (nothing is changed)"
"$bin" migrate --dry-run -r "$demo/mnt"
echo "== unmount"
kill -TERM "$pid"; wait "$pid"; pid=

echo
echo "== the space monitor: mount again with a 64 MiB quota (high 70%, low 40%, premigrate 10%)"
"$bin" mount --backing "$demo/backing" --archive "file://$demo/archive" --state-dir "$demo/state" \
  --name demo --quota 64MiB --high 70 --low 40 --interval 1s --premigrate 10 "$demo/mnt" 2>>"$demo/daemon.log" &
pid=$!
for _ in $(seq 100); do [[ -S $demo/run/demo.sock ]] && break; sleep 0.1; done
echo "== 56 MiB of 64 is over the high threshold: the monitor migrates by itself"
for _ in $(seq 50); do grep -q "space monitor cycle" "$demo/daemon.log" && break; sleep 0.2; done
"$bin" ls -r "$demo/mnt"
echo "== a 60 MiB write passes the quota: it waits for a cycle and succeeds"
head -c $((60 << 20)) /dev/urandom > "$demo/mnt/new.bin" && echo "new.bin written"
"$bin" status | sed -n '/space:/,$p'
(cd "$demo/mnt" && sha256sum -c "$demo/sums")
echo "== cascadefs df: files and bytes by state, the archive, usage against the thresholds"
echo "   (reading the files back recalled them past the high threshold: readers are never refused,
   and the recalls woke the monitor)"
"$bin" df "$demo/mnt"
cycles=$(grep -c "space monitor cycle" "$demo/daemon.log")
for _ in $(seq 50); do (( $(grep -c "space monitor cycle" "$demo/daemon.log") > cycles )) && break; sleep 0.2; done
echo "== after the monitor's next cycle"
"$bin" df "$demo/mnt"
kill -TERM "$pid"; wait "$pid"; pid=

echo
echo "== a cluster of three nodes (n1, n2, n3) sharing $demo/cluster/backing"
c=$demo/cluster
mkdir -p "$c"/{backing,archive,repo}
(umask 077; "$bin" keygen > "$c/cluster.key")
"$bin" fs add --repo "$c/repo" shared --backing "$c/backing" --archive "file://$c/archive" \
  --candidates n1,n2,n3 --owner n1
join=
for i in 1 2 3; do
  "$bin" node --name n$i --bind 127.0.0.1:$((7945 + i)) --rpc 127.0.0.1:$((7955 + i)) ${join:+--join $join} \
    --repo "$c/repo" --mount-root "$c/mnt-n$i" --key-file "$c/cluster.key" 2>"$c/n$i.log" &
  nodes+=($!)
  for _ in $(seq 100); do mountpoint -q "$c/mnt-n$i/shared" && break; sleep 0.1; done
  join=127.0.0.1:7946
done
"$bin" status --repo "$c/repo" | sed -n '1,/^$/p'
echo "== write through n1, migrate through n2 (the owner n1 does the work), ls through n3"
head -c $((24 << 20)) /dev/urandom > "$c/mnt-n1/shared/data.bin"
sum=$(sha256sum < "$c/mnt-n1/shared/data.bin")
"$bin" migrate "$c/mnt-n2/shared/data.bin"
"$bin" ls "$c/mnt-n3/shared/data.bin"
echo "== read the stub through n3: n3 sends READ events to n1, which recalls"
sync; echo 3 > /proc/sys/vm/drop_caches
[[ $(sha256sum < "$c/mnt-n3/shared/data.bin") == "$sum" ]] && echo "data.bin: OK through n3"
grep -h "msg=recalled" "$c/n1.log" | sed 's/^/  n1 log: /'
"$bin" ls "$c/mnt-n3/shared/data.bin"
echo "== stop n1: it hands the filesystem over; another node takes it"
kill -TERM "${nodes[0]}"; wait "${nodes[0]}" || true
sleep 1
"$bin" status --repo "$c/repo" | sed -n '1,/^$/p'
for p in "${nodes[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${nodes[@]}"; do wait "$p" 2>/dev/null || true; done
nodes=()
echo "demo done; logs in $demo/daemon.log and $c/n*.log"
