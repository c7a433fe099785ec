# shellcheck shell=bash disable=SC2034 # the LAB_* variables are for the sourcing script
# nat-lab-net.sh: the network of the NAT lab, to be `source`d (by scripts/nat-lab.sh).
#
# Builds, out of network namespaces it creates itself, a "public" network and two homes,
# each behind its own NAT router, and removes them again. Nothing outside those namespaces
# is touched: every veth is created directly inside a lab namespace (never in the host's),
# iptables and sysctls run only inside them, and no namespace has a route to anything but
# the lab's own subnets, so no packet can leave the lab.
#
#   public 198.51.100.0/24 (TEST-NET-2), one bridge in the "switch" namespace:
#     relay   198.51.100.1    the relay node (and AutoNAT server)
#     probe   198.51.100.2    a second public host (to tell mapping kinds apart)
#     nat-a   198.51.100.11   router A's public side ("wan")
#     nat-b   198.51.100.12   router B's public side ("wan")
#   home A 192.0.2.0/24 (TEST-NET-1):   nat-a 192.0.2.1 ("lan"),   peer-a 192.0.2.10
#   home B 203.0.113.0/24 (TEST-NET-3): nat-b 203.0.113.1 ("lan"), peer-b 203.0.113.10
#
# Router kinds:
#   eim  endpoint-independent mapping: MASQUERADE keeps the source port when it is free, so
#        one socket is seen at the same public ip:port by every destination.
#   sym  address-and-port-dependent mapping ("symmetric"): MASQUERADE --random-fully picks a
#        random port for each new conntrack entry, i.e. for each destination.
# Both filter like a home router: inbound only for conntrack entries a LAN host opened
# (address-and-port-dependent filtering), everything else dropped silently. Linux NAT cannot
# filter more loosely, so an eim/sym pair cannot hole punch here even where a home router with
# address-dependent filtering would let it: the lab's symmetric figures are a lower bound.
#
# Needs root, `ip` (iproute2) and iptables (installed with apt-get when missing); python3 only
# for lab_nat_probe. Checked on Debian 12 with both iptables backends (nf_tables and legacy).
#
# Use (works under `set -euo pipefail`):
#   source scripts/nat-lab-net.sh
#   lab_up eim sym || exit $?       # 77 = cannot run here (one line said why), 1 = failed
#   lab_exec peer-a pigeon dial "/ip4/$LAB_RELAY_IP/udp/4001/quic-v1/p2p/$RELAY_ID"
#   lab_exec_bg relay "$dir/relay.log" pigeon node run ...; relay_pid=$LAB_LAST_PID
#   lab_down                        # idempotent; lab_up also sets traps that call it
#
# Functions: lab_up KIND_A KIND_B, lab_down, lab_exec HOST CMD..., lab_exec_bg HOST LOG CMD...,
# lab_ns HOST, lab_hosts, lab_nat_probe PEER, lab_sweep_stale.
# Hosts: relay probe nat-a nat-b peer-a peer-b (and switch, the bridge).
# Variables (set on source): LAB_PUBLIC_NET LAB_LAN_A_NET LAB_LAN_B_NET LAB_RELAY_IP
# LAB_PROBE_IP LAB_NAT_A_IP LAB_NAT_B_IP LAB_NAT_A_LAN_IP LAB_NAT_B_LAN_IP LAB_PEER_A_IP
# LAB_PEER_B_IP; (set by lab_up) LAB_PREFIX LAB_KIND_A LAB_KIND_B LAB_IPTABLES LAB_IS_UP.
# Settings: LAB_PREFIX (default pigeonlab<PID>: parallel runs never collide),
# LAB_SET_TRAPS=0 (lab_up leaves the caller's traps alone), LAB_IPTABLES (a binary to use).

# Exit code for "this machine cannot run the lab" (automake's "skipped").
LAB_E_CANNOT=77

# Addresses. Documentation ranges only (RFC 5737), used only inside the lab's namespaces.
LAB_PUBLIC_NET=198.51.100.0/24
LAB_LAN_A_NET=192.0.2.0/24
LAB_LAN_B_NET=203.0.113.0/24
LAB_RELAY_IP=198.51.100.1
LAB_PROBE_IP=198.51.100.2
LAB_NAT_A_IP=198.51.100.11
LAB_NAT_B_IP=198.51.100.12
LAB_NAT_A_LAN_IP=192.0.2.1
LAB_NAT_B_LAN_IP=203.0.113.1
LAB_PEER_A_IP=192.0.2.10
LAB_PEER_B_IP=203.0.113.10

