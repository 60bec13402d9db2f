# Sourced by the shell checks: port_from FILE TEXT prints the port a process announced in
# FILE right after TEXT ("ready " from the mock, "listening on 127.0.0.1:" from the proxy),
# waiting up to 10 s for it. Processes bind port 0 and say which port they got, so no port
# is picked here and handed over for another process to take in between.
port_from() {
  for _ in $(seq 100); do
    port=$(grep -o "$2[0-9]*" "$1" 2>/dev/null | head -1 | sed "s/^$2//")
    if [ -n "$port" ]; then echo "$port"; return 0; fi
    sleep 0.1
  done
  return 1
}
