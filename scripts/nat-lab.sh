#!/usr/bin/env bash
# shellcheck disable=SC2317,SC2016 # functions run through until_ok; a literal sh -c script
# The NAT lab: two pigeon peers, each behind its own NAT router, and a relay on a "public"
# network, all in network namespaces this script creates and removes (scripts/nat-lab-net.sh);
# nothing outside them is touched or contacted. For each pair of router kinds and each trial,
# with fresh nodes: B listens through the relay (the nat-traversal plugin), A knows B only by
# its address through the relay and sends messages; the lab records whether the connection
# became direct (a hole punch), how long that took, and whether every message arrived.
#
#   scripts/nat-lab.sh [--trials N] [--pairs "eim:eim eim:sym sym:eim sym:sym"] [--messages M]
#                      [--json] [--pigeon PATH] [--expect-direct PERCENT] [--keep]
# (--keep: leave each trial's homes and node logs in the work directory, and say where)
#
# Kinds: eim = endpoint-independent mapping (MASQUERADE), sym = address-and-port-dependent
# mapping ("symmetric", MASQUERADE --random-fully). Prints a table per pair, or with --json one
# object {"pairs": [{"a", "b", "trials", "direct", "relayed_only", "failed", "messages_sent",
# "messages_delivered", "median_ms_to_direct"}]}. Exit 0 when every message arrived in every
# pair (and, with --expect-direct P, when the eim:eim pair went direct in at least P % of its
# trials); 1 otherwise; 77 when this machine cannot run the lab (not root, no netns, no
# iptables), said in one line. Needs root, `ip` and iptables (installed where missing).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
trials=5
pairs="eim:eim eim:sym sym:eim sym:sym"
messages=3
json=0
expect_direct=
keep=0
pigeon=${PIGEON_BIN:-}
while [ $# -gt 0 ]; do
  case $1 in
    --trials) trials=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --messages) messages=$2; shift 2 ;;
    --json) json=1; shift ;;
    --pigeon) pigeon=$2; shift 2 ;;
    --expect-direct) expect_direct=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "nat-lab: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $trials in '' | *[!0-9]*) echo "nat-lab: --trials takes a number" >&2; exit 2 ;; esac
case $messages in '' | *[!0-9]*) echo "nat-lab: --messages takes a number" >&2; exit 2 ;; esac
if [ "$trials" -lt 1 ] || [ "$trials" -gt 1000 ]; then echo "nat-lab: --trials is 1..1000" >&2; exit 2; fi
if [ "$messages" -lt 1 ] || [ "$messages" -gt 100 ]; then echo "nat-lab: --messages is 1..100" >&2; exit 2; fi

if [ -z "$pigeon" ]; then
  cargo build --quiet --manifest-path "$here/Cargo.toml" -p pigeon
  pigeon="${CARGO_TARGET_DIR:-$here/target}/debug/pigeon"
fi
[ -x "$pigeon" ] || { echo "nat-lab: no pigeon binary at $pigeon" >&2; exit 2; }
pigeon=$(cd "$(dirname "$pigeon")" && pwd)/$(basename "$pigeon")

# shellcheck source=scripts/nat-lab-net.sh
source "$here/scripts/nat-lab-net.sh"
lab_sweep_stale

work=$(mktemp -d -t pigeon-nat-lab.XXXXXX)
export PIGEON_PASSPHRASE="nat lab passphrase, not a secret"
# CLI calls go to the node over its control socket, which works from any namespace.
p() { local who=$1; shift; "$pigeon" --home "$work/$who" "$@"; }

