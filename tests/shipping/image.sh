#!/usr/bin/env bash
# The container image, built and run here. buildah builds the real Containerfile with
# its Rust stage replaced by a directory holding the static binary CI has just built
# (`--build-context build=DIR`: no registry needed), in Docker format (the OCI format
# drops HEALTHCHECK with only a warning). Then the image's configuration is checked
# (user 10001, entrypoint, exposed port, volume, STATE_FILE, the health check), its
# size, and its entrypoint runs in the image's own root filesystem as uid 10001 with
# the image's environment: a real proxied request, --health-check, and the state file
# written to the volume at shutdown. (`podman run` itself cannot run here: the sandbox
# refuses crun's setrlimit.) Needs root (chroot), buildah and python3.
#
# Usage: bash tests/shipping/image.sh target/x86_64-unknown-linux-musl/release/openrouter-proxy
set -euo pipefail
bin=$(readlink -f "${1:?path to the static binary}")
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export STORAGE_DRIVER=vfs
context=$(mktemp -d)
tag="localhost/openrouter-proxy-check:$$"
container=""
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true
  if [ -n "$container" ]; then buildah umount "$container" >/dev/null 2>&1 || true; buildah rm "$container" >/dev/null 2>&1 || true; fi
  buildah rmi "$tag" >/dev/null 2>&1 || true
  rm -rf "$context"
}
trap cleanup EXIT
source "$here/port_from.sh"
chroot=$(command -v chroot)

mkdir -p "$context/out/data"
cp "$bin" "$context/out/openrouter-proxy"
buildah bud --quiet --isolation chroot --format docker --build-context build="$context" \
  -f "$repo/Containerfile" -t "$tag" "$repo" >/dev/null
echo "image built: $tag"

buildah inspect --type image "$tag" | python3 -c '
import json, sys
config = json.load(sys.stdin)["Docker"]["config"]
env = dict(e.split("=", 1) for e in config["Env"])
checks = {
    "runs as uid 10001": config["User"] == "10001:10001",
    "the entrypoint is the binary": config["Entrypoint"] == ["/openrouter-proxy"],
    "port 9999 exposed": "9999/tcp" in config["ExposedPorts"],
    "/data is a volume": "/data" in config["Volumes"],
    "STATE_FILE on the volume": env.get("STATE_FILE") == "/data/state.json",
    "listens on every interface, port 9999": (env.get("UVICORN_HOST"), env.get("UVICORN_PORT")) == ("0.0.0.0", "9999"),
    "the health check runs --health-check": (config.get("Healthcheck") or {}).get("Test") == ["CMD", "/openrouter-proxy", "--health-check"],
}
failed = [name for name, ok in checks.items() if not ok]
for name in checks:
    print(("FAIL: " if name in failed else "image: ") + name)
sys.exit(1 if failed else 0)
'
buildah inspect --type image "$tag" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["Docker"]["config"]["Env"]:
    name, value = e.split("=", 1)
    if name != "PATH":
        print(f"{name}={value}")
' >"$context/env"

container=$(buildah from "$tag")
root=$(buildah mount "$container")
size=$(du -sb "$root" | cut -f1)
echo "image root filesystem: $size bytes: $(cd "$root" && find . -mindepth 1 | tr '\n' ' ')"
[ "$size" -le $((10 * 1024 * 1024)) ] || { echo "FAIL: the image is over 10 MiB"; exit 1; }
[ "$(stat -c %u "$root/data")" = 10001 ] || { echo "FAIL: /data is not owned by uid 10001"; exit 1; }

python3 "$here/mock_openrouter.py" 0 >"$context/mock.out" &
pids+=($!)
mock_port=$(port_from "$context/mock.out" "ready ")
proxy_key=image-proxy-key-1234
or_key=sk-or-v1-image00000000000000000000000000000000cd34
# The image's environment, with two changes for this check: loopback and a port the OS
# picks (tests never listen beyond loopback), and the mock upstream (and the time zone
# the smoke checks expect).
env -i $(cat "$context/env") UVICORN_HOST=127.0.0.1 UVICORN_PORT=0 SHUTDOWN_GRACE=2 \
  PROXY_API_KEY="$proxy_key" OPENROUTER_KEYS="$or_key:1000" TIMEZONE=Europe/Moscow \
  OPENROUTER_BASE_URL="http://127.0.0.1:$mock_port/api/v1" \
  "$chroot" --userspec=10001:10001 "$root" /openrouter-proxy 2>"$context/proxy.log" &
proxy_pid=$!
pids+=($proxy_pid)
proxy_port=$(port_from "$context/proxy.log" "listening on 127.0.0.1:") || { echo "FAIL: the image's entrypoint did not start"; cat "$context/proxy.log"; exit 1; }
env -i UVICORN_PORT="$proxy_port" "$chroot" --userspec=10001:10001 "$root" /openrouter-proxy --health-check \
  || { echo "FAIL: --health-check in the image"; cat "$context/proxy.log"; exit 1; }
echo "image: --health-check as uid 10001: ok"
python3 "$here/smoke.py" "$proxy_port" "$mock_port" "$proxy_key" "$or_key"
kill -TERM "$proxy_pid"; wait "$proxy_pid" || true
[ -s "$root/data/state.json" ] || { echo "FAIL: no state file on the volume after shutdown"; cat "$context/proxy.log"; exit 1; }
echo "image: state file written to /data as uid 10001: ok"
