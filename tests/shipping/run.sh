#!/usr/bin/env bash
# Proves what a FROM scratch container gives the static binary: it runs in an
# empty root directory holding nothing but itself (no libc, no CA files, no
# zoneinfo), serves /health, proxies to a mock upstream on loopback, reports
# /key_status in TIMEZONE=Europe/Moscow, answers --health-check, and works with
# the OpenAI Python SDK (a completion and a stream). Needs root (chroot) and python3
# with the openai package.
#
# A binary for another architecture runs under a static user-mode emulator given as
# the second argument (qemu-aarch64-static), copied into the root beside it.
#
# Usage: bash tests/shipping/run.sh target/x86_64-unknown-linux-musl/release/openrouter-proxy
#        bash tests/shipping/run.sh target/aarch64-unknown-linux-musl/release/openrouter-proxy "$(command -v qemu-aarch64-static)"
set -euo pipefail
bin=$(readlink -f "${1:?path to the static binary}")
emulator=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
pids=()
# Wait for the proxy to finish its shutdown (it writes its state file) before removing its root.
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$root" "$root.log"; }
trap cleanup EXIT

chroot=$(command -v chroot)
source "$here/port_from.sh"

# A dynamic executable names its loader in a PT_INTERP program header; a static one has none.
if readelf -l "$bin" | grep -q INTERP; then
  echo "FAIL: $bin is dynamically linked"; readelf -l "$bin" | grep -A1 INTERP; exit 1
fi
cp "$bin" "$root/openrouter-proxy"
run=(/openrouter-proxy)
if [ -n "$emulator" ]; then
  cp "$(readlink -f "$emulator")" "$root/emulator"
  run=(/emulator /openrouter-proxy)
fi
echo "root directory holds: $(cd "$root" && find . -mindepth 1 | tr '\n' ' ')"

# Both the mock and the proxy bind port 0 and say which port they got: no port is
# picked here and handed over, so no other process can take it in between.
python3 "$here/mock_openrouter.py" 0 >"$root.mock" &
pids+=($!)
mock_port=$(port_from "$root.mock" "ready ")
proxy_key=scratch-proxy-key-1234
or_key=sk-or-v1-scratch0000000000000000000000000000ab12
env -i PROXY_API_KEY="$proxy_key" OPENROUTER_KEYS="$or_key:1000" TIMEZONE=Europe/Moscow SHUTDOWN_GRACE=2 \
  OPENROUTER_BASE_URL="http://127.0.0.1:$mock_port/api/v1" UVICORN_HOST=127.0.0.1 UVICORN_PORT=0 \
  "$chroot" "$root" "${run[@]}" 2>"$root.log" &
proxy_pid=$!
pids+=($proxy_pid)
proxy_port=$(port_from "$root.log" "listening on 127.0.0.1:") || { echo "FAIL: the proxy did not start"; cat "$root.log"; exit 1; }

for _ in $(seq 100); do
  if env -i UVICORN_PORT="$proxy_port" "$chroot" "$root" "${run[@]}" --health-check 2>/dev/null; then break; fi
  sleep 0.1
done
env -i UVICORN_PORT="$proxy_port" "$chroot" "$root" "${run[@]}" --health-check || { echo "FAIL: --health-check"; cat "$root.log"; exit 1; }
echo "--health-check inside the empty root${emulator:+ (under $(basename "$emulator"))}: ok"
size=$(stat -c %s "$bin")
echo "static binary: $size bytes; idle RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$proxy_pid/status)"
# The shipped binary stays small enough for a scratch image (Redis client and all).
[ "$size" -le $((10 * 1024 * 1024)) ] || { echo "FAIL: the static binary is over 10 MiB"; exit 1; }

python3 "$here/smoke.py" "$proxy_port" "$mock_port" "$proxy_key" "$or_key"
python3 "$here/test_openai_sdk.py" "http://127.0.0.1:$proxy_port/api/v1" "$proxy_key"
if grep -q "scratch0000000000000000000000000000ab12" "$root.log"; then
  echo "FAIL: the OpenRouter key appears in the log"; exit 1
fi
rm -f "$root.log"
