#!/usr/bin/env bash
# Makes sure this machine can mount FUSE filesystems: /dev/fuse, and fuse3
# (fusermount3) for mounts by users other than root.
set -euo pipefail
if [[ ! -e /dev/fuse ]]; then
  echo "need-fuse: /dev/fuse is missing; load the fuse module (modprobe fuse)" >&2
  modprobe fuse 2>/dev/null || exit 1
fi
if ! command -v fusermount3 >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "need-fuse: installing fuse3" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null) ||
      echo "need-fuse: could not install fuse3; root mounts work without it" >&2
  else
    echo "need-fuse: fusermount3 missing; only root can mount" >&2
  fi
fi
