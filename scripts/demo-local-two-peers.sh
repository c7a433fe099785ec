#!/usr/bin/env bash
# Two pigeon nodes on this machine, started by hand as a user would: two homes, two
# `pigeon node run` processes on 127.0.0.1, contacts exchanged, messages both ways.
# Exits 0 only if every message arrived. Cleans up after itself, even on Ctrl-C.
#
#   scripts/demo-local-two-peers.sh            # builds pigeon with cargo first
#   PIGEON_BIN=/path/to/pigeon scripts/demo-local-two-peers.sh
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PIGEON_BIN:-}" ]; then
  cargo build --quiet --manifest-path "$here/Cargo.toml" -p pigeon
  PIGEON_BIN="${CARGO_TARGET_DIR:-$here/target}/debug/pigeon"
fi

work=$(mktemp -d -t pigeon-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

export PIGEON_PASSPHRASE="demo passphrase, not a secret"
alice() { "$PIGEON_BIN" --home "$work/alice" "$@"; }
bob() { "$PIGEON_BIN" --home "$work/bob" "$@"; }

echo "== creating two homes in $work"
alice init >/dev/null
bob init >/dev/null

# Start a node in the background (in this shell, so that cleanup knows its pid).
start_node() {
  local who=$1
  "$PIGEON_BIN" --home "$work/$who" node run --listen /ip4/127.0.0.1/tcp/0 \
    >"$work/$who.out" 2>"$work/$who.log" &
  pids+=($!)
}

# Wait (at most 30 s) for the address a node prints.
node_addr() {
  local who=$1
  for _ in $(seq 300); do
    if grep -q '^listening on ' "$work/$who.out"; then
      sed -n 's/^listening on //p' "$work/$who.out" | head -1
      return 0
    fi
    sleep 0.1
  done
  echo "the $who node did not start; its log:" >&2
  cat "$work/$who.log" >&2
  return 1
}

start_node alice
start_node bob
alice_addr=$(node_addr alice)
bob_addr=$(node_addr bob)
echo "== alice listens on $alice_addr"
echo "== bob listens on $bob_addr"

address_of() { "$PIGEON_BIN" --home "$work/$1" id | sed -n 's/^address: //p'; }
alice contacts add bob "$(address_of bob)" --addr "$bob_addr" >/dev/null
bob contacts add alice "$(address_of alice)" --addr "$alice_addr" >/dev/null

echo "== sending"
alice send bob "Hello Bob, this is Alice." >/dev/null
alice send bob --subject "second" "Sealed end to end, encrypted at rest." >/dev/null
bob send alice "Hi Alice! Both arrived." >/dev/null

# Wait (at most 30 s) until each inbox holds what was sent to it.
wait_inbox() {
  local who=$1 want=$2
  for _ in $(seq 300); do
    local n
    n=$("$PIGEON_BIN" --home "$work/$who" inbox list | wc -l)
    [ "$n" -ge "$want" ] && return 0
    sleep 0.1
  done
  echo "$who received fewer than $want messages" >&2
  return 1
}
wait_inbox bob 2
wait_inbox alice 1

echo "== bob's inbox"
bob inbox list
echo "== alice's inbox"
alice inbox list
echo "== alice's outbox"
alice outbox list
echo "== every message arrived"