# Every host of the lab (each its own namespace, named LAB_PREFIX-HOST).
_LAB_ALL_HOSTS=(switch relay probe nat-a nat-b peer-a peer-b)

LAB_IS_UP=${LAB_IS_UP:-0}
_LAB_IPT_PICKED=
# The namespaces this shell made, in order: lab_down removes these and nothing else, so a
# LAB_PREFIX that collides with another run's namespaces cannot make it remove theirs.
_LAB_MADE=()

_lab_say() { printf 'nat-lab: %s\n' "$*" >&2; }

# One plain line and the "cannot run" code.
_lab_cannot() {
  _lab_say "cannot run: $*"
  return "$LAB_E_CANNOT"
}

# Run a step of the build; on failure say which one, with the command's own first error line.
_lab_step() {
  local err
  if ! err=$("$@" 2>&1 >/dev/null); then
    _lab_say "failed: $* (${err%%$'\n'*})"
    return 1
  fi
}

lab_hosts() { printf '%s\n' relay probe nat-a nat-b peer-a peer-b; }

# The namespace of HOST.
lab_ns() {
  local h
  if [ -z "${LAB_PREFIX:-}" ]; then
    _lab_say "lab_ns: the lab is not up"
    return 1
  fi
  for h in "${_LAB_ALL_HOSTS[@]}"; do
    if [ "$h" = "${1:-}" ]; then
      printf '%s-%s\n' "$LAB_PREFIX" "$h"
      return 0
    fi
  done
  _lab_say "unknown host '${1:-}' (one of: ${_LAB_ALL_HOSTS[*]})"
  return 1
}

# Run CMD in HOST's namespace, in the foreground; its exit code is returned.
lab_exec() {
  local ns
  ns=$(lab_ns "${1:-}") || return 1
  shift
  ip netns exec "$ns" "$@"
}

# Run CMD in HOST's namespace in the background, output to LOG; its pid is left in
# LAB_LAST_PID (the command's own pid: `ip netns exec` execs it). lab_down ends it anyway.
lab_exec_bg() {
  local ns log=${2:-}
  ns=$(lab_ns "${1:-}") || return 1
  if [ -z "$log" ] || [ $# -lt 3 ]; then
    _lab_say "usage: lab_exec_bg HOST LOG CMD..."
    return 1
  fi
  shift 2
  ip netns exec "$ns" "$@" >"$log" 2>&1 &
  LAB_LAST_PID=$!
}

# Write a sysctl of one namespace through /proc (per-netns under `ip netns exec`), so that
# neither procps nor the host's own settings are involved.
_lab_sysctl() {
  local ns=$1 key=$2 value=$3
  # shellcheck disable=SC2016 # expanded by that sh
  ip netns exec "$ns" sh -c 'printf "%s\n" "$2" > "/proc/sys/$1"' _ "${key//.//}" "$value"
}

# iptables: installed with apt-get when missing. Which backend: both nf_tables (Debian 12's
# default `iptables`) and legacy x_tables keep their rules per network namespace, and the
# lab only ever runs iptables inside its own fresh routers, so the two never mix and the
# host's ruleset (whichever backend it uses) is never read or written. We take the first of
# LAB_IPTABLES, iptables, iptables-nft, iptables-legacy that works inside a router namespace
# (a kernel may carry only one of the two).
_lab_ensure_iptables() {
  local c
  for c in iptables iptables-nft iptables-legacy; do
    command -v "$c" >/dev/null 2>&1 && return 0
  done
  command -v apt-get >/dev/null 2>&1 || _lab_cannot "iptables is missing and there is no apt-get to install it" || return
  _lab_say "installing iptables with apt-get"
  local log
  log=$(mktemp -t nat-lab-apt.XXXXXX)
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables; } >"$log" 2>&1; then
    local said
    said=$(tail -n 1 "$log")
    rm -f "$log"
    _lab_cannot "iptables is missing and apt-get could not install it ($said)"
    return
  fi
  rm -f "$log"
}

_lab_pick_iptables() {
  local ns=$1 c
  for c in ${LAB_IPTABLES:-} iptables iptables-nft iptables-legacy; do
    command -v "$c" >/dev/null 2>&1 || continue
    if ip netns exec "$ns" "$c" -w -t nat -S POSTROUTING >/dev/null 2>&1; then
      LAB_IPTABLES=$c
      return 0
    fi
  done
  _lab_cannot "no iptables backend works in a network namespace here (nf_tables and x_tables both refused)"
}

