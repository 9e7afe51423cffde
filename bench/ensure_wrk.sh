#!/usr/bin/env bash
# Makes sure wrk (the HTTP load generator of bench/ingest.py) is installed: installs Debian's
# package when run as root with apt-get, otherwise says what to install and fails.
set -u

command -v wrk >/dev/null 2>&1 && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure_wrk: installing wrk (apt-get install -y wrk)"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have no package lists yet: update once if the first try fails.
  if apt-get install -y -q wrk >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; then
    command -v wrk >/dev/null 2>&1 && exit 0
  fi
  echo "ensure_wrk: apt-get could not install wrk" >&2
  exit 1
fi

echo "ensure_wrk: bench/ingest.py needs wrk, which is not installed." >&2
echo "Install it (Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install wrk) and rerun." >&2
exit 1
