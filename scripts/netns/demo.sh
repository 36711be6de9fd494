#!/usr/bin/env bash
# make demo: a throwaway namespace lab and the daemon watching vm-* with the
# lab config (scripts/netns/lab.yaml: the example's escalation ladder with
# durations in seconds). VM 1 floods at full speed: shaperd flags and
# quarantines it with no operator action, shapes it to 10000 pps, escalates
# (2500 pps, then blocked but for ssh), and once the flood stops walks it
# through probation to release. A live view shows each second; then
# everything is cleaned up. Run as root from the repository root after
# `make build tools`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
LAB=${LAB:-demo$$}
export LAB
FLOOD_SECONDS=${DEMO_SECONDS:-26}
SOCK=/tmp/shaperd-$LAB.sock
STATE=$(mktemp -d /tmp/shaperd-$LAB.XXXX)
pids=()

cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	scripts/netns/lab.sh down >/dev/null 2>&1
	rm -rf "$STATE" "$SOCK"
	echo "demo: cleaned up lab $LAB"
}
trap cleanup EXIT INT TERM

[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (it builds network namespaces)" >&2; exit 1; }
for t in shaperd flood sink probe; do
	[[ -x $BIN/$t ]] || { echo "demo: $BIN/$t missing: run make build tools" >&2; exit 1; }
done

scripts/netns/lab.sh up >/dev/null
eval "$(scripts/netns/lab.sh env)"
sd() { "$BIN/shaperd" --socket "$SOCK" "$@"; }
rxpps() { # packets per second the external host receives, over 1 s
	local a b
	a=$(ip netns exec "$EXT_NS" cat /sys/class/net/eth0/statistics/rx_packets)
	sleep 1
	b=$(ip netns exec "$EXT_NS" cat /sys/class/net/eth0/statistics/rx_packets)
	echo $((b - a))
}

ip netns exec "$HV_NS" "$BIN/shaperd" run --config scripts/netns/lab.yaml --socket "$SOCK" --state-dir "$STATE" 2>"$STATE/daemon.log" &
pids+=($!)
for _ in $(seq 50); do sd status >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$EXT_NS" "$BIN/sink" --listen "$EXT_IP:9" --duration 120s >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$VM1_NS" "$BIN/probe" server --listen "$VM1_IP:22" >/dev/null 2>&1 &
pids+=($!)

echo "== lab $LAB: shaperd watches vm-* (flag above 50000 pps or 800 Mbit/s for 1 s)"
echo "== $VM1_PORT (VM 1, $VM1_IP) floods $EXT_IP with 250-byte UDP frames at full speed for ${FLOOD_SECONDS}s"
ip netns exec "$VM1_NS" "$BIN/flood" --dst "$EXT_IP" --size 250 --pps 0 --duration "${FLOOD_SECONDS}s" >/dev/null 2>&1 &
flood=$!
pids+=($flood)
start=$(date +%s.%N)
until sd status --json 2>/dev/null | grep -q "\"port\": \"$VM1_PORT\""; do sleep 0.05; done
awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "   quarantined automatically %.2f s after the flood started\n\n", b - a }'
ip netns exec "$EXT_NS" "$BIN/probe" client --connect "$VM1_IP:22" --count 150 --interval 200ms --json >"$STATE/probe.json" 2>&1 &
probe=$!
pids+=($probe)

for i in $(seq 60); do
	r=$(rxpps)
	[[ -t 1 ]] && clear
	st=$(sd status "$VM1_PORT" 2>/dev/null) || { echo "== $i s: $VM1_PORT released by its ladder; the external host receives $r pps"; break; }
	flooding=no; kill -0 "$flood" 2>/dev/null && flooding=yes
	echo "== live view ($i s): flood running: $flooding; the external host receives $r pps; an ssh-like probe to $VM1_IP:22 runs meanwhile"
	echo "$st"
done
wait "$probe" || true
echo
echo "== the probe to port 22 through every stage: $(cat "$STATE/probe.json")"
echo "== ladder events from the daemon's log:"
grep -E 'event=(flagged|auto_quarantine|ladder|on_block)' "$STATE/daemon.log" | sed 's/^/   /'