# A host's namespace: loopback up (a fresh namespace has it down, and libp2p and the tests
# use 127.0.0.1), no IPv6 (the lab is IPv4 only; link-local v6 would only add noise and DAD
# delays), forwarding off unless it is a router.
_lab_add_ns() {
  local err
  if ! err=$(ip netns add "$1" 2>&1); then
    case $err in
      *"File exists"*) _lab_say "failed: namespace $1 exists already (another run with LAB_PREFIX=$LAB_PREFIX?)" ;;
      *) _lab_cannot "creating a network namespace was refused (${err%%$'\n'*})" || return ;;
    esac
    return 1
  fi
  _LAB_MADE+=("$1")
}

_lab_make_ns() {
  local ns=$1 forward=$2
  _lab_add_ns "$ns" || return
  _lab_step ip -n "$ns" link set lo up || return 1
  _lab_sysctl "$ns" net.ipv6.conf.all.disable_ipv6 1 2>/dev/null || true
  _lab_sysctl "$ns" net.ipv6.conf.default.disable_ipv6 1 2>/dev/null || true
  _lab_step _lab_sysctl "$ns" net.ipv4.ip_forward "$forward" || return 1
}

# A veth pair from namespace A (end named A_IF) to namespace B (end named B_IF), made
# inside A and moved into B by the same netlink request: it never exists in the host's namespace.
_lab_veth() {
  local a_ns=$1 a_if=$2 b_ns=$3 b_if=$4
  _lab_step ip -n "$a_ns" link add "$a_if" type veth peer name "$b_if" netns "$b_ns"
}

# Plug HOST's eth-like end IFACE (address ADDR/24) into the public bridge as port PORT.
_lab_plug_public() {
  local host_ns=$1 iface=$2 addr=$3 port=$4 sw
  sw=$(lab_ns switch)
  _lab_veth "$sw" "$port" "$host_ns" "$iface" || return 1
  _lab_step ip -n "$sw" link set "$port" master br0 up || return 1
  _lab_step ip -n "$host_ns" addr add "$addr/24" dev "$iface" || return 1
  _lab_step ip -n "$host_ns" link set "$iface" up || return 1
}

# Router of KIND between the public bridge (wan WAN_IP) and a LAN (lan LAN_IP/24) with one
# peer (PEER_IP, default route through the router).
_lab_make_home() {
  local kind=$1 router=$2 peer=$3 wan_ip=$4 lan_ip=$5 peer_ip=$6 r p
  r=$(lab_ns "$router") && p=$(lab_ns "$peer") || return 1
  _lab_make_ns "$r" 1 || return 1 # ip_forward inside the router namespace only
  _lab_make_ns "$p" 0 || return 1
  _lab_plug_public "$r" wan "$wan_ip" "$router" || return 1
  _lab_veth "$r" lan "$p" eth0 || return 1
  _lab_step ip -n "$r" addr add "$lan_ip/24" dev lan || return 1
  _lab_step ip -n "$r" link set lan up || return 1
  _lab_step ip -n "$p" addr add "$peer_ip/24" dev eth0 || return 1
  _lab_step ip -n "$p" link set eth0 up || return 1
  _lab_step ip -n "$p" route add default via "$lan_ip" dev eth0 || return 1
  # No default route on the router: the public network is on-link, and anything else
  # (the other home's LAN included) must be unreachable, not forwarded somewhere.
  [ -n "$_LAB_IPT_PICKED" ] || { _lab_pick_iptables "$r" && _LAB_IPT_PICKED=1; } || return
  _lab_nat_rules "$r" "$kind" || return 1
}

