#!/usr/bin/env bash
# Makes sure this machine has what the tests use from the system: FUSE
# (/dev/fuse, and fuse3's fusermount3 for mounts by users other than root)
# strace (the test that checks the order of syncs and record changes), and
# ip and nsenter (the tests that put nodes in network namespaces), fio
# (make bench: random writes).
set -euo pipefail
if [[ ! -e /dev/fuse ]]; then
  echo "need-system: /dev/fuse is missing; load the fuse module (modprobe fuse)" >&2
  modprobe fuse 2>/dev/null || exit 1
fi
missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v fio >/dev/null 2>&1 || missing+=(fio)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "need-system: installing ${missing[*]}" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) ||
      echo "need-system: could not install ${missing[*]}; the tests that need them fail" >&2
  else
    echo "need-system: missing ${missing[*]}; the tests that need them fail" >&2
  fi
fi