# Wait (at most $2 tenths of a second) until the command in $3... succeeds.
until_ok() {
  local tenths=$1 i
  shift
  for ((i = 0; i < tenths; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

# The first address a node printed (its stdout in $1), within 30 s.
first_addr() {
  local out=$1 i
  for ((i = 0; i < 300; i++)); do
    if grep -q '^listening on /.*/p2p/[1-9A-Za-z]' "$out" 2>/dev/null; then
      sed -n 's/^listening on \(\/.*\/p2p\/[1-9A-Za-z]*\)$/\1/p' "$out" | head -1
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# Start `pigeon node run` for WHO inside HOST's namespace; stdout to WHO.out, log to WHO.log.
start() {
  local host=$1 who=$2
  shift 2
  lab_exec_bg "$host" "$work/$who.log" sh -c \
    'bin=$0 home=$1; shift; exec "$bin" --home "$home" -v node run "$@" >"$home.out"' \
    "$pigeon" "$work/$who" "$@"
}

reserved() {
  p b status --json | python3 -c '
import json, sys
sys.exit(0 if sys.argv[1] in ((json.load(sys.stdin).get("nat") or {}).get("reserved_at") or []) else 1)' "$relay_id"
}

# 0 when A has a direct connection to B (the punch) and none relayed left.
direct_now() {
  p a peers --json | python3 -c '
import json, sys
want = sys.argv[1]
for p in json.load(sys.stdin):
    if p["peer_id"] == want:
        c = p.get("connections", [])
        sys.exit(0 if any(not x["relayed"] for x in c) else 1)
sys.exit(1)' "$b_id"
}

delivered_count() {
  p a outbox list --json | python3 -c '
import json, sys
print(sum(1 for m in json.load(sys.stdin) if m["state"] == "delivered"))'
}

# One trial: prints "direct|relayed_only|failed MS_TO_DIRECT DELIVERED".
trial() {
  local n=$1 who
  local port=$((4000 + n))
  # Each trial in a directory of its own (trial runs in a subshell: this is its own $work).
  work=$(mktemp -d "$work/$LAB_KIND_A-$LAB_KIND_B-$n.XXXXXX")
  for who in relay a b; do
    p "$who" init >/dev/null || { echo "failed 0 0"; return; }
  done
  start relay relay --relay --listen "/ip4/$LAB_RELAY_IP/udp/$port/quic-v1" \
    --listen "/ip4/$LAB_RELAY_IP/tcp/$port"
  local relay_addr
  relay_addr=$(first_addr "$work/relay.out") || { echo "failed 0 0"; return; }
  relay_id=${relay_addr##*/p2p/}
  local relay_quic="/ip4/$LAB_RELAY_IP/udp/$port/quic-v1/p2p/$relay_id"
  # B: listens through the relay; both peers first meet the relay directly (bootstrap), so
  # that identify tells each its public address before the relayed connection (DCUtR sends
  # those addresses).
  for who in a b; do
    p "$who" config set plugins.bootstrap.enabled true
    p "$who" config set plugins.bootstrap.config.peers "[\"$relay_quic\"]"
  done >/dev/null
  p b config set plugins.nat-traversal.enabled true >/dev/null
  p b config set plugins.nat-traversal.config.relays "[\"$relay_quic\"]" >/dev/null
  p b config set plugins.nat-traversal.config.listen '"always"' >/dev/null
  start peer-b b --listen "/ip4/0.0.0.0/udp/$port/quic-v1" --listen "/ip4/0.0.0.0/tcp/$port"
  start peer-a a --listen "/ip4/0.0.0.0/udp/$port/quic-v1" --listen "/ip4/0.0.0.0/tcp/$port"
  if ! first_addr "$work/a.out" >/dev/null || ! first_addr "$work/b.out" >/dev/null; then
    echo "failed 0 0"
    return
  fi
  b_id=$(p b id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["peer_id"])')
  if ! until_ok 300 reserved; then
    echo "failed 0 0"
    return
  fi
  p a contacts add b "$(p b id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')" \
    --addr "$relay_quic/p2p-circuit" >/dev/null
  p b contacts add a "$(p a id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])')" >/dev/null
  local started i
  started=$(date +%s%N)
  for ((i = 1; i <= messages; i++)); do p a send b "lab message $i" >/dev/null; done
  local ms=0 kind=relayed_only
  # DCUtR's three attempts are over within seconds; 10 s is ample.
  if until_ok 100 direct_now; then
    kind=direct
    ms=$((($(date +%s%N) - started) / 1000000))
  fi
  until_ok 300 test "$(delivered_count)" -ge "$messages" || true
  local got
  got=$(delivered_count)
  [ "$got" -ge "$messages" ] || kind=failed
  echo "$kind $ms $got"
  for who in a b relay; do p "$who" status >/dev/null 2>&1 || true; done
  # End this trial's nodes (TERM; lab_down kills what is left at the end).
  local pids
  for host in peer-a peer-b relay; do
    pids=$(ip netns pids "$(lab_ns "$host")" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
  done
  for ((i = 0; i < 100; i++)); do
    pids=$(for host in peer-a peer-b relay; do ip netns pids "$(lab_ns "$host")" 2>/dev/null; done)
    [ -z "$pids" ] && break
    sleep 0.1
  done
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  [ "$keep" = 1 ] || rm -rf "$work" 2>/dev/null || true
}

results=()
status=0
for pair in $pairs; do
  a=${pair%%:*} b=${pair##*:}
  rc=0
  lab_up "$a" "$b" || rc=$?
  if [ "$rc" != 0 ]; then
    rm -rf "$work"
    exit "$rc"
  fi
  direct=0 relayed=0 failed=0 sent=0 delivered=0 times=()
  for ((t = 1; t <= trials; t++)); do
    kind=failed ms=0 got=0
    read -r kind ms got < <(trial "$t") || true
    sent=$((sent + messages))
    delivered=$((delivered + got))
    case $kind in
      direct) direct=$((direct + 1)); times+=("$ms") ;;
      relayed_only) relayed=$((relayed + 1)) ;;
      *) failed=$((failed + 1)) ;;
    esac
    [ "$json" = 1 ] || printf '  %s:%s trial %d: %s%s, %d/%d delivered\n' "$a" "$b" "$t" "$kind" \
      "$([ "$kind" = direct ] && echo " after ${ms} ms")" "$got" "$messages" >&2
  done
  lab_down
  median=null
  if [ ${#times[@]} -gt 0 ]; then
    median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : int((v[NR/2]+v[NR/2+1])/2)}')
  fi
  results+=("{\"a\": \"$a\", \"b\": \"$b\", \"trials\": $trials, \"direct\": $direct, \"relayed_only\": $relayed, \"failed\": $failed, \"messages_sent\": $sent, \"messages_delivered\": $delivered, \"median_ms_to_direct\": $median}")
  [ "$delivered" -eq "$sent" ] || status=1
  if [ -n "$expect_direct" ] && [ "$pair" = eim:eim ] && [ $((direct * 100)) -lt $((expect_direct * trials)) ]; then
    status=1
  fi
done
if [ "$keep" = 1 ]; then
  echo "nat-lab: homes and logs kept in $work (a directory per trial)" >&2
else
  rm -rf "$work" 2>/dev/null || true
fi

if [ "$json" = 1 ]; then
  (IFS=,; echo "{\"pairs\": [${results[*]}]}")
else
  printf '%-8s %6s %6s %12s %6s %10s %18s\n' pair trials direct relayed_only failed delivered median_ms_to_direct
  for r in "${results[@]}"; do
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print("%-8s %6d %6d %12d %6d %10s %18s" % (r["a"] + ":" + r["b"], r["trials"], r["direct"],
      r["relayed_only"], r["failed"], "%d/%d" % (r["messages_delivered"], r["messages_sent"]),
      "-" if r["median_ms_to_direct"] is None else r["median_ms_to_direct"]))' "$r"
  done
fi
exit "$status"