_lab_nat_rules() {
  local ns=$1 kind=$2 ipt random=()
  ipt=(ip netns exec "$ns" "$LAB_IPTABLES" -w)
  case $kind in
    eim) ;;
    sym) random=(--random-fully) ;;
    *)
      _lab_say "unknown NAT kind '$kind' (eim or sym)"
      return 1
      ;;
  esac
  _lab_step "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE "${random[@]}" || return 1
  # Forward LAN to public, and back only what belongs to a connection the LAN opened.
  _lab_step "${ipt[@]}" -P FORWARD DROP || return 1
  _lab_step "${ipt[@]}" -A FORWARD -i lan -o wan -j ACCEPT || return 1
  _lab_step "${ipt[@]}" -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT || return 1
  # Unsolicited packets to the router's public address are dropped, as home routers do, not
  # answered (RST, ICMP port unreachable) nor accepted: an early hole-punch packet accepted
  # here would leave a confirmed conntrack entry that makes the NAT pick another port for the
  # LAN host's own packet to the same peer, and a RST would abort the other side's attempt.
  _lab_step "${ipt[@]}" -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT || return 1
  _lab_step "${ipt[@]}" -A INPUT -i wan -p icmp --icmp-type echo-request -j ACCEPT || return 1
  _lab_step "${ipt[@]}" -A INPUT -i wan -j DROP || return 1
}

_lab_build() {
  local kind_a=$1 kind_b=$2 sw
  sw=$(lab_ns switch)
  # The first namespace doubles as the check that this machine lets us make them (77).
  _lab_add_ns "$sw" || return
  _lab_step ip -n "$sw" link set lo up || return 1
  _lab_step ip -n "$sw" link add br0 type bridge || return 1
  _lab_step ip -n "$sw" link set br0 up || return 1
  # Bridged frames must not go through netfilter in the switch (br_netfilter may be built in).
  _lab_sysctl "$sw" net.bridge.bridge-nf-call-iptables 0 2>/dev/null || true

  local h
  for h in relay probe; do
    _lab_make_ns "$(lab_ns "$h")" 0 || return 1
  done
  _lab_plug_public "$(lab_ns relay)" eth0 "$LAB_RELAY_IP" relay || return 1
  _lab_plug_public "$(lab_ns probe)" eth0 "$LAB_PROBE_IP" probe || return 1
  _lab_make_home "$kind_a" nat-a peer-a "$LAB_NAT_A_IP" "$LAB_NAT_A_LAN_IP" "$LAB_PEER_A_IP" || return
  _lab_make_home "$kind_b" nat-b peer-b "$LAB_NAT_B_IP" "$LAB_NAT_B_LAN_IP" "$LAB_PEER_B_IP" || return
}

# Can HOST reach IP? A TCP connect to a closed port (9, discard) that is refused proves the
# path both ways without needing ping or a listener; bounded to 1 s.
_lab_reaches() {
  local out
  # shellcheck disable=SC2016 # expanded by that bash
  out=$(lab_exec "$1" timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/9"' _ "$2" 2>&1) && return 0
  [[ $out == *refused* ]]
}

# Wait (bounded: 5 s) until both peers reach the relay through their routers, so the first
# packet of a trial is not lost to ARP or a bridge port still coming up.
_lab_wait_ready() {
  local i
  for ((i = 0; i < 25; i++)); do
    if _lab_reaches peer-a "$LAB_RELAY_IP" && _lab_reaches peer-b "$LAB_RELAY_IP"; then
      return 0
    fi
    sleep 0.1
  done
  _lab_say "failed: the peers cannot reach the relay after 5 s"
  return 1
}

# lab_up KIND_A KIND_B: build the lab. Returns 0, 77 (cannot run here) or 1 (failed; what
# was built is removed again).
lab_up() {
  local kind_a=${1:-} kind_b=${2:-} k
  for k in "$kind_a" "$kind_b"; do
    case $k in
      eim | sym) ;;
      *)
        _lab_say "usage: lab_up KIND_A KIND_B (each eim or sym), got '$k'"
        return 1
        ;;
    esac
  done
  if [ "$LAB_IS_UP" = 1 ]; then
    _lab_say "lab_up: the lab $LAB_PREFIX is up already; lab_down first"
    return 1
  fi
  [ "$(id -u)" = 0 ] || _lab_cannot "needs root (network namespaces and iptables)" || return
  command -v ip >/dev/null 2>&1 || _lab_cannot "the ip command (iproute2) is missing" || return
  _lab_ensure_iptables || return

  LAB_PREFIX=${LAB_PREFIX:-pigeonlab$$}
  LAB_KIND_A=$kind_a
  LAB_KIND_B=$kind_b
  _LAB_IPT_PICKED=
  LAB_IS_UP=1 # from here on lab_down has something to do
  if [ "${LAB_SET_TRAPS:-1}" = 1 ]; then
    trap lab_down EXIT
    trap 'lab_down; trap - INT; kill -INT $$' INT
    trap 'lab_down; trap - TERM; kill -TERM $$' TERM
    trap 'lab_down; trap - HUP; kill -HUP $$' HUP
  fi
  local rc=0
  _lab_build "$kind_a" "$kind_b" || rc=$?
  [ "$rc" = 0 ] && { _lab_wait_ready || rc=1; }
  if [ "$rc" != 0 ]; then
    lab_down
    return "$rc"
  fi
}

