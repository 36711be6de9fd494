#!/usr/bin/env bash
# make demo: a throwaway namespace lab, the daemon, a flood from one VM, the
# quarantine, a live view of pass/drop per class for about 30 s, a change in
# place, the release, then everything cleaned up. Run as root from the
# repository root after `make build tools`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
LAB=${LAB:-demo$$}
export LAB
SECONDS_LIVE=${DEMO_SECONDS:-30}
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

ip netns exec "$HV_NS" "$BIN/shaperd" run --socket "$SOCK" --state-dir "$STATE" 2>"$STATE/daemon.log" &
pids+=($!)
for _ in $(seq 50); do sd status >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$EXT_NS" "$BIN/sink" --listen "$EXT_IP:9" --duration 120s >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$VM1_NS" "$BIN/probe" server --listen "$VM1_IP:22" >/dev/null 2>&1 &
pids+=($!)

echo "== lab $LAB: $VM1_PORT (VM 1, $VM1_IP) floods $EXT_IP with 250-byte UDP frames at full speed"
ip netns exec "$VM1_NS" "$BIN/flood" --dst "$EXT_IP" --size 250 --pps 0 --duration $((SECONDS_LIVE + 20))s >/dev/null 2>&1 &
pids+=($!)
sleep 1
echo "   the external host receives $(rxpps) pps before any quarantine"
echo
echo "== shaperd quarantine $VM1_PORT --pps 10000 --bps 16mbit"
sd quarantine "$VM1_PORT" --pps 10000 --bps 16mbit >/dev/null
ip netns exec "$EXT_NS" "$BIN/probe" client --connect "$VM1_IP:22" --count $((SECONDS_LIVE * 5)) --interval 200ms --json >"$STATE/probe.json" 2>&1 &
probe=$!
pids+=($probe)

half=$((SECONDS_LIVE / 2))
for i in $(seq "$SECONDS_LIVE"); do
	r=$(rxpps)
	[[ -t 1 ]] && clear
	echo "== live view ($i/$SECONDS_LIVE s): the external host receives $r pps; ssh-like probe to $VM1_IP:22 runs meanwhile"
	sd status "$VM1_PORT"
	if [[ $i -eq $half ]]; then
		echo; echo "== shaperd set $VM1_PORT --pps 2500   (in place, no re-splice)"
		sd set "$VM1_PORT" --pps 2500 >/dev/null
	fi
done
wait "$probe" || true
echo
echo "== the probe to port 22 during the flood: $(cat "$STATE/probe.json")"
echo "== shaperd release $VM1_PORT"
sd release "$VM1_PORT"
sleep 1
echo "   the external host receives $(rxpps) pps after release"
