#!/usr/bin/env bash
# make demo: a throwaway namespace lab and the daemon watching vm-* with the
# lab config (scripts/netns/lab.yaml: the example's escalation ladder with
# durations in seconds). VM 1 floods at full speed: shaperd flags and
# quarantines it with no operator action, shapes it to 10000 pps, escalates
# (2500 pps, then blocked but for ssh), and once the flood stops walks it
# through probation to release. The view (bin/demoview) prints one line a
# second (stage, offered and delivered pps, an ssh-like probe, the drops that
# moved) and ends with a timeline picture, $DEMO_SVG (bin/demo-timeline.svg);
# then everything else is cleaned up. Run as root from the repository root
# after `make build tools`. docs/demo.md explains the output.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-$PWD/bin}
LAB=${LAB:-demo$$}
# lab.sh checks reachability with our probe when ping is not installed.
export LAB_PROBE=${LAB_PROBE:-$BIN/probe}
export LAB
FLOOD_SECONDS=${DEMO_SECONDS:-26}
# The timeline picture and the samples it was drawn from (JSON); redraw
# with: bin/demoview svg --samples bin/demo-timeline-samples.json --svg FILE
SVG=${DEMO_SVG:-$BIN/demo-timeline.svg}
SAMPLES=${DEMO_SAMPLES:-${SVG%.svg}-samples.json}
SOCK=/tmp/shaperd-$LAB.sock
STATE=$(mktemp -d /tmp/shaperd-$LAB.XXXX)
pids=()

cleanup() {
	local rc=$?
	set +e
	if [[ $rc -ne 0 && -s $STATE/daemon.log ]]; then
		echo "demo: failed (exit $rc); the daemon's last log lines:"
		tail -n 15 "$STATE/daemon.log" | sed 's/^/   /'
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	scripts/netns/lab.sh down >/dev/null 2>&1
	rm -rf "$STATE" "$SOCK"
	echo "demo: cleaned up lab $LAB"
}
trap cleanup EXIT INT TERM

[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (it builds network namespaces)" >&2; exit 1; }
for t in shaperd flood sink probe demoview; do
	[[ -x $BIN/$t ]] || { echo "demo: $BIN/$t missing: run make build tools" >&2; exit 1; }
done

scripts/netns/lab.sh up >/dev/null
eval "$(scripts/netns/lab.sh env)"
sd() { "$BIN/shaperd" --socket "$SOCK" "$@"; }

ip netns exec "$HV_NS" "$BIN/shaperd" run --config scripts/netns/lab.yaml --socket "$SOCK" --state-dir "$STATE" 2>"$STATE/daemon.log" &
pids+=($!)
for _ in $(seq 50); do sd status >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$EXT_NS" "$BIN/sink" --listen "$EXT_IP:9" --duration 0 >/dev/null 2>&1 &
pids+=($!)
ip netns exec "$VM1_NS" "$BIN/probe" server --listen "$VM1_IP:22" >/dev/null 2>&1 &
pids+=($!)

echo "== lab $LAB: shaperd watches vm-* (flag above 50000 pps or 800 Mbit/s for 1 s)"
echo "== $VM1_PORT (VM 1, $VM1_IP) floods $EXT_IP with 250-byte UDP frames at full speed for ${FLOOD_SECONDS}s"
# The view runs where the probe's TCP session starts (the external host),
# starts the flood after two quiet seconds and ends three seconds after the
# ladder released the port.
ip netns exec "$EXT_NS" "$BIN/demoview" --shaperd "$BIN/shaperd" --socket "$SOCK" --port "$VM1_PORT" \
	--offered "$VM1_NS:eth0" --delivered "$EXT_NS:eth0" --probe "$VM1_IP:22" \
	--svg "$SVG" --samples "$SAMPLES" --max "$((FLOOD_SECONDS + 60))s" \
	-- ip netns exec "$VM1_NS" "$BIN/flood" --dst "$EXT_IP" --size 250 --pps 0 --duration "${FLOOD_SECONDS}s" &
view=$!
pids+=($view)
wait "$view"