# End the processes left in a namespace: TERM, then KILL after at most 2 s.
_lab_end_procs() {
  local ns=$1 pids i
  pids=$(ip netns pids "$ns" 2>/dev/null) || return 0
  [ -n "$pids" ] || return 0
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    pids=$(ip netns pids "$ns" 2>/dev/null) || return 0
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
}

# Remove the lab: processes still in it, then each namespace (its veths, bridge, conntrack
# and iptables rules go with it). Idempotent, never fails, safe from a trap.
lab_down() {
  local ns i
  for ns in "${_LAB_MADE[@]}"; do
    [ -e "/run/netns/$ns" ] || continue
    _lab_end_procs "$ns"
    # A namespace still being set up by a dying process may be busy for a moment.
    for ((i = 0; i < 10; i++)); do
      ip netns del "$ns" 2>/dev/null && break
      sleep 0.1
    done
    [ -e "/run/netns/$ns" ] && _lab_say "warning: could not remove namespace $ns"
  done
  _LAB_MADE=()
  LAB_IS_UP=0
  return 0
}

# Remove the namespaces of earlier runs that died without lab_down (SIGKILL): only names of
# exactly this lab's form, pigeonlab<PID>-<host>, whose PID is no longer running.
lab_sweep_stale() {
  local ns pid host
  while read -r ns _; do
    [[ $ns =~ ^pigeonlab([0-9]+)-([a-z-]+)$ ]] || continue
    pid=${BASH_REMATCH[1]} host=${BASH_REMATCH[2]}
    [[ " ${_LAB_ALL_HOSTS[*]} " == *" $host "* ]] || continue
    [ -d "/proc/$pid" ] && continue
    _lab_end_procs "$ns"
    ip netns del "$ns" 2>/dev/null || true
  done < <(ip netns list 2>/dev/null)
}

# lab_nat_probe PEER (peer-a or peer-b): from ONE UDP socket on PEER, send a datagram to the
# relay and one to the probe host; each answers with the source ip:port it saw. Prints
# "IP:PORT_SEEN_BY_RELAY IP:PORT_SEEN_BY_PROBE". Same port = endpoint-independent mapping,
# different = address(-and-port)-dependent. Lets a caller check that the NAT behaves as its
# label says before measuring anything. Needs python3; bounded to about 3 s.
lab_nat_probe() {
  local peer=${1:-} dir pids=() out rc=0
  command -v python3 >/dev/null 2>&1 || {
    _lab_say "lab_nat_probe needs python3"
    return 1
  }
  dir=$(mktemp -d -t nat-lab-probe.XXXXXX)
  local echo_py='
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 3478)); s.settimeout(3)
open(sys.argv[2], "w").close()
data, src = s.recvfrom(64)
s.sendto(("%s:%d" % src).encode(), src)'
  local h
  for h in relay probe; do
    local ip=$LAB_RELAY_IP
    [ "$h" = probe ] && ip=$LAB_PROBE_IP
    lab_exec_bg "$h" "$dir/$h.log" python3 -c "$echo_py" "$ip" "$dir/$h.ready" || return 1
    pids+=("$LAB_LAST_PID")
  done
  # Wait (at most 2 s) for both to be bound.
  local i
  for ((i = 0; i < 20; i++)); do
    [ -e "$dir/relay.ready" ] && [ -e "$dir/probe.ready" ] && break
    sleep 0.1
  done
  out=$(lab_exec "$peer" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0)); s.settimeout(2)
seen = []
for ip in sys.argv[1:]:
    s.sendto(b"x", (ip, 3478))
    seen.append(s.recvfrom(64)[0].decode())
print(" ".join(seen))' "$LAB_RELAY_IP" "$LAB_PROBE_IP" 2>&1) || rc=1
  for i in "${pids[@]}"; do
    kill "$i" 2>/dev/null || true
    wait "$i" 2>/dev/null || true
  done
  rm -rf "$dir"
  if [ "$rc" != 0 ]; then
    _lab_say "lab_nat_probe $peer failed: ${out##*$'\n'}"
    return 1
  fi
  printf '%s\n' "$out"
}
