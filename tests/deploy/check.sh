#!/usr/bin/env bash
# The deployment files in docs/deploy parse: compose.yaml as YAML with the service,
# its .env, its state volume and loopback port; the systemd unit with
# `systemd-analyze verify` where systemd is installed (the unit's binary path must
# exist for that, so CI installs the built binary there first), else by its sections.
#
# Usage: bash tests/deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 - docs/deploy/compose.yaml <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
service = doc["services"]["openrouter-proxy"]
assert service["build"]["dockerfile"] == "Containerfile", service
assert service["env_file"].endswith(".env"), service
assert service["environment"]["STATE_FILE"] == "/data/state.json", service
assert any(v.endswith(":/data") for v in service["volumes"]), service
assert all(p.startswith("127.0.0.1:") for p in service["ports"]), service
assert "openrouter-proxy-state" in doc["volumes"], doc
assert service["healthcheck"]["test"] == ["CMD", "/openrouter-proxy", "--health-check"], service
print("compose.yaml: ok")
PY
python3 - docs/deploy/compose-replicas.yaml <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
services = doc["services"]
replicas = [s for name, s in services.items() if name.startswith("proxy-")]
assert len(replicas) == 3, services
for service in replicas:
    assert service["environment"]["REDIS_URL"] == "redis://valkey:6379/0", service
    assert service["environment"]["STATE_FILE"] == "/data/state.json", service
    assert service["env_file"].endswith(".env"), service
    assert all(p.startswith("127.0.0.1:") for p in service["ports"]), service
    assert "valkey" in service["depends_on"], service
assert "valkey" in services, services
print("compose-replicas.yaml: ok")
PY
unit=docs/deploy/openrouter-proxy.service
for needed in '^\[Unit\]' '^\[Service\]' '^\[Install\]' '^ExecStart=/usr/local/bin/openrouter-proxy$' \
  '^DynamicUser=yes$' '^StateDirectory=openrouter-proxy$' '^NoNewPrivileges=yes$' '^ProtectSystem=strict$' '^Restart=on-failure$'; do
  grep -q -- "$needed" "$unit" || { echo "FAIL: $unit lacks $needed"; exit 1; }
done
if command -v systemd-analyze >/dev/null; then
  out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; echo "FAIL: systemd-analyze verify"; exit 1; }
  # verify also reports problems without failing; any line about this unit is one.
  if grep -i "openrouter-proxy.service" <<<"$out"; then echo "FAIL: systemd-analyze verify reported the lines above"; exit 1; fi
  echo "openrouter-proxy.service: ok (systemd-analyze verify)"
else
  echo "openrouter-proxy.service: sections ok; systemd-analyze is not installed, so it was not verified"
fi
