#!/usr/bin/env bash
# User-space instructions the proxy executes per proxied request and per forwarded SSE
# chunk, counted by valgrind's callgrind against the e2e bench's mock OpenRouter.
#
# CPU time per request wanders by 20 % between runs on a shared machine; these counts
# repeat to a fraction of a percent, so they show what a code change saves or costs
# (`cargo bench --bench e2e` stays the measure of time, memory and nginx).
#
#   bash benches/instructions.sh [proxy binary ...]   (default: target/release/openrouter-proxy)
#
# Needs valgrind, python3 and curl. The proxy runs at its default log level (one INFO
# line per request, as shipped). Requests: 2,000 JSON completions over 4 keep-alive
# connections after 300 to warm up; chunks: 40 streams of 200 chunks minus 40 of none.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_control python3 curl; do
    command -v "$tool" > /dev/null || { echo "instructions.sh needs $tool" >&2; exit 1; }
done
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/openrouter-proxy)

bench=$(cargo bench --bench e2e --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1)
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2> /dev/null; rm -rf "$work"' EXIT
"$bench" --mock > "$work/mock" &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$work/mock" && break; sleep 0.1; done
mock=$(awk '/ready/ {print $2}' "$work/mock")
keys=$(for i in $(seq 0 9); do printf 'sk-or-v1-bench-key-%04d:4000000000,' "$i"; done)

# send PORT REQUESTS CHUNKS: REQUESTS completions (streamed with CHUNKS chunks unless CHUNKS
# is "json") over 4 keep-alive connections; fails on any answer that is not whole.
send() {
    python3 - "$@" << 'PY'
import http.client, sys, threading
port, requests, chunks = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
stream = chunks != "json"
body = b'{"model":"bench/model:free","stream":%s,"messages":[{"role":"user","content":"Say hello."}]}' % (b"true" if stream else b"false")
path = f"/api/v1/chat/completions?stream=1&chunks={chunks}&interval=1" if stream else "/api/v1/chat/completions"
headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-proxy-key"}
failed = []
def run(count):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(count):
        connection.request("POST", path, body, headers)
        answer = connection.getresponse()
        data = answer.read()
        whole = answer.status == 200 and (not stream or data.count(b"data:") == int(chunks) + 1)
        if not whole:
            failed.append(data[:200])
threads = [threading.Thread(target=run, args=(requests // 4,)) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
sys.exit(f"unexpected answers: {failed[:1]}" if failed else 0)
PY
}

printf '%-60s %12s %10s\n' binary "per request" "per chunk"
port=18790
for binary in "${binaries[@]}"; do
    port=$((port + 1))
    out="$work/callgrind.$port"
    env -i PROXY_API_KEY=bench-proxy-key OPENROUTER_KEYS="${keys%,}" \
        OPENROUTER_BASE_URL="http://127.0.0.1:$mock" FREE_RPM=4000000000 FREE_BURST=1000000000 \
        UVICORN_HOST=127.0.0.1 UVICORN_PORT="$port" STATE_FILE= KEY_PROBE_INTERVAL=0 \
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$binary" \
        > "$work/proxy.$port.log" 2>&1 &
    proxy=$!
    pids+=("$proxy")
    for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.2; done
    send "$port" 300 json
    counted() {
        callgrind_control -i on "$proxy" > /dev/null 2>&1
        send "$port" "$@"
        callgrind_control -i off "$proxy" > /dev/null 2>&1
        callgrind_control -d "$proxy" > /dev/null 2>&1
    }
    counted 2000 json
    counted 40 0
    counted 40 200
    kill "$proxy"
    wait "$proxy" 2> /dev/null || true
    total() { awk '/^totals:/ {print $2}' "$out.$1"; }
    printf '%-60s %12d %10d\n' "$binary" $(($(total 1) / 2000)) $((($(total 3) - $(total 2)) / 8000))
done
