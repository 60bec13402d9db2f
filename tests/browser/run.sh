#!/usr/bin/env bash
# The status page in a real browser: headless Chromium loads /status from the
# proxy (keys in three states, against the mock upstream) and the rendered DOM
# must show every key, the blocked key's countdown, and no full key anywhere.
#
# Usage: bash tests/browser/run.sh <proxy binary> [screenshot.png]
set -euo pipefail
bin=$(readlink -f "${1:?path to the proxy binary}")
shot=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
source "$here/../shipping/port_from.sh"
browser=$(command -v chromium || command -v chromium-browser)
chrome() {
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile-$RANDOM" --virtual-time-budget=8000 "$@" 2>/dev/null
}

# The mock and the proxy bind port 0 and say which port they got (no race for a port).
python3 "$here/../shipping/mock_openrouter.py" 0 >"$work/mock.out" &
pids+=($!)
mock_port=$(port_from "$work/mock.out" "ready ")
proxy_key=browser-proxy-key-5678
blocked=sk-or-v1-permin00000000000000000000000000000001
daily=sk-or-v1-perday00000000000000000000000000000002
active=sk-or-v1-active00000000000000000000000000000003
one_a_day=sk-or-v1-oneday00000000000000000000000000000004
alice2=sk-or-v1-alice200000000000000000000000000000005
client_key=browser-client-key-0123456789
printf '[[clients]]\nname = "planner"\nkey = "%s"\nrequests_per_day = 100\nmodels = ["*:free"]\n\n[aliases]\nfast = ["qwen/qwen3-coder:free", "openrouter/free"]\n' "$client_key" > "$work/clients.toml"
env -i PROXY_API_KEY="$proxy_key" CONFIG_FILE="$work/clients.toml" OPENROUTER_KEYS="$blocked:1000,$daily,$active:1000@alice,$one_a_day:1,$alice2@alice" STATE_FILE= KEY_PROBE_INTERVAL=0 SHUTDOWN_GRACE=2 \
  OPENROUTER_BASE_URL="http://127.0.0.1:$mock_port/api/v1" UVICORN_HOST=127.0.0.1 UVICORN_PORT=0 \
  "$bin" 2>"$work/proxy.log" &
pids+=($!)
proxy_port=$(port_from "$work/proxy.log" "listening on 127.0.0.1:") || { echo "FAIL: the proxy did not start"; cat "$work/proxy.log"; exit 1; }

# The first free-model request walks through three keys: per-minute 429, daily 429, success;
# the second goes to the key with the largest share left, the one-a-day key, which then
# reaches its configured daily limit without any block from OpenRouter.
python3 - "$proxy_port" "$proxy_key" <<'PY'
import json, sys, urllib.error, urllib.request
port, key = sys.argv[1], sys.argv[2]
for stream in (False, False, True):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/chat/completions",
        data=json.dumps({"model": "qwen/qwen3-coder:free", "messages": [], "stream": stream}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as answer:
        assert answer.status == 200
        answer.read()
# The client asks for a model outside its list once: a refusal on its row.
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/chat/completions",
    data=json.dumps({"model": "openai/gpt-4o", "messages": []}).encode(),
    headers={"Authorization": "Bearer browser-client-key-0123456789", "Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=10)
    raise SystemExit("a model outside the allowlist was served")
except urllib.error.HTTPError as refused:
    assert refused.code == 403
PY

url="http://127.0.0.1:$proxy_port/status#key=$proxy_key"
chrome --dump-dom "$url" > "$work/dom.html"
passed=0
# A key's id: `#`, the first 4 hex digits of its SHA-256, the masked key.
id() { printf '#%s %s' "$(printf %s "$1" | sha256sum | cut -c1-4)" "$2"; }
check() { if grep -q -- "$2" "$work/dom.html"; then passed=$((passed + 1)); else echo "FAIL: $1"; failed=1; fi; }
failed=0
check "the active key row" "data-key=\"$(id "$active" "sk-or-v1-ac…0003")\""
check "the second key of alice" "data-key=\"$(id "$alice2" "sk-or-v1-al…0005")\""
check "the one-a-day key row" "data-key=\"$(id "$one_a_day" "sk-or-v1-on…0004")\""
check "the countdown of a key at its configured limit" 'resets in [0-9]*h [0-9]*m · daily limit reached\|resets in [0-9]*m [0-9]*s · daily limit reached'
check "the per-minute-blocked key row" "data-key=\"$(id "$blocked" "sk-or-v1-pe…0001")\""
check "keys grouped under their accounts" 'data-account="alice"'
check "an account of its own is found by its key" "data-account=\"$(id "$blocked" "sk-or-v1-pe…0001")\""
check "the daily-limited key row" "data-key=\"$(id "$daily" "sk-or-v1-pe…0002")\""
check "the blocked key's countdown" 'unblocks in [0-9]*m [0-9]*s · per minute limit'
check "the daily limit badge" 'badge daily_limit_reached'
check "the active key's badge" 'badge active\|badge throttled'
check "the last hour of all accounts" 'data-chart="all accounts"'
check "the last hour of an account" 'data-chart="this account"'
check "the last hour's bars" '<rect[^>]*class="ok"'
check "the last hour's OpenRouter 429s" '<rect[^>]*class="or429"'
check "the last hour's totals" 'last hour: 3 requests (3 free), 23 tokens'
check "today's tokens and cost of an account" '5 prompt + 4 completion tokens · \$0.0000 today\|3 prompt + 4 completion tokens · \$0.0002 today'
check "a key's attempts that never reached OpenRouter" 'errors 0 · unreached 0'
check "an account of its own is titled so, its key once" 'account of its own'
check "today's tokens of all accounts" '23 tokens today'
check "a row per client" 'data-client="planner"'
check "a client's use against its limits" 'requests 0 / 100'
check "a client's refusals by reason" 'refused: model 1'
check "the last hour split by client" 'data-chart="client planner"'
check "a row per model alias" 'data-alias="fast"'
check "an alias' candidates in order" '1. qwen/qwen3-coder:free: 0 served, 0 failed'
for secret in "$blocked" "$daily" "$active" "$one_a_day" "$alice2" "$proxy_key" "$client_key"; do
  if grep -q -- "$secret" "$work/dom.html"; then echo "FAIL: a full key is in the DOM"; failed=1; else passed=$((passed + 1)); fi
done
chrome --dump-dom "http://127.0.0.1:$proxy_port/status" > "$work/login.html"
if grep -q "Waiting for the proxy key" "$work/login.html" && ! grep -q "Loading" "$work/login.html"; then
  passed=$((passed + 1)); else echo "FAIL: the page without a key does not say it waits for one"; failed=1; fi
if [ -n "$shot" ]; then
  chrome --screenshot="$work/shot.png" --window-size=1000,760 "$url"
  cp "$work/shot.png" "$shot"
  chrome --screenshot="$work/phone.png" --window-size=390,844 "$url"
  cp "$work/phone.png" "${shot%.png}-phone.png"
  echo "screenshots saved to $shot and ${shot%.png}-phone.png"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] || { echo "--- DOM ---"; cat "$work/dom.html"; exit 1; }
