#!/usr/bin/env bash
# Makes sure this machine has what BenchmarkStubReadVersus compares
# cascadefs with: s3fs and rclone, from Debian's packages.
set -euo pipefail
missing=()
command -v s3fs >/dev/null 2>&1 || missing+=(s3fs)
command -v rclone >/dev/null 2>&1 || missing+=(rclone)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "need-bench: missing ${missing[*]}; install them from Debian's packages" >&2
    exit 1
  fi
  echo "need-bench: installing ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
