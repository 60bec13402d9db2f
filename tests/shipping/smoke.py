"""Checks a running proxy from outside, as a person with curl would.

Usage: python3 tests/shipping/smoke.py <proxy port> <mock port> <proxy key> <openrouter key>
"""
import json
import sys
import urllib.request

PROXY, MOCK, PROXY_KEY, OPENROUTER_KEY = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
AUTH = {"Authorization": f"Bearer {PROXY_KEY}", "Content-Type": "application/json"}


def get(url, headers=None, data=None):
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read().decode()


checks = 0
status, body = get(f"http://127.0.0.1:{PROXY}/health")
assert (status, body) == (200, "OK"), (status, body)
checks += 1

chat = json.dumps({"model": "qwen/qwen3-coder:free", "messages": [{"role": "user", "content": "hi"}]}).encode()
status, body = get(f"http://127.0.0.1:{PROXY}/api/v1/chat/completions", AUTH, chat)
assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Hello from the mock.", body
_, seen = get(f"http://127.0.0.1:{MOCK}/api/v1/seen_keys")
assert json.loads(seen)["keys"][-1] == f"Bearer {OPENROUTER_KEY}", seen
checks += 1

status, body = get(f"http://127.0.0.1:{PROXY}/key_status", AUTH)
state = json.loads(body)
assert state["timezone"] == "Europe/Moscow", state
assert state["next_reset"].endswith("T00:00:00+03:00"), state  # bundled tz database, no /usr/share/zoneinfo
assert state["keys"][0]["daily_used"] == 1 and OPENROUTER_KEY not in body, body
checks += 1
print(f"{checks} passed, 0 failed")
